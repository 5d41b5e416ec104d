//! The decoder's fast path: one validating pass over a single-event payload that borrows the
//! fields of [`Wire`] and skips everything else, checking nesting depth on the way. A
//! `{"batch":[...]}` envelope is handed to the serde path.
//!
//! It accepts only what the serde path ([`super::parse_serde`]) would turn into the same `Wire`.
//! Whatever it is not sure of returns `None` and the serde path decides, so every rejection, its
//! reason and its message stay the serde path's: any JSON error, escapes or non-UTF-8 bytes in a
//! string the serde path parses (keys of the objects it visits, the fields it reads), numbers
//! where the serde path parses them, a repeated field, nesting deeper than the limit. Where serde
//! only skips (`IgnoredAny`, `RawValue`), this skips with the same rules: strings without control
//! characters and with valid escapes, serde_json's number grammar, no trailing commas, and valid
//! UTF-8 where serde_json checks it (`properties`, a `RawValue`).

use std::borrow::Cow;

use super::touch::{Campaign, Context, Lenient, Page, Payload, Properties, TouchRead};
use super::{Str, Wire};

/// serde_json's own recursion limit; a deeper payload is left to the serde path.
const SERDE_DEPTH: usize = 127;

/// Fills `w` and returns true when the payload is certainly valid and reads as `w` on the serde
/// path too; false (with `w` partly filled) when the serde path must decide. `max_depth` is the
/// decoder's nesting limit.
pub(super) fn scan<'a>(bytes: &'a [u8], max_depth: usize, w: &mut Wire<'a>) -> bool {
    let mut c = Cursor {
        b: bytes,
        i: 0,
        depth: 0,
        max_depth: max_depth.min(SERDE_DEPTH),
        non_ascii: false,
        touch: Payload::default(),
        touch_unsure: false,
    };
    if c.top(w).is_none() {
        return false;
    }
    c.ws();
    w.touch = if c.touch_unsure { TouchRead::Unsure } else { TouchRead::Read(c.touch) };
    c.i == bytes.len()
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
    depth: usize,
    max_depth: usize,
    /// Set by every string with a byte above ASCII.
    non_ascii: bool,
    /// The breakdown touch fields as `touch::Payload` reads them (this pass reads them so the
    /// payload is not parsed a second time), unless `touch_unsure`: something in them this pass
    /// leaves to that serde read (an escape, a value that is neither a string nor null, a
    /// repeated field, a container of another kind). Being unsure changes nothing else.
    touch: Payload<'a>,
    touch_unsure: bool,
}

/// A string's contents (between the quotes) and what the scan saw in it.
struct Scanned<'a> {
    raw: &'a [u8],
    escaped: bool,
    non_ascii: bool,
}

impl<'a> Scanned<'a> {
    /// The string as the serde path would borrow it; `None` when it would copy or refuse it.
    fn borrowed(&self) -> Option<&'a str> {
        if self.escaped {
            return None;
        }
        if !self.non_ascii {
            return Some(ascii_str(self.raw));
        }
        std::str::from_utf8(self.raw).ok()
    }
}

/// `raw` as a `&str` without validating it again: the scan saw no byte above 0x7F in it.
#[inline]
fn ascii_str(raw: &[u8]) -> &str {
    debug_assert!(raw.is_ascii());
    // SAFETY: every byte of `raw` is below 0x80 (`Cursor::string` tracks the high bit of each
    // byte it passes), and a run of ASCII bytes is valid UTF-8.
    unsafe { std::str::from_utf8_unchecked(raw) }
}

const ONES: u64 = u64::MAX / 255;
const HIGH: u64 = ONES << 7;

/// Bit 7 of each byte of `v` that is a quote, a backslash or a control character (below 0x20).
/// The lowest flagged byte is always a true match (borrows only run upwards from one).
#[inline]
fn specials(v: u64) -> u64 {
    let ctrl = v.wrapping_sub(ONES * 0x20) & !v;
    let q = v ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let s = v ^ (ONES * u64::from(b'\\'));
    let backslash = s.wrapping_sub(ONES) & !s;
    (ctrl | quote | backslash) & HIGH
}

/// [`specials`] for 16 bytes at once: bit i of the first mask is set when byte i is a quote, a
/// backslash or a control character; bit i of the second when byte i is above 0x7F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn specials16(chunk: [u8; 16]) -> (u32, u32) {
    use std::arch::x86_64::{__m128i, _mm_cmpeq_epi8, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8};
    let v: __m128i = bytemuck::cast(chunk);
    // SAFETY: SSE2 is part of every x86_64 target (the intrinsics are `unsafe` only for their
    // `target_feature` attribute); they compute on register values and touch no memory.
    unsafe {
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Unsigned v <= 0x1F exactly when max(v, 0x1F) is 0x1F.
        let low = _mm_set1_epi8(0x1F);
        let ctrl = _mm_cmpeq_epi8(_mm_max_epu8(v, low), low);
        let special = _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), ctrl)) as u32;
        (special, _mm_movemask_epi8(v) as u32)
    }
}

impl<'a> Cursor<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// Skips whitespace, then returns the next byte without consuming it.
    #[inline]
    fn next_token(&mut self) -> Option<u8> {
        self.ws();
        self.peek()
    }

    #[inline]
    fn expect(&mut self, byte: u8) -> Option<()> {
        if self.next_token()? != byte {
            return None;
        }
        self.i += 1;
        Some(())
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= self.max_depth).then_some(())
    }

    /// Inside a string: advances to the next quote, backslash or control character (or to the
    /// last few bytes, which the caller reads one at a time), noting in `high` (bit 7 of a byte)
    /// whether a byte above 0x7F was passed.
    #[inline(always)]
    fn plain_run(&mut self, high: &mut u64) {
        #[cfg(target_arch = "x86_64")]
        while let Some(chunk) = self.b.get(self.i..self.i + 16) {
            let Ok(chunk) = <[u8; 16]>::try_from(chunk) else { break };
            let (m, h) = specials16(chunk);
            if m != 0 {
                let before = m.trailing_zeros();
                if h & ((1u32 << before) - 1) != 0 {
                    *high |= HIGH;
                }
                self.i += before as usize;
                return;
            }
            if h != 0 {
                *high |= HIGH;
            }
            self.i += 16;
        }
        while let Some(chunk) = self.b.get(self.i..self.i + 8) {
            let Ok(chunk) = <[u8; 8]>::try_from(chunk) else { break };
            let v = u64::from_le_bytes(chunk);
            let m = specials(v);
            if m != 0 {
                let before = m.trailing_zeros() / 8;
                *high |= v & ((1u64 << (before * 8)) - 1);
                self.i += before as usize;
                return;
            }
            *high |= v;
            self.i += 8;
        }
    }

    /// After an opening quote: scans to the closing one, validating escapes (as serde_json's
    /// `ignore_str`) and refusing control characters.
    #[inline(always)]
    fn string(&mut self) -> Option<Scanned<'a>> {
        let start = self.i;
        let (mut escaped, mut high) = (false, 0u64);
        loop {
            self.plain_run(&mut high);
            let c = self.peek()?;
            match c {
                b'"' => {
                    let raw = &self.b[start..self.i];
                    self.i += 1;
                    let non_ascii = high & HIGH != 0;
                    self.non_ascii |= non_ascii;
                    return Some(Scanned { raw, escaped, non_ascii });
                }
                b'\\' => {
                    escaped = true;
                    match self.b.get(self.i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 2,
                        b'u' => {
                            let hex = self.b.get(self.i + 2..self.i + 6)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.i += 6;
                        }
                        _ => return None,
                    }
                }
                0..0x20 => return None,
                _ => {
                    high |= u64::from(c);
                    self.i += 1;
                }
            }
        }
    }

    /// An object key the serde path parses (not skips): no escapes, valid UTF-8.
    fn key(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let s = self.string()?;
        if s.escaped || (s.non_ascii && std::str::from_utf8(s.raw).is_err()) {
            return None;
        }
        self.expect(b':')?;
        Some(s.raw)
    }

    /// After a value in an object: `true` when another entry follows, `false` at its end.
    #[inline]
    fn more(&mut self, close: u8) -> Option<bool> {
        match self.next_token()? {
            b',' => {
                self.i += 1;
                Some(true)
            }
            c if c == close => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// After `{` or `[`: whether the container is empty (and then consumed).
    fn empty(&mut self, close: u8) -> Option<bool> {
        self.enter()?;
        if self.next_token()? == close {
            self.i += 1;
            self.depth -= 1;
            return Some(true);
        }
        Some(false)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len())? != word {
            return None;
        }
        self.i += word.len();
        Some(())
    }

    /// serde_json's number grammar, as `ignore_integer` checks it.
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => {
                self.i += 1;
                if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    return None;
                }
            }
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        Some(())
    }

    #[inline]
    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    /// Skips one value as serde_json's `ignore_value` does (keys of skipped objects too).
    fn skip(&mut self) -> Option<()> {
        match self.next_token()? {
            b'"' => {
                self.i += 1;
                self.string()?;
            }
            b'{' => self.skip_object(false)?,
            b'[' => {
                self.i += 1;
                if !self.empty(b']')? {
                    loop {
                        self.skip()?;
                        if !self.more(b']')? {
                            break;
                        }
                    }
                    self.depth -= 1;
                }
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            b'-' | b'0'..=b'9' => self.number()?,
            _ => return None,
        }
        Some(())
    }

    /// At `{`: skips the object; with `parsed_keys`, its keys are checked as the serde path
    /// parses them (an object it walks with `IgnoredAny` entries).
    fn skip_object(&mut self, parsed_keys: bool) -> Option<()> {
        self.i += 1;
        if self.empty(b'}')? {
            return Some(());
        }
        loop {
            if parsed_keys {
                self.key()?;
            } else {
                self.expect(b'"')?;
                self.string()?;
                self.expect(b':')?;
            }
            self.skip()?;
            if !self.more(b'}')? {
                break;
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// The top-level object, as `WireVisitor` reads it.
    fn top(&mut self, w: &mut Wire<'a>) -> Option<()> {
        self.expect(b'{')?;
        if self.empty(b'}')? {
            return Some(());
        }
        let mut seen = 0u16;
        // `properties` and `context` seen: the touch's serde read refuses a repeated one.
        let mut touch_seen = 0u8;
        loop {
            let key = self.key()?;
            let (slot, bit) = match key {
                b"event_id" => (&mut w.event_id, 0),
                b"prospect_id" => (&mut w.prospect_id, 1),
                b"source" => (&mut w.source, 2),
                b"type" => (&mut w.kind, 3),
                b"ts" => (&mut w.ts, 4),
                b"email" => (&mut w.email, 5),
                b"messageId" => (&mut w.message_id, 6),
                b"userId" => (&mut w.user_id, 7),
                b"anonymousId" => (&mut w.anonymous_id, 8),
                b"event" => (&mut w.event, 9),
                b"timestamp" => (&mut w.timestamp, 10),
                b"originalTimestamp" => (&mut w.original_timestamp, 11),
                b"sentAt" => (&mut w.sent_at, 12),
                b"receivedAt" => (&mut w.received_at, 13),
                b"previousId" => (&mut w.previous_id, 14),
                // A batch envelope is the serde path's.
                b"batch" => return None,
                other => {
                    match other {
                        b"properties" => {
                            self.touch_repeat(&mut touch_seen, 1);
                            self.raw_object()?;
                        }
                        b"traits" => w.traits_email = self.email_in(false)?,
                        // The serde path walks `context` only when the payload mentions
                        // `"traits"`; without, no `traits` key can be in it and the walk finds
                        // nothing either (or, stricter, hands over), so it always walks.
                        b"context" => {
                            self.touch_repeat(&mut touch_seen, 2);
                            w.context_email = self.email_in(true)?;
                        }
                        _ => self.skip()?,
                    }
                    if !self.more(b'}')? {
                        break;
                    }
                    continue;
                }
            };
            // A repeated field is an error on the serde path unless the first was null; either
            // way that path decides.
            if seen & (1 << bit) != 0 {
                return None;
            }
            seen |= 1 << bit;
            *slot = match self.next_token()? {
                b'n' => {
                    self.literal(b"null")?;
                    None
                }
                b'"' => {
                    self.i += 1;
                    Some(Str(Cow::Borrowed(self.string()?.borrowed()?)))
                }
                _ => return None,
            };
            if !self.more(b'}')? {
                break;
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// As `properties` on the serde path, a `RawValue`: an object or null, skipped, valid UTF-8.
    fn raw_object(&mut self) -> Option<()> {
        let start = self.i;
        let open = self.next_token()?;
        if !matches!(open, b'{' | b'n') {
            return None;
        }
        let seen = std::mem::take(&mut self.non_ascii);
        if open == b'{' {
            let mut p = Properties::default();
            self.touch_object(&mut [
                (b"utm_source", &mut p.utm_source),
                (b"utm_medium", &mut p.utm_medium),
                (b"utm_campaign", &mut p.utm_campaign),
                (b"url", &mut p.url),
                (b"referrer", &mut p.referrer),
            ])?;
            self.touch.properties = Some(p);
        } else {
            self.skip()?;
            self.touch.properties = None;
        }
        if self.non_ascii && std::str::from_utf8(&self.b[start..self.i]).is_err() {
            return None;
        }
        self.non_ascii |= seen;
        Some(())
    }

    /// As `EmailIn`: `email` inside an object (`traits`), or inside its `traits` (`context`,
    /// `nested`). The last match wins; any other value yields no email.
    fn email_in(&mut self, nested: bool) -> Option<Option<Str<'a>>> {
        match self.next_token()? {
            b'{' => {
                self.i += 1;
                let mut found = None;
                if self.empty(b'}')? {
                    return Some(None);
                }
                let mut context = Context::default();
                let mut touch_seen = 0u8;
                loop {
                    match (nested, self.key()?) {
                        (true, b"traits") => found = self.email_in(false)?,
                        (false, b"email") => found = self.any_str()?,
                        (true, b"campaign") => {
                            self.touch_repeat(&mut touch_seen, 1);
                            let mut c = Campaign::default();
                            let object = self.touch_object(&mut [
                                (b"source", &mut c.source),
                                (b"medium", &mut c.medium),
                                (b"name", &mut c.name),
                            ])?;
                            context.campaign = object.then_some(c);
                        }
                        (true, b"page") => {
                            self.touch_repeat(&mut touch_seen, 2);
                            let mut p = Page::default();
                            let object =
                                self.touch_object(&mut [(b"url", &mut p.url), (b"referrer", &mut p.referrer)])?;
                            context.page = object.then_some(p);
                        }
                        _ => self.skip()?,
                    }
                    if !self.more(b'}')? {
                        break;
                    }
                }
                self.depth -= 1;
                if nested {
                    self.touch.context = Some(context);
                }
                Some(found)
            }
            _ => {
                if nested {
                    self.touch_other();
                    self.touch.context = None;
                }
                self.other_value().map(|()| None)
            }
        }
    }

    /// A touch container key seen again (bit `bit` of `seen`): the serde read refuses it.
    fn touch_repeat(&mut self, seen: &mut u8, bit: u8) {
        self.touch_unsure |= *seen & bit != 0;
        *seen |= bit;
    }

    /// At a value the touch's serde read takes as an optional struct: null is none; an object
    /// is read; anything else is left to that read.
    fn touch_other(&mut self) {
        if self.peek() != Some(b'n') {
            self.touch_unsure = true;
        }
    }

    /// At a value the touch's serde read takes as an optional struct of `fields` (each a
    /// `Lenient` string): skipped exactly as [`Cursor::skip`] does, the fields read on the way.
    /// `Some(true)` when it was an object.
    fn touch_object(&mut self, fields: &mut [(&[u8], &mut Lenient<'a>)]) -> Option<bool> {
        if self.next_token()? != b'{' {
            self.touch_other();
            self.skip()?;
            return Some(false);
        }
        self.i += 1;
        if self.empty(b'}')? {
            return Some(true);
        }
        let mut seen = 0u8;
        loop {
            self.expect(b'"')?;
            let key = self.string()?;
            self.expect(b':')?;
            // The serde read parses these keys: one with an escape, or not UTF-8, is its to read.
            let at = match key.borrowed() {
                Some(k) => fields.iter().position(|(name, _)| *name == k.as_bytes()),
                None => {
                    self.touch_unsure = true;
                    None
                }
            };
            match at {
                Some(k) => {
                    self.touch_unsure |= seen & (1 << k) != 0;
                    seen |= 1 << k;
                    *fields[k].1 = self.touch_value()?;
                }
                None => self.skip()?,
            }
            if !self.more(b'}')? {
                break;
            }
        }
        self.depth -= 1;
        Some(true)
    }

    /// A touch field's value, skipped as [`Cursor::skip`] does: a string without escapes
    /// borrowed, null none; anything else left to the serde read.
    fn touch_value(&mut self) -> Option<Lenient<'a>> {
        match self.next_token()? {
            b'"' => {
                self.i += 1;
                let s = self.string()?;
                let v = s.borrowed();
                self.touch_unsure |= v.is_none();
                Some(Lenient(v.map(Cow::Borrowed)))
            }
            b'n' => self.literal(b"null").map(|()| Lenient(None)),
            _ => {
                self.touch_unsure = true;
                self.skip().map(|()| Lenient(None))
            }
        }
    }

    /// As `AnyStr`: a string, or nothing for any other value.
    fn any_str(&mut self) -> Option<Option<Str<'a>>> {
        match self.next_token()? {
            b'"' => {
                self.i += 1;
                Some(Some(Str(Cow::Borrowed(self.string()?.borrowed()?))))
            }
            b'{' => self.skip_object(true).map(|()| None),
            _ => self.other_value().map(|()| None),
        }
    }

    /// A value the serde path visits but does not keep: strings are parsed there (no escapes,
    /// valid UTF-8 here), numbers are converted there (left to it), the rest is skipped.
    fn other_value(&mut self) -> Option<()> {
        match self.next_token()? {
            b'"' => {
                self.i += 1;
                self.string()?.borrowed().map(|_| ())
            }
            b'[' | b't' | b'f' | b'n' => self.skip(),
            _ => None,
        }
    }
}
