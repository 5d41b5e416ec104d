//! In-process identity resolution across partitions: one engine per partition and the
//! identity topic between them, delivered in order (FIFO per partition). Included by the
//! tests that need it (`#[path = "support/cluster.rs"] mod cluster;`).

use std::collections::VecDeque;
use std::sync::Arc;

use microfunnel::codec::Limits;
use microfunnel::core::ids::kafka_partition;
use microfunnel::core::time::parse_rfc3339;
use microfunnel::core::xpart::XRecord;
use microfunnel::core::{Engine, Journey, Output};

pub const PARTITIONS: u32 = 3;

/// Engines of [`PARTITIONS`] partitions, and the identity topic between them.
pub struct Cluster {
    pub j: Arc<Journey>,
    pub shards: Vec<Engine>,
    pub queue: VecDeque<(u32, XRecord)>,
    pub out: Vec<Output>,
    /// Every record delivered, in order.
    pub delivered: Vec<(u32, XRecord)>,
}

#[allow(dead_code)]
impl Cluster {
    pub fn new(j: Arc<Journey>) -> Cluster {
        let shards = (0..PARTITIONS)
            .map(|p| {
                let mut e = Engine::new(Arc::clone(&j));
                e.resolve_across(p, PARTITIONS);
                e
            })
            .collect();
        Cluster { j, shards, queue: VecDeque::new(), out: Vec::new(), delivered: Vec::new() }
    }

    /// One input line, applied on its partition; the identity topic drained after it.
    pub fn send(&mut self, line: &str) {
        let ev = microfunnel::codec::decode(line.as_bytes(), &self.j, &Limits::default()).unwrap();
        let p = kafka_partition(ev.prospect.as_bytes(), PARTITIONS) as usize;
        self.shards[p].apply(&ev, &mut self.out);
        self.queue.extend(self.shards[p].take_identity_records());
        self.drain();
    }

    /// Delivers every queued identity record, and those they cause.
    pub fn drain(&mut self) {
        while let Some((p, r)) = self.queue.pop_front() {
            self.delivered.push((p, r.clone()));
            self.shards[p as usize].apply_identity_record(r, &mut self.out);
            self.queue.extend(self.shards[p as usize].take_identity_records());
        }
    }

    /// Partition `p`'s clock advanced to `to`; the records it causes are queued, not delivered.
    pub fn advance(&mut self, p: usize, to: &str) {
        self.shards[p].advance_to(parse_rfc3339(to).unwrap(), &mut self.out);
        self.queue.extend(self.shards[p].take_identity_records());
    }

    /// The transfers delivered so far.
    pub fn transfers(&self) -> Vec<(u32, XRecord)> {
        self.delivered.iter().filter(|(_, r)| matches!(r, XRecord::Transfer { .. })).cloned().collect()
    }

    pub fn digests(&self) -> Vec<u64> {
        self.shards.iter().map(Engine::digest).collect()
    }
}
