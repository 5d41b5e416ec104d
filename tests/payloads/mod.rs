//! Hand-written payloads shared by the identity tests: a Segment call and a canonical CRM event.
#![allow(dead_code)]

/// A Segment call of `kind` (`track` with `event`, `identify`, `page`, ...) from device `anon`,
/// signed in as `user` when given, with `traits.email` when given.
pub fn seg(kind: &str, event: &str, user: Option<&str>, anon: &str, id: &str, ts: &str, email: Option<&str>) -> String {
    let user = user.map_or("null".to_string(), |u| format!("\"{u}\""));
    let traits = email.map_or(String::new(), |e| format!(r#","traits":{{"email":"{e}"}}"#));
    let event = if event.is_empty() { String::new() } else { format!(r#","event":"{event}""#) };
    format!(
        r#"{{"type":"{kind}"{event},"userId":{user},"anonymousId":"{anon}","messageId":"{id}","timestamp":"{ts}"{traits}}}"#
    )
}

/// A canonical CRM event of `kind` for contact `prospect`, with its email when given.
pub fn crm(kind: &str, prospect: &str, id: &str, ts: &str, email: Option<&str>) -> String {
    let email = email.map_or(String::new(), |e| format!(r#","email":"{e}""#));
    format!(r#"{{"event_id":"{id}","prospect_id":"{prospect}","source":"crm","type":"{kind}","ts":"{ts}"{email}}}"#)
}
