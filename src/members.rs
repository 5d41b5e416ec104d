//! Which instance of the group holds which partition, published by each instance on the
//! internal topic `<group>.members` and read back by every instance, so that a query for a
//! prospect on another instance can name it (`GET /prospects/{id}`'s 421).
//!
//! Kafka's group protocol does not tell a member the others' assignments (and Tansu's
//! DescribeGroups returns none), so each instance publishes its own: a record keyed by its
//! instance id holding its query API's advertised URL, the partitions it holds and when it
//! published them, on every change of its assignment and every [`REPUBLISH`]; with an empty
//! assignment when it stops. Readers keep the last record per instance; a partition's owner is
//! the instance whose latest record lists it with the latest time (one that was killed is
//! superseded once the survivor publishes the partitions it took). The topic is compacted where
//! the broker compacts; readers read it from its start either way.
//!
//! The table is pure ([`Members`]); [`spawn`] runs the one thread that publishes and reads, with
//! a plain consumer that is not in the group (apart from the pipeline's consumer).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::Kafka;
use crate::pipeline::status::Status;

/// How often an instance publishes its assignment even when it did not change.
pub const REPUBLISH: Duration = Duration::from_secs(30);

/// The membership topic of a consumer group.
pub fn topic(group: &str) -> String {
    format!("{group}.members")
}

/// One instance's published assignment (the record value, JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub instance: String,
    /// Base URL of its query API (`http.advertised_url`), if it advertises one.
    pub url: Option<String>,
    /// The input partitions it holds, ascending; empty once it stopped.
    pub partitions: Vec<i32>,
    /// Wall-clock time of publication, milliseconds since the epoch.
    pub at_ms: i64,
    /// Its publications so far, counted from 1 at its start.
    pub generation: u64,
}

/// The last record of every instance, read from the membership topic.
#[derive(Clone, Debug, Default)]
pub struct Members {
    by_instance: BTreeMap<String, Member>,
}

impl Members {
    /// Takes in a record: an instance's newer publication replaces its older one (a record
    /// that is older than the one held, by generation, is ignored).
    pub fn observe(&mut self, m: Member) {
        match self.by_instance.get(&m.instance) {
            Some(old) if old.generation > m.generation && old.at_ms >= m.at_ms => {}
            _ => {
                self.by_instance.insert(m.instance.clone(), m);
            }
        }
    }

    /// The instance holding `partition`, other than `except` (the asking instance): of the
    /// instances whose last record lists it, the one that published last.
    pub fn owner_of(&self, partition: i32, except: &str) -> Option<&Member> {
        self.by_instance
            .values()
            .filter(|m| m.instance != except && m.partitions.contains(&partition))
            .max_by_key(|m| (m.at_ms, m.generation))
    }

    pub fn len(&self) -> usize {
        self.by_instance.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_instance.is_empty()
    }
}

/// This instance's identity and the shared table, read by the HTTP handlers.
#[derive(Clone, Debug, Default)]
pub struct Membership {
    pub instance: Arc<str>,
    pub url: Option<Arc<str>>,
    table: Arc<Mutex<Members>>,
}

impl Membership {
    pub fn new(instance: &str, url: Option<&str>) -> Membership {
        Membership { instance: instance.into(), url: url.map(Into::into), table: Arc::default() }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Members> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The other instance that holds `partition`, as far as its records say.
    pub fn owner_of(&self, partition: i32) -> Option<Member> {
        self.table().owner_of(partition, &self.instance).cloned()
    }

    fn observe(&self, m: Member) {
        self.table().observe(m);
    }
}

/// An id for this process: host name, process id and a random part (two instances in one
/// process, as in tests, differ).
pub fn instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    format!("{host}-{}-{:08x}", std::process::id(), h.finish() as u32)
}

#[derive(Debug, thiserror::Error)]
pub enum MembersError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("membership topic `{topic}` is missing on {brokers}: run `microfunnel create-topics`")]
    Missing { topic: String, brokers: String },
}

/// Starts the thread that publishes this instance's partitions (as `status` lists them) and
/// reads every instance's into `membership`, until `stop`; it then publishes an empty
/// assignment.
pub fn spawn(
    k: &Kafka,
    membership: Membership,
    status: Status,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, MembersError> {
    let topic = topic(&k.group_id);
    let producer: BaseProducer = crate::kafka::producer_config(k).create()?;
    let mut c = crate::kafka::base_config(k);
    c.set("group.id", format!("{}.members-reader", k.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100");
    let consumer: BaseConsumer = c.create()?;
    let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let parts =
        md.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map_or(0, |t| t.partitions().len());
    if parts == 0 {
        return Err(MembersError::Missing { topic, brokers: k.brokers.clone() });
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts as i32 {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    // Assigned, not subscribed: this consumer reads every partition and joins no group.
    consumer.assign(&tpl)?;
    let thread = std::thread::Builder::new().name("microfunnel-members".into()).spawn(move || {
        let mut publisher = Publisher { producer, topic, membership, generation: 0 };
        let mut last: Option<(Vec<i32>, Instant)> = None;
        while !stop.load(Ordering::Acquire) {
            let held: Vec<i32> = status.snapshot().iter().map(|s| s.partition).collect();
            if last.as_ref().is_none_or(|(p, at)| *p != held || at.elapsed() >= REPUBLISH) {
                publisher.publish(&held);
                last = Some((held, Instant::now()));
            }
            publisher.producer.poll(Duration::ZERO);
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(msg)) => match msg.payload().map(serde_json::from_slice::<Member>) {
                    Some(Ok(m)) => publisher.membership.observe(m),
                    Some(Err(e)) => tracing::warn!(error = %e, "membership record unreadable; ignored"),
                    None => {}
                },
                // librdkafka retries on its own; the table keeps what it read.
                Some(Err(e)) => tracing::debug!(error = %e, "membership topic read failed"),
                None => {}
            }
        }
        publisher.publish(&[]);
        if let Err(e) = publisher.producer.flush(Duration::from_secs(2)) {
            tracing::warn!(error = %e, "the empty assignment was not acknowledged");
        }
    });
    thread.map_err(|e| MembersError::Kafka(rdkafka::error::KafkaError::ClientCreation(e.to_string())))
}

struct Publisher {
    producer: BaseProducer,
    topic: String,
    membership: Membership,
    generation: u64,
}

impl Publisher {
    fn publish(&mut self, partitions: &[i32]) {
        self.generation += 1;
        let m = Member {
            instance: self.membership.instance.to_string(),
            url: self.membership.url.as_deref().map(str::to_string),
            partitions: partitions.to_vec(),
            at_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
            generation: self.generation,
        };
        let Ok(value) = serde_json::to_vec(&m) else { return };
        let key = self.membership.instance.to_string();
        if let Err((e, _)) = self.producer.send(BaseRecord::to(&self.topic).key(&key).payload(&value)) {
            tracing::warn!(error = %e, "cannot publish this instance's partitions");
        }
        // The instance's own record counts too (a reader of its own topic sees it later).
        self.membership.observe(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(instance: &str, partitions: &[i32], at_ms: i64, generation: u64) -> Member {
        Member { instance: instance.into(), url: None, partitions: partitions.to_vec(), at_ms, generation }
    }

    #[test]
    fn the_latest_publication_of_a_partition_names_its_owner() {
        let mut t = Members::default();
        t.observe(m("a", &[0, 1], 100, 1));
        t.observe(m("b", &[2], 110, 1));
        assert_eq!(t.owner_of(1, "b").map(|m| m.instance.as_str()), Some("a"));
        // `a` was killed; `b` took its partitions later: `b` owns them.
        t.observe(m("b", &[0, 1, 2], 200, 2));
        assert_eq!(t.owner_of(1, "x").map(|m| m.instance.as_str()), Some("b"));
        // The asking instance is never named; an empty assignment names no one.
        assert_eq!(t.owner_of(1, "b").map(|m| m.instance.as_str()), Some("a"));
        t.observe(m("a", &[], 300, 2));
        assert_eq!(t.owner_of(1, "b"), None);
        // An older record of an instance read after a newer one changes nothing.
        t.observe(m("a", &[1], 150, 1));
        assert_eq!(t.owner_of(1, "b"), None);
    }
}
