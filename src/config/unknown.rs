//! An unknown key in the settings, usually a misspelling: named by its full key path and where
//! it was set (the file or a `MICROFUNNEL__` variable), with the known key it was probably meant
//! to be, or the keys its section has.

use std::path::Path;

use serde_path_to_error::Segment;

use super::{ConfigError, invalid};
use crate::core::suggest::{suggest, unknown_field};

const ENV_PREFIX: &str = "MICROFUNNEL__";

/// The refusal of an unknown key, or `None` when `message` (the deserializer's, at `path`) is
/// not about one. `file` is the config file read, `vars` the `MICROFUNNEL__` variables.
pub(super) fn refusal<'a>(
    path: &serde_path_to_error::Path,
    message: &str,
    file: Option<&Path>,
    vars: impl IntoIterator<Item = &'a String>,
) -> Option<ConfigError> {
    let (key, known) = unknown_field(message)?;
    // Key path segments; a list entry's index joins its list's (`a.b[2]`).
    let mut section: Vec<String> = Vec::new();
    for s in path.iter() {
        match (s, section.last_mut()) {
            (Segment::Map { key }, _) => section.push(key.clone()),
            (Segment::Seq { index }, Some(list)) => list.push_str(&format!("[{index}]")),
            (Segment::Seq { .. } | Segment::Enum { .. } | Segment::Unknown, _) => {}
        }
    }
    // The path ends at the unknown key itself.
    if section.last().map(String::as_str) == Some(key) {
        section.pop();
    }
    let full = section.iter().map(String::as_str).chain([key]).collect::<Vec<_>>().join(".");
    // The environment overrides the file, so a variable that sets the key is where it came from.
    let var = vars.into_iter().find(|v| {
        let p = env_path(v);
        p == full || p.starts_with(&format!("{full}."))
    });
    let (what, within) = if section.is_empty() {
        ("section", "the settings".to_string())
    } else {
        ("key", format!("[{}]", section.join(".")))
    };
    let at = match (var, file) {
        (Some(v), _) => format!(" (set by {v})"),
        (None, Some(f)) => format!(" (in {})", f.display()),
        (None, None) => String::new(),
    };
    let problem = format!("unknown {what} of {within}{at}");
    let fix = match (suggest(key, known.iter().copied()), var) {
        (Some(meant), Some(v)) => {
            format!("did you mean `{meant}`? Rename the variable to {}", renamed(v, section.len(), meant))
        }
        (Some(meant), None) => format!("did you mean `{meant}`? Rename `{key}` to `{meant}`"),
        (None, _) => {
            let keys = known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
            format!("the {what}s of {within} are {keys}: use one of them or remove it (README \"Configuration\")")
        }
    };
    Some(invalid(&full, problem, fix))
}

/// A variable's key path as `config` reads it (`MICROFUNNEL__A__B_C` is `a.b_c`).
fn env_path(var: &str) -> String {
    var.strip_prefix(ENV_PREFIX).unwrap_or(var).to_lowercase().replace("__", ".")
}

/// `var` with its component at `depth` (0: the section) replaced by `meant`.
fn renamed(var: &str, depth: usize, meant: &str) -> String {
    let mut parts: Vec<String> = var.strip_prefix(ENV_PREFIX).unwrap_or(var).split("__").map(String::from).collect();
    if let Some(p) = parts.get_mut(depth) {
        *p = meant.to_uppercase();
    }
    format!("{ENV_PREFIX}{}", parts.join("__"))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::Settings;

    /// A config file of this test's own.
    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("microfunnel-config-unknown-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(format!("{name}.toml"));
        std::fs::write(&f, text).unwrap();
        f
    }

    fn refused(file: Option<&std::path::Path>, env: &[(&str, &str)]) -> String {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        match Settings::load(file, env) {
            Ok(_) => panic!("loaded"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_misspelt_key_in_a_section_of_the_file_names_its_path_and_the_key_meant() {
        let f = file("nested", "[kafka]\nbrokers = \"k:9092\"\n[pipeline]\ncomit_interval_ms = 1000\n");
        let e = refused(Some(&f), &[]);
        assert_eq!(
            e,
            format!(
                "pipeline.comit_interval_ms: unknown key of [pipeline] (in {}); did you mean `commit_interval_ms`? \
                 Rename `comit_interval_ms` to `commit_interval_ms`",
                f.display()
            )
        );
        // Two levels down: an input topic's settings.
        let f = file("input", "[kafka]\nbrokers = \"k:9092\"\n[inputs.web-events]\nformt = \"segment\"\n");
        let e = refused(Some(&f), &[]);
        assert!(e.starts_with("inputs.web-events.formt: unknown key of [inputs.web-events]"), "{e}");
        assert!(e.contains("did you mean `format`?"), "{e}");
    }

    #[test]
    fn a_misspelt_variable_names_its_path_and_the_variable_meant() {
        let e = refused(
            None,
            &[("MICROFUNNEL__KAFKA__BROKERS", "k:9092"), ("MICROFUNNEL__PIPELINE__COMIT_INTERVAL_MS", "1000")],
        );
        assert_eq!(
            e,
            "pipeline.comit_interval_ms: unknown key of [pipeline] (set by MICROFUNNEL__PIPELINE__COMIT_INTERVAL_MS); \
             did you mean `commit_interval_ms`? Rename the variable to MICROFUNNEL__PIPELINE__COMMIT_INTERVAL_MS"
        );
    }

    #[test]
    fn a_misspelt_section_at_the_top_level_names_the_section_meant() {
        let f = file("top", "[kafk]\nbrokers = \"k:9092\"\n");
        let e = refused(Some(&f), &[]);
        assert!(e.starts_with("kafk: unknown section of the settings"), "{e}");
        assert!(e.ends_with("did you mean `kafka`? Rename `kafk` to `kafka`"), "{e}");
        let e = refused(None, &[("MICROFUNNEL__KAFKA__BROKERS", "k:9092"), ("MICROFUNNEL__CHEKPOINT__DIR", "s")]);
        assert!(e.ends_with("Rename the variable to MICROFUNNEL__CHECKPOINT__DIR"), "{e}");
    }

    #[test]
    fn an_unknown_key_with_no_close_one_lists_the_sections_keys() {
        let f = file("far", "[kafka]\nbrokers = \"k:9092\"\n[http]\nport = 9464\n");
        let e = refused(Some(&f), &[]);
        assert!(e.starts_with("http.port: unknown key of [http]"), "{e}");
        assert!(
            e.ends_with(
                "the keys of [http] are `listen`, `query_api`, `token`, `show_emails`, `advertised_url`: \
                 use one of them or remove it (README \"Configuration\")"
            ),
            "{e}"
        );
    }
}
