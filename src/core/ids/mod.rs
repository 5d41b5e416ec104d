//! Identifiers: a stable hash (snapshots and alert ids depend on it never changing), the
//! prospect-id interner that keeps every id once, in one arena, behind a 4-byte index (its table
//! hashed with a per-interner random key, since anyone can send any id), and Kafka's keyed
//! partitioner (which shard a prospect belongs to).

mod interner;

pub use interner::{Interner, InternerFull, KeyedHash, TableHash};

/// Index of an interned prospect inside one engine. Stable for the engine's lifetime and dense
/// (0..len), so per-prospect arrays are indexed by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProspectIx(pub u32);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A fast 64-bit hash whose output is fixed forever (it is persisted in snapshots and alert ids);
/// not for adversarial inputs: anyone who knows `seed` can make ids collide, and a secret `seed`
/// would not make it a keyed hash (it is not designed as one: some input differences cancel
/// whatever the seed), so hash tables of client-chosen keys use [`KeyedHash`]. `seed` separates
/// uses (dedup fingerprints, alert ids, digests).
pub fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(31);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(31);
    }
    fmix64(h)
}

pub const SEED_EVENT: u64 = 0x6576_656e_745f_6964;
pub const SEED_ALERT: u64 = 0x616c_6572_745f_6964;
pub const SEED_DIGEST: u64 = 0x6469_6765_7374_5f31;

/// Dedup fingerprint of an event id; never 0 (0 marks an empty slot).
pub fn event_fingerprint(event_id: &str) -> u64 {
    hash64(SEED_EVENT, event_id.as_bytes()).max(1)
}

/// Hashes prospect indexes (dense `u32`s, not adversarial) with one multiply: maps keyed by
/// index are looked up once per prospect by encoding and digests, where SipHash would cost
/// more than the rest of the work.
#[derive(Clone, Copy, Debug, Default)]
pub struct IndexHasher;

impl std::hash::BuildHasher for IndexHasher {
    type Hasher = IndexHash;
    fn build_hasher(&self) -> IndexHash {
        IndexHash(0)
    }
}

/// The hasher of [`IndexHasher`].
#[derive(Clone, Copy, Debug, Default)]
pub struct IndexHash(u64);

impl std::hash::Hasher for IndexHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn write_u32(&mut self, i: u32) {
        // hashbrown takes the top 7 bits as the tag and the low bits as the bucket: the
        // multiply spreads the index over both.
        self.0 = (self.0 ^ u64::from(i)).wrapping_mul(K);
    }
}

/// Kafka's `Utils.murmur2` (MurmurHash2, seed `0x9747b28c`), the hash of the Java client's
/// default partitioner and of librdkafka's `murmur2` / `murmur2_random` partitioners.
pub fn murmur2(key: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = 0x9747_b28c_u32 ^ key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&b) = tail.first() {
        h ^= u32::from(b);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka producers put a record with this key in: the Java client's default
/// partitioner, and librdkafka's `murmur2_random` for non-empty keys (both place a record without
/// a key elsewhere). Input topics are keyed by prospect id, so this is the shard a prospect's
/// state lives in.
///
/// # Panics
/// If `partitions` is 0.
pub fn kafka_partition(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) as u32 & 0x7fff_ffff) % partitions
}

/// Deterministic alert id: 16 hex digits from prospect, rule and triggering event.
pub fn alert_id(prospect: &str, rule: &str, event_id: &str) -> String {
    let mut buf = Vec::with_capacity(prospect.len() + rule.len() + event_id.len() + 2);
    buf.extend_from_slice(prospect.as_bytes());
    buf.push(0);
    buf.extend_from_slice(rule.as_bytes());
    buf.push(0);
    buf.extend_from_slice(event_id.as_bytes());
    format!("{:016x}", hash64(SEED_ALERT, &buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fixed_forever() {
        // Persisted in snapshots and alert ids: changing these values breaks compatibility.
        assert_eq!(hash64(0, b""), 0);
        assert_eq!(
            alert_id("usr_8812", "clarification_after_quote", "crm-1"),
            alert_id("usr_8812", "clarification_after_quote", "crm-1")
        );
        assert_ne!(alert_id("a", "bc", "d"), alert_id("ab", "c", "d"));
        assert_ne!(event_fingerprint("x"), 0);
    }

    #[test]
    fn murmur2_matches_kafkas_reference_values() {
        // Kafka's UtilsTest.testMurmur2 (Java `int`, so signed).
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58_897_971);
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }

    #[test]
    fn kafka_partition_is_the_positive_hash_modulo_the_partition_count() {
        // -973932308 = 0xc5f2_f8ec; & 0x7fffffff = 1173551340 = 4 x 293387835.
        assert_eq!(kafka_partition(b"21", 4), 0);
        assert_eq!(kafka_partition(b"21", 7), 1_173_551_340 % 7);
        // Positive hashes are used as they are.
        assert_eq!(kafka_partition(b"abc", 10), 7);
        assert_eq!(kafka_partition(b"abc", 3), 479_470_107 % 3);
        // -790332482 & 0x7fffffff = 1357151166.
        assert_eq!(kafka_partition(b"foobar", 12), 1_357_151_166 % 12);
        for key in [&b""[..], b"21", b"foobar", b"usr_8812", b"3b1f6c2e-9d0a-4f5e-8a77-2c1d9e4b5a60"] {
            assert_eq!(kafka_partition(key, 1), 0);
            for n in [2, 3, 4, 16, 1000, u32::MAX] {
                let p = kafka_partition(key, n);
                assert!(p < n);
                assert_eq!(p, (murmur2(key) & 0x7fff_ffff) as u32 % n);
            }
        }
    }
}
