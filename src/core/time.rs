//! Event time: milliseconds since the Unix epoch, UTC. The core never reads a clock; every
//! instant it sees arrives inside an event or through `Engine::advance_to`.

use std::fmt;

/// An instant in event time, milliseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(transparent)]
pub struct Ts(pub i64);

/// A span of event time in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub i64);

pub const MS_PER_SEC: i64 = 1_000;
pub const MS_PER_HOUR: i64 = 3_600 * MS_PER_SEC;
pub const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

impl Ts {
    /// Marks "no time" in state fields (never entered, no timer armed).
    pub const NONE: Ts = Ts(i64::MIN);

    pub fn is_none(self) -> bool {
        self == Ts::NONE
    }

    pub fn plus(self, span: Span) -> Ts {
        Ts(self.0.saturating_add(span.0))
    }

    pub fn minus(self, span: Span) -> Ts {
        Ts(self.0.saturating_sub(span.0))
    }

    /// `self - earlier`, saturating.
    pub fn since(self, earlier: Ts) -> Span {
        Span(self.0.saturating_sub(earlier.0))
    }
}

impl Span {
    /// Converts a (validated, finite, non-negative) number of days to a span.
    pub fn from_days(days: f64) -> Span {
        Span((days * MS_PER_DAY as f64).round() as i64)
    }

    pub fn from_hours(hours: f64) -> Span {
        Span((hours * MS_PER_HOUR as f64).round() as i64)
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / MS_PER_SEC as f64
    }
}

/// Why a timestamp string is not RFC 3339.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeError {
    Syntax,
    OutOfRange,
}

impl fmt::Display for TimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeError::Syntax => "not in RFC 3339 form YYYY-MM-DDTHH:MM:SS[.fff](Z|+HH:MM|+HHMM|+HH)",
            TimeError::OutOfRange => "a date or time field is out of range",
        })
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

fn digits(b: &[u8], at: usize, n: usize) -> Result<i64, TimeError> {
    let s = b.get(at..at + n).ok_or(TimeError::Syntax)?;
    let mut v = 0i64;
    for &c in s {
        if !c.is_ascii_digit() {
            return Err(TimeError::Syntax);
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Ok(v)
}

fn expect(b: &[u8], at: usize, what: &[u8]) -> Result<(), TimeError> {
    match b.get(at) {
        Some(c) if what.contains(c) => Ok(()),
        _ => Err(TimeError::Syntax),
    }
}

/// Parses an RFC 3339 timestamp (`2026-03-07T09:20:00.628Z`, `2026-03-07T10:20:00+01:00`), and
/// the ISO 8601 offsets without a colon some SDKs send (`+0100`, `-0530`, `+01`). Fractions
/// beyond milliseconds are truncated; a leap second (`:60`) counts as `:59.999`.
pub fn parse_rfc3339(s: &str) -> Result<Ts, TimeError> {
    let b = s.as_bytes();
    let year = digits(b, 0, 4)?;
    expect(b, 4, b"-")?;
    let month = digits(b, 5, 2)?;
    expect(b, 7, b"-")?;
    let day = digits(b, 8, 2)?;
    expect(b, 10, b"Tt ")?;
    let hour = digits(b, 11, 2)?;
    expect(b, 13, b":")?;
    let minute = digits(b, 14, 2)?;
    expect(b, 16, b":")?;
    let mut second = digits(b, 17, 2)?;
    let mut at = 19;
    let mut millis = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while let Some(c) = b.get(at).filter(|c| c.is_ascii_digit()) {
            if at - start < 3 {
                millis = millis * 10 + i64::from(c - b'0');
            }
            at += 1;
        }
        let n = at - start;
        if n == 0 {
            return Err(TimeError::Syntax);
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_min = match b.get(at) {
        Some(b'Z' | b'z') => {
            at += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = digits(b, at + 1, 2)?;
            let om = match b.get(at + 3) {
                Some(b':') => {
                    at += 6;
                    digits(b, at - 2, 2)?
                }
                Some(_) => {
                    at += 5;
                    digits(b, at - 2, 2)?
                }
                None => {
                    at += 3;
                    0
                }
            };
            if oh > 23 || om > 59 {
                return Err(TimeError::OutOfRange);
            }
            let m = oh * 60 + om;
            if sign == b'-' { -m } else { m }
        }
        _ => return Err(TimeError::Syntax),
    };
    if at != b.len() {
        return Err(TimeError::Syntax);
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(TimeError::OutOfRange);
    }
    if second == 60 {
        second = 59;
        millis = 999;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_min * 60;
    Ok(Ts(secs * MS_PER_SEC + millis))
}

/// Writes `ts` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn write_rfc3339(ts: Ts, out: &mut impl fmt::Write) -> fmt::Result {
    let ms = ts.0.rem_euclid(MS_PER_DAY);
    let days = ts.0.div_euclid(MS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let (h, rest) = (ms / MS_PER_HOUR, ms % MS_PER_HOUR);
    let (min, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1_000, rest % 1_000);
    if !(0..=9999).contains(&y) {
        return write!(out, "{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z");
    }
    // Every journey event and alert carries times: digits by hand, one write (the formatting
    // machinery cost 3% of the service's CPU).
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for k in (at..at + width).rev() {
            b[k] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, m);
    put(8, 2, d);
    put(11, 2, h);
    put(14, 2, min);
    put(17, 2, s);
    put(20, 3, milli);
    out.write_str(std::str::from_utf8(&b).map_err(|_| fmt::Error)?)
}

impl fmt::Display for Ts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return f.write_str("none");
        }
        write_rfc3339(*self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_the_formatting_machinery_and_round_trips() {
        let reference = |ts: Ts| {
            let (ms, days) = (ts.0.rem_euclid(MS_PER_DAY), ts.0.div_euclid(MS_PER_DAY));
            let (y, m, d) = civil_from_days(days);
            let (h, min, s, milli) = (ms / MS_PER_HOUR, ms % MS_PER_HOUR / 60_000, ms % 60_000 / 1_000, ms % 1_000);
            format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
        };
        // Year 0 to beyond 9999 (the hand-written path and the fallback), odd steps.
        let (first, last) = (-62_167_219_200_000i64, 253_402_300_800_000i64 + 40 * 86_400_000);
        let mut t = first - 86_400_000;
        while t < last {
            let ts = Ts(t);
            let text = ts.to_string();
            assert_eq!(text, reference(ts));
            if (0..253_402_300_800_000).contains(&t) {
                assert_eq!(parse_rfc3339(&text).unwrap(), ts, "{text}");
            }
            t += 7_777_777_777 + t.rem_euclid(1_000);
        }
    }

    #[test]
    fn parses_segment_timestamps_and_offsets() {
        let z = parse_rfc3339("2026-03-07T09:20:00.628Z").unwrap();
        assert_eq!(z.to_string(), "2026-03-07T09:20:00.628Z");
        let off = parse_rfc3339("2026-03-07T10:20:00.628+01:00").unwrap();
        assert_eq!(z, off);
        for compact in ["2026-03-07T10:20:00.628+0100", "2026-03-07T10:20:00.628+01", "2026-03-07T09:20:00.628+0000"] {
            assert_eq!(parse_rfc3339(compact), Ok(z), "{compact}");
        }
        let india = parse_rfc3339("2026-03-07T03:50:00.628-0530").unwrap();
        assert_eq!(india, z);
        assert_eq!(parse_rfc3339("2026-03-07T09:20:00.628+00"), Ok(z));
        let micro = parse_rfc3339("2026-03-07T09:20:00.628999Z").unwrap();
        assert_eq!(micro, z);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), Ts(0));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z").unwrap().to_string(), "2024-02-29T00:00:00.000Z");
    }

    #[test]
    fn rejects_malformed_and_out_of_range() {
        for bad in [
            "",
            "2026-03-07",
            "2026-03-07T09:20:00",
            "2026/03/07T09:20:00Z",
            "2026-03-07T09:20:00.Z",
            "2026-03-07T09:20:00Zjunk",
            "yesterday",
            "2026-03-07T09:20:00+1",
            "2026-03-07T09:20:00+01:0",
            "2026-03-07T09:20:00+010",
            "2026-03-07T09:20:00+01000",
            "2026-03-07T09:20:00+01:00:00",
            "2026-03-07T09:20:00+01-00",
            "2026-03-07T09:20:00+",
        ] {
            assert_eq!(parse_rfc3339(bad), Err(TimeError::Syntax), "{bad}");
        }
        for bad in [
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:00:00+25:00",
            "2026-01-01T00:00:00+0160",
            "2026-01-01T00:00:00-24",
        ] {
            assert_eq!(parse_rfc3339(bad), Err(TimeError::OutOfRange), "{bad}");
        }
    }

    #[test]
    fn round_trips_across_eras() {
        for ms in [-86_400_000_123i64, 0, 951_782_400_000, 4_102_444_800_000, 1_741_339_200_628] {
            let s = Ts(ms).to_string();
            assert_eq!(parse_rfc3339(&s).unwrap(), Ts(ms), "{s}");
        }
    }
}
