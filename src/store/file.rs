//! Snapshot files: one shard's state with the input offsets it covers, written atomically.
//!
//! File layout (format version 1):
//! ```text
//! magic    8 bytes  "MFSNAP\r\n"
//! version  u32 LE   FORMAT_VERSION
//! hlen     u32 LE   length of the header
//! header   hlen     JSON, see `Header` (shard, seq, offsets, changelog position, counts, checksums)
//! hhash    u64 LE   hash64 of the header bytes
//! body     ...      the engine state (`core::snapshot`), `header.body_len` bytes, `header.body_hash`
//! ```
//! A save writes `<seq>.snap.tmp`, fsyncs it, renames it to `<seq>.snap` and fsyncs the
//! directory, so a crash leaves either the old set of files or the new one. The newest `keep`
//! files are kept; loading takes the newest file that passes every check and reports the others.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::core::Engine;
use crate::core::ids::hash64;
use crate::core::snapshot::{STATE_VERSION, journey_fingerprint};

use super::{Checked, FORMAT_VERSION, Header, MAGIC, Pending, SnapshotError, SnapshotStore, io_err};

const SEED_FILE: u64 = 0x736e_6170_5f66_696c;

/// Reads a snapshot file and verifies magic, version, header and body checksums.
pub fn read(path: &Path) -> Result<Checked, SnapshotError> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err(path))?;
    parse(path, bytes)
}

pub(crate) fn parse(path: &Path, bytes: Vec<u8>) -> Result<Checked, SnapshotError> {
    let p = || path.to_path_buf();
    let short = |what: &str| SnapshotError::Truncated { path: p(), what: what.to_string() };
    if bytes.len() < 16 {
        return Err(if bytes.len() >= 8 && &bytes[..8] != MAGIC {
            SnapshotError::Magic { path: p() }
        } else {
            short("file shorter than its fixed header")
        });
    }
    if &bytes[..8] != MAGIC {
        return Err(SnapshotError::Magic { path: p() });
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version == 0 || version > FORMAT_VERSION {
        return Err(SnapshotError::Version { path: p(), found: version });
    }
    let hlen = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    let body_at = 16usize.checked_add(hlen).and_then(|n| n.checked_add(8)).filter(|&n| n <= bytes.len());
    let body_at = body_at.ok_or_else(|| short("header"))?;
    let header_bytes = &bytes[16..16 + hlen];
    let mut hh = [0u8; 8];
    hh.copy_from_slice(&bytes[16 + hlen..body_at]);
    if u64::from_le_bytes(hh) != hash64(SEED_FILE, header_bytes) {
        return Err(SnapshotError::HeaderChecksum { path: p() });
    }
    let header: Header =
        serde_json::from_slice(header_bytes).map_err(|e| SnapshotError::Header { path: p(), reason: e.to_string() })?;
    let body_len = bytes.len() - body_at;
    if (body_len as u64) < header.body_len {
        return Err(short(&format!("body has {body_len} of {} bytes", header.body_len)));
    }
    if body_len as u64 != header.body_len {
        return Err(SnapshotError::Header {
            path: p(),
            reason: format!("{body_len} body bytes, header says {}", header.body_len),
        });
    }
    let mut bytes = bytes;
    let body = bytes.split_off(body_at);
    if format!("{:016x}", hash64(SEED_FILE, &body)) != header.body_hash {
        return Err(SnapshotError::BodyChecksum { path: p() });
    }
    Ok(Checked { path: path.to_path_buf(), header, body })
}

/// One directory per shard under `root/<group>/`, files named by sequence number.
pub struct FileStore {
    root: PathBuf,
    keep: usize,
}

impl FileStore {
    pub fn new(root: impl Into<PathBuf>, group: &str, keep: usize) -> FileStore {
        FileStore { root: root.into().join(group), keep: keep.max(1) }
    }

    pub fn shard_dir(&self, shard: i32) -> PathBuf {
        self.root.join(format!("shard-{shard:04}"))
    }
}

/// Encodes `engine` into a complete snapshot file image.
pub fn encode(what: &Pending, engine: &Engine) -> (Header, Vec<u8>) {
    let (header, mut file, body) = encode_parts(what, engine);
    file.extend_from_slice(&body);
    (header, file)
}

/// The header, the bytes before the body (magic, version, header, header checksum), and the
/// body: written one after the other, without copying the body into one image.
fn encode_parts(what: &Pending, engine: &Engine) -> (Header, Vec<u8>, Vec<u8>) {
    let mut body = Vec::new();
    let digest = engine.encode_state_digest(&mut body, true);
    let j = engine.journey();
    let header = Header {
        format_version: FORMAT_VERSION,
        state_version: STATE_VERSION,
        group: what.group.clone(),
        shard: what.shard,
        seq: what.seq,
        written_at: what.written_at.clone(),
        journey: j.name.clone(),
        journey_fingerprint: format!("{:016x}", journey_fingerprint(j)),
        positions: what.positions.clone(),
        changelog: what.changelog.clone(),
        prospects: engine.len() as u64,
        digest: format!("{digest:016x}"),
        body_len: body.len() as u64,
        body_hash: format!("{:016x}", hash64(SEED_FILE, &body)),
    };
    // Serializing a struct of strings and integers cannot fail.
    let hjson = serde_json::to_vec(&header).unwrap_or_default();
    let mut file = Vec::with_capacity(24 + hjson.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(&(hjson.len() as u32).to_le_bytes());
    file.extend_from_slice(&hjson);
    file.extend_from_slice(&hash64(SEED_FILE, &hjson).to_le_bytes());
    (header, file, body)
}

fn seq_of(path: &Path) -> Option<u64> {
    path.file_name()?.to_str()?.strip_suffix(".snap")?.parse().ok()
}

impl SnapshotStore for FileStore {
    fn save(&self, what: Pending, engine: &Engine) -> Result<Header, SnapshotError> {
        let dir = self.shard_dir(what.shard);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let (header, head, body) = encode_parts(&what, engine);
        let path = dir.join(format!("{:020}.snap", what.seq));
        let tmp = dir.join(format!("{:020}.snap.tmp", what.seq));
        let written = File::create(&tmp).and_then(|mut f| {
            f.write_all(&head)?;
            f.write_all(&body)?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(SnapshotError::Io { path: tmp, source: e });
        }
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err(&dir))?;
        for old in self.list(what.shard)?.into_iter().skip(self.keep) {
            let _ = fs::remove_file(old);
        }
        // Temp files of writes a crash interrupted.
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.filter_map(Result::ok) {
                if e.path().to_string_lossy().ends_with(".snap.tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(header)
    }

    fn latest(&self, shard: i32) -> (Option<Checked>, Vec<SnapshotError>) {
        let mut rejected = Vec::new();
        let files = match self.list(shard) {
            Ok(f) => f,
            Err(e) => return (None, vec![e]),
        };
        for path in files {
            match read(&path) {
                Ok(c) => return (Some(c), rejected),
                Err(e) => rejected.push(e),
            }
        }
        (None, rejected)
    }

    fn list(&self, shard: i32) -> Result<Vec<PathBuf>, SnapshotError> {
        let dir = self.shard_dir(shard);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SnapshotError::Io { path: dir, source: e }),
        };
        let mut files: Vec<(u64, PathBuf)> =
            entries.filter_map(|e| e.ok()).map(|e| e.path()).filter_map(|p| Some((seq_of(&p)?, p))).collect();
        files.sort_by_key(|f| std::cmp::Reverse(f.0));
        Ok(files.into_iter().map(|(_, p)| p).collect())
    }
}
