//! Command implementations (shell side: files, terminals, clocks).

pub mod check;
pub mod generate;
pub mod inspect;
pub mod replay;
mod report;
pub mod tail;

use microfunnel::core::Ts;
use microfunnel::core::time::parse_rfc3339;

/// An instant given on the command line: RFC 3339 (`2026-03-31T18:00:00Z`) or a date
/// (`2026-03-31`, midnight UTC at its start).
pub fn instant(flag: &str, value: &str) -> anyhow::Result<Ts> {
    let v = value.trim();
    let is_date = v.len() == 10
        && v.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    let text = if is_date { format!("{v}T00:00:00Z") } else { v.to_string() };
    parse_rfc3339(&text).map_err(|e| {
        anyhow::anyhow!("{flag} {value:?}: {e}; give a date (2026-03-31) or an RFC 3339 time (2026-03-31T18:00:00Z)")
    })
}
