//! Snapshot files: one shard's state (a base) or one checkpoint's records (a delta, see
//! `chain.rs`) with the input offsets they cover, written atomically.
//!
//! File layout (format version 1):
//! ```text
//! magic    8 bytes  "MFSNAP\r\n"
//! version  u32 LE   FORMAT_VERSION
//! hlen     u32 LE   length of the header
//! header   hlen     JSON, see `Header` (shard, seq, offsets, changelog position, counts, checksums)
//! hhash    u64 LE   hash64 of the header bytes
//! body     ...      a base: the engine state (`core::snapshot`); a delta: its records (`chain.rs`);
//!                   `header.body_len` bytes, `header.body_hash`
//! ```
//! A save writes `<name>.tmp`, fsyncs it, renames it to `<seq>.snap` or `<seq>.delta` and fsyncs
//! the directory, so a crash leaves either the old set of files or the new one. The newest
//! `keep` bases are kept with the deltas after the oldest of them; loading takes the newest
//! chain whose files pass every check and reports the others.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::core::Engine;
use crate::core::ids::hash64;

use super::chain::{self, Images, Tips};
use super::{Checked, FORMAT_VERSION, Header, MAGIC, Pending, SnapshotError, SnapshotStore, io_err};

pub(super) const FILE_SEED: u64 = 0x736e_6170_5f66_696c;

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
    if u64::from_le_bytes(hh) != hash64(FILE_SEED, header_bytes) {
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
    // The body moved to the front of the file's buffer: no second copy of a base's bytes.
    let mut body = bytes;
    body.drain(..body_at);
    if format!("{:016x}", hash64(FILE_SEED, &body)) != header.body_hash {
        return Err(SnapshotError::BodyChecksum { path: p() });
    }
    Ok(Checked { path: path.to_path_buf(), header, body })
}

/// One directory per shard under `root/<group>/`, files named by sequence number.
pub struct FileStore {
    root: PathBuf,
    keep: usize,
    tips: Tips,
}

impl FileStore {
    pub fn new(root: impl Into<PathBuf>, group: &str, keep: usize) -> FileStore {
        FileStore { root: root.into().join(group), keep: keep.max(1), tips: Tips::default() }
    }

    pub fn shard_dir(&self, shard: i32) -> PathBuf {
        self.root.join(format!("shard-{shard:04}"))
    }
}

/// Encodes `engine` into a complete snapshot file image (a base).
pub fn encode(what: &Pending, engine: &Engine) -> (Header, Vec<u8>) {
    let store = super::MemStore::new(&what.group, 1);
    let pending = Pending {
        group: what.group.clone(),
        shard: what.shard,
        seq: what.seq,
        written_at: what.written_at.clone(),
        positions: what.positions.clone(),
        changelog: what.changelog.clone(),
    };
    // An in-memory save cannot fail unless asked to.
    let header = store.save(pending, engine).expect("an in-memory save succeeds");
    let image = store.image(what.shard, what.seq).unwrap_or_default();
    (header, image)
}

/// The bytes before a file's body: magic, version, header, header checksum.
pub(super) fn head(header: &Header) -> Vec<u8> {
    // Serializing a struct of strings and integers cannot fail.
    let hjson = serde_json::to_vec(header).unwrap_or_default();
    let mut file = Vec::with_capacity(24 + hjson.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.extend_from_slice(&(hjson.len() as u32).to_le_bytes());
    file.extend_from_slice(&hjson);
    file.extend_from_slice(&hash64(FILE_SEED, &hjson).to_le_bytes());
    file
}

impl Images for FileStore {
    fn path(&self, shard: i32, name: &str) -> PathBuf {
        self.shard_dir(shard).join(name)
    }

    fn put(&self, shard: i32, name: &str, parts: &[&[u8]]) -> Result<(), SnapshotError> {
        let dir = self.shard_dir(shard);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(name);
        let tmp = dir.join(format!("{name}.tmp"));
        let written = File::create(&tmp).and_then(|mut f| {
            for p in parts {
                f.write_all(p)?;
            }
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(SnapshotError::Io { path: tmp, source: e });
        }
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err(&dir))?;
        // Temp files of writes a crash interrupted.
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.filter_map(Result::ok) {
                if e.path().to_string_lossy().ends_with(".tmp") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    fn get(&self, shard: i32, name: &str) -> Result<Vec<u8>, SnapshotError> {
        let path = self.path(shard, name);
        let mut bytes = Vec::new();
        File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err(&path))?;
        Ok(bytes)
    }

    fn names(&self, shard: i32) -> Result<Vec<String>, SnapshotError> {
        let dir = self.shard_dir(shard);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SnapshotError::Io { path: dir, source: e }),
        };
        Ok(entries.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect())
    }

    fn remove(&self, shard: i32, name: &str) {
        let _ = fs::remove_file(self.path(shard, name));
    }
}

impl chain::Chained for FileStore {
    fn keep(&self) -> usize {
        self.keep
    }

    fn tips(&self) -> &Tips {
        &self.tips
    }
}
