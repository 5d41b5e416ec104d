//! Where a journey comes from: a journey built into the binary (the files of `deploy/journeys/`,
//! embedded at compile time) chosen by name, or a TOML file. `--journey` and `journey.path`
//! take either, so the CLI works from any directory.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::core::Journey;

/// The built-in journeys: name and TOML text.
pub const BUILTIN: [(&str, &str); 3] = [
    ("b2b", include_str!("../deploy/journeys/b2b.toml")),
    ("ecommerce", include_str!("../deploy/journeys/ecommerce.toml")),
    ("saas", include_str!("../deploy/journeys/saas.toml")),
];

/// The journey used when none is named.
pub const DEFAULT: &str = "b2b";

/// The TOML text of the built-in journey `name`.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, text)| *text)
}

/// The built-in journeys' names, comma-separated (for messages and help).
pub fn builtin_names() -> String {
    BUILTIN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// A journey named on the command line or in the settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JourneyRef {
    /// A built-in journey, by name.
    Builtin(&'static str),
    /// A TOML file.
    File(PathBuf),
}

impl JourneyRef {
    /// A value that is exactly a built-in journey's name (`b2b`) is that journey; anything else
    /// is a file path (write `./b2b` for a file of that name).
    pub fn parse(value: &Path) -> JourneyRef {
        match BUILTIN.iter().find(|(n, _)| value.as_os_str() == *n) {
            Some((n, _)) => JourneyRef::Builtin(n),
            None => JourneyRef::File(value.to_path_buf()),
        }
    }

    /// The journey's TOML text.
    pub fn text(&self) -> Result<String, LoadError> {
        match self {
            JourneyRef::Builtin(n) => Ok(builtin(n).unwrap_or_default().to_string()),
            JourneyRef::File(p) => {
                std::fs::read_to_string(p).map_err(|source| LoadError::Read { path: p.clone(), source })
            }
        }
    }
}

impl fmt::Display for JourneyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JourneyRef::Builtin(n) => write!(f, "built-in journey `{n}`"),
            JourneyRef::File(p) => write!(f, "journey file {}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "cannot read journey file {}: {source}; give an existing file or a built-in journey's name ({}) as the journey (`--journey`, `check-journey`'s argument, or `journey.path`)",
        path.display(), builtin_names()
    )]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{journey} is invalid ({} mistake(s)):\n{errors}", errors.0.len())]
    Invalid { journey: JourneyRef, errors: crate::core::journey::JourneyErrors },
}

/// Loads and validates a journey; every mistake in it is reported at once.
pub fn load(journey: &JourneyRef) -> Result<Journey, LoadError> {
    Journey::parse(&journey.text()?).map_err(|errors| LoadError::Invalid { journey: journey.clone(), errors })
}
