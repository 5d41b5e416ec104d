//! The byte primitives of the state layout: little-endian writes, reads that fail with the byte
//! position instead of panicking, length-prefixed strings and sparse arrays.

use crate::core::time::Ts;

/// Why bytes could not be read back as state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("state ends early: reading {what} at byte {at}")]
    Truncated { what: &'static str, at: usize },
    #[error("invalid {what} at byte {at}")]
    Invalid { what: &'static str, at: usize },
    #[error(
        "state was written for journey `{found}` (fingerprint {found_fp:016x}); the configured journey `{expected}` has fingerprint {expected_fp:016x}; stages and signals differ, so the state cannot be used"
    )]
    Journey { found: String, found_fp: u64, expected: String, expected_fp: u64 },
}

/// Appends little-endian values to a buffer.
pub struct Enc<'a>(pub &'a mut Vec<u8>);

impl Enc<'_> {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    pub fn ts(&mut self, t: Ts) {
        self.i64(t.0);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

/// Reads what [`Enc`] wrote, failing with the byte position instead of panicking.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Dec<'a> {
        Dec { buf, pos: 0 }
    }
    pub fn position(&self) -> usize {
        self.pos
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
    pub(super) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], StateError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(StateError::Truncated { what, at: self.pos })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    pub(super) fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], StateError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    pub fn u8(&mut self, what: &'static str) -> Result<u8, StateError> {
        Ok(self.take(1, what)?[0])
    }
    pub fn u16(&mut self, what: &'static str) -> Result<u16, StateError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    pub fn i64(&mut self, what: &'static str) -> Result<i64, StateError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }
    pub fn f64(&mut self, what: &'static str) -> Result<f64, StateError> {
        Ok(f64::from_bits(self.u64(what)?))
    }
    pub fn ts(&mut self, what: &'static str) -> Result<Ts, StateError> {
        Ok(Ts(self.i64(what)?))
    }
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], StateError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    /// A length written by `len_prefixed` (one byte, or 255 then four), then UTF-8 bytes.
    pub fn len_prefixed_str(&mut self, what: &'static str) -> Result<&'a str, StateError> {
        let at = self.pos;
        let n = match self.u8(what)? {
            255 => self.u32(what)? as usize,
            n => n as usize,
        };
        std::str::from_utf8(self.take(n, what)?).map_err(|_| StateError::Invalid { what, at })
    }
    pub fn str(&mut self, what: &'static str) -> Result<&'a str, StateError> {
        let at = self.pos;
        std::str::from_utf8(self.bytes(what)?).map_err(|_| StateError::Invalid { what, at })
    }
}

pub(super) fn len_prefixed(out: &mut Vec<u8>, b: &[u8]) {
    if b.len() < 255 {
        out.push(b.len() as u8);
    } else {
        out.push(255);
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(b);
}

/// A bitmap of which entries are set, then the set entries.
pub(super) fn sparse<T: Copy>(out: &mut Vec<u8>, v: &[T], set: impl Fn(&T) -> bool, put: impl Fn(&mut Vec<u8>, T)) {
    let at = out.len();
    out.resize(at + v.len().div_ceil(8), 0);
    for (k, x) in v.iter().enumerate() {
        if set(x) {
            out[at + k / 8] |= 1 << (k % 8);
            put(out, *x);
        }
    }
}

/// Reads what [`sparse`] wrote for `n` entries into `dst`, `empty` where unset.
pub(super) fn unsparse<'a, T: Copy>(
    r: &mut Dec<'a>,
    dst: &mut Vec<T>,
    n: usize,
    empty: T,
    what: &'static str,
    get: impl Fn(&mut Dec<'a>) -> Result<T, StateError>,
) -> Result<(), StateError> {
    let at = r.position();
    let bits = r.take(n.div_ceil(8), what)?;
    if !n.is_multiple_of(8) && bits[n / 8] >> (n % 8) != 0 {
        return Err(StateError::Invalid { what, at });
    }
    dst.clear();
    for k in 0..n {
        dst.push(if bits[k / 8] & (1 << (k % 8)) != 0 { get(r)? } else { empty });
    }
    Ok(())
}
