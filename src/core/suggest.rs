//! "Did you mean": the known name closest to a misspelt one, and the key and known keys in
//! serde's message for an unknown key. Shared by the journey loader and the service settings.

/// The candidate closest to `name` (by Jaro-Winkler similarity of their lower-cased forms), if
/// it is close enough to be what was meant.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&name, &c.to_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// "; did you mean `x`?" or "".
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    suggest(name, candidates).map(|s| format!("; did you mean `{s}`?")).unwrap_or_default()
}

/// Serde's message for an unknown key (``unknown field `x`, expected one of `a`, `b` ``, or
/// ``expected `a` ``, or ``there are no fields``; whatever a deserializer appends after it, such
/// as `config`'s `` for key `section` ``, is not a known key): the key and the known keys.
/// `None` for any other message.
pub fn unknown_field(message: &str) -> Option<(&str, Vec<&str>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let mut expected = Vec::new();
    // Text and quoted names alternate; a name is a known key only when the text before it is
    // the list's own (", expected one of ", ", expected ", ", ").
    let mut parts = rest.split('`');
    while let (Some(before), Some(name)) = (parts.next(), parts.next()) {
        if !(before == ", " || before.ends_with("expected one of ") || before.ends_with("expected ")) {
            break;
        }
        expected.push(name);
    }
    Some((key, expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_reads_the_key_and_only_the_known_keys() {
        let m = "unknown field `formt`, expected one of `format`, `source`, `mapped` for key `inputs.web`";
        assert_eq!(unknown_field(m), Some(("formt", vec!["format", "source", "mapped"])));
        assert_eq!(unknown_field("unknown field `x`, expected `dir`"), Some(("x", vec!["dir"])));
        assert_eq!(unknown_field("unknown field `x`, there are no fields"), Some(("x", vec![])));
        assert_eq!(unknown_field("invalid type: string \"a\", expected u64"), None);
    }

    #[test]
    fn suggest_picks_the_close_name_or_none() {
        let keys = ["commit_interval_ms", "commit_every_messages", "funnel_interval_ms"];
        assert_eq!(suggest("comit_interval_ms", keys), Some("commit_interval_ms"));
        assert_eq!(suggest("zzz", keys), None);
    }
}
