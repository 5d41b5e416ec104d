//! Which instance of the group holds which partition, published by each instance on the
//! internal topic `<group>.members` and read back by every instance, so that a query for a
//! prospect on another instance can name it (`GET /prospects/{id}`'s 421).
//!
//! Kafka's group protocol does not tell a member the others' assignments (and Tansu's
//! DescribeGroups returns none), so each instance publishes its own: a record keyed by its
//! instance id (host name and HTTP port, stable across restarts) holding its query API's
//! advertised URL, the partitions it holds and when it published them, on every change of its
//! assignment and every [`REPUBLISH`]; a tombstone (null value) when it stops. Readers keep the
//! last record per instance and drop an instance at its tombstone or once its last record is
//! older than [`STALE_AFTER`] (killed); a partition's owner is the instance whose latest fresh
//! record lists it with the latest time (one that was killed is superseded once the survivor
//! publishes the partitions it took). The topic is compacted where the broker compacts (one
//! record per instance id); readers read it from its start either way.
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

/// How old an instance's last record may be before readers take it for gone (killed without
/// its tombstone): three republications missed.
pub const STALE_AFTER: Duration = Duration::from_secs(3 * REPUBLISH.as_secs());

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
    /// The input partitions it holds, ascending.
    pub partitions: Vec<i32>,
    /// Wall-clock time of publication, milliseconds since the epoch.
    pub at_ms: i64,
    /// Its publications so far, counted from 1 at its start.
    pub generation: u64,
}

/// The last record of every instance, read from the membership topic. Times are inputs
/// (milliseconds since the epoch): the table reads no clock.
#[derive(Clone, Debug, Default)]
pub struct Members {
    by_instance: BTreeMap<String, Member>,
}

impl Members {
    /// Takes in a record: an instance's newer publication (by time, then generation, which
    /// restarts at 1 when the instance restarts) replaces its older one; an older one is ignored.
    pub fn observe(&mut self, m: Member) {
        match self.by_instance.get(&m.instance) {
            Some(old) if (old.at_ms, old.generation) > (m.at_ms, m.generation) => {}
            _ => {
                self.by_instance.insert(m.instance.clone(), m);
            }
        }
    }

    /// Takes in a tombstone of `instance` written at `at_ms`: the instance stopped. A record it
    /// published later (it started again under the same id) stays.
    pub fn forget(&mut self, instance: &str, at_ms: i64) {
        if self.by_instance.get(instance).is_some_and(|m| m.at_ms <= at_ms) {
            self.by_instance.remove(instance);
        }
    }

    /// Drops the instances whose last record is older than [`STALE_AFTER`] at `now_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        let oldest = now_ms.saturating_sub(STALE_AFTER.as_millis() as i64);
        self.by_instance.retain(|_, m| m.at_ms >= oldest);
    }

    /// The instance holding `partition`, other than `except` (the asking instance): of the
    /// instances whose last record lists it and is not stale at `now_ms`, the one that
    /// published last.
    pub fn owner_of(&self, partition: i32, except: &str, now_ms: i64) -> Option<&Member> {
        let oldest = now_ms.saturating_sub(STALE_AFTER.as_millis() as i64);
        self.by_instance
            .values()
            .filter(|m| m.instance != except && m.at_ms >= oldest && m.partitions.contains(&partition))
            .max_by_key(|m| (m.at_ms, m.generation))
    }

    /// Every instance's last record, by instance id.
    pub fn iter(&self) -> impl Iterator<Item = &Member> {
        self.by_instance.values()
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

    /// The other instance that holds `partition`, as far as its fresh records say (stale ones
    /// leave the table here).
    pub fn owner_of(&self, partition: i32) -> Option<Member> {
        let now = now_ms();
        let mut t = self.table();
        t.expire(now);
        t.owner_of(partition, &self.instance, now).cloned()
    }

    /// Every instance the table knows (this one included once it published), stale ones
    /// dropped first.
    pub fn members(&self) -> Vec<Member> {
        let mut t = self.table();
        t.expire(now_ms());
        t.iter().cloned().collect()
    }

    fn observe(&self, m: Member) {
        self.table().observe(m);
    }

    fn forget(&self, instance: &str, at_ms: i64) {
        self.table().forget(instance, at_ms);
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// This instance's id: its host name and HTTP port (`web-2:9464`). Stable across restarts
/// where the host name is (a StatefulSet's pods), so the compacted topic keeps one record per
/// instance; unique among running instances, since two processes on one host cannot bind one
/// port (two instances in one test process listen on two ports).
pub fn instance_id(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}:{port}")
}

#[derive(Debug, thiserror::Error)]
pub enum MembersError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("membership topic `{topic}` is missing on {brokers}: run `microfunnel create-topics`")]
    Missing { topic: String, brokers: String },
}

/// Starts the thread that publishes this instance's partitions (as `status` lists them) and
/// reads every instance's into `membership`, until `stop`; it then publishes a tombstone.
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
                    // A tombstone: that instance stopped (a record without its time is taken
                    // as written now).
                    None => match msg.key().map(std::str::from_utf8) {
                        Some(Ok(instance)) => {
                            publisher.membership.forget(instance, msg.timestamp().to_millis().unwrap_or(i64::MAX))
                        }
                        _ => tracing::warn!("membership tombstone without a readable key; ignored"),
                    },
                },
                // librdkafka retries on its own; the table keeps what it read.
                Some(Err(e)) => tracing::debug!(error = %e, "membership topic read failed"),
                None => {}
            }
        }
        publisher.tombstone();
        if let Err(e) = publisher.producer.flush(Duration::from_secs(2)) {
            tracing::warn!(error = %e, "this instance's tombstone was not acknowledged");
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
            at_ms: now_ms(),
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

    /// A null value under this instance's key: it stopped (and a compacting broker drops its
    /// records).
    fn tombstone(&mut self) {
        let key = self.membership.instance.to_string();
        if let Err((e, _)) = self.producer.send(BaseRecord::<str, [u8]>::to(&self.topic).key(&key)) {
            tracing::warn!(error = %e, "cannot publish this instance's tombstone");
        }
        self.membership.forget(&key, now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(instance: &str, partitions: &[i32], at_ms: i64, generation: u64) -> Member {
        Member { instance: instance.into(), url: None, partitions: partitions.to_vec(), at_ms, generation }
    }

    fn owner<'a>(t: &'a Members, partition: i32, except: &str, now: i64) -> Option<&'a str> {
        t.owner_of(partition, except, now).map(|m| m.instance.as_str())
    }

    #[test]
    fn the_latest_publication_of_a_partition_names_its_owner() {
        let mut t = Members::default();
        t.observe(m("a", &[0, 1], 100, 1));
        t.observe(m("b", &[2], 110, 1));
        assert_eq!(owner(&t, 1, "b", 200), Some("a"));
        // `a` was killed; `b` took its partitions later: `b` owns them.
        t.observe(m("b", &[0, 1, 2], 200, 2));
        assert_eq!(owner(&t, 1, "x", 200), Some("b"));
        // The asking instance is never named; an empty assignment names no one.
        assert_eq!(owner(&t, 1, "b", 200), Some("a"));
        t.observe(m("a", &[], 300, 2));
        assert_eq!(owner(&t, 1, "b", 300), None);
        // An older record of an instance read after a newer one changes nothing.
        t.observe(m("a", &[1], 150, 1));
        assert_eq!(owner(&t, 1, "b", 300), None);
    }

    #[test]
    fn a_restarted_instance_under_the_same_id_replaces_its_older_records() {
        let mut t = Members::default();
        t.observe(m("a", &[0], 100, 7));
        // Its generation starts again at 1; its time is later.
        t.observe(m("a", &[1], 200, 1));
        assert_eq!((owner(&t, 0, "x", 200), owner(&t, 1, "x", 200)), (None, Some("a")));
        // Its previous run's records, read from the topic's start after its own, change nothing.
        t.observe(m("a", &[0], 150, 9));
        assert_eq!((owner(&t, 0, "x", 200), owner(&t, 1, "x", 200)), (None, Some("a")));
    }

    #[test]
    fn a_tombstone_removes_the_instance_unless_it_published_later() {
        let mut t = Members::default();
        t.observe(m("a", &[0, 1], 100, 1));
        t.observe(m("b", &[2], 100, 1));
        t.forget("a", 150);
        assert_eq!(owner(&t, 0, "x", 160), None);
        assert_eq!(t.iter().map(|m| m.instance.as_str()).collect::<Vec<_>>(), ["b"]);
        // `b` stopped, then started again under its id: a tombstone older than the new record
        // (its previous run's, read after it) leaves it.
        t.observe(m("b", &[2], 300, 1));
        t.forget("b", 200);
        assert_eq!(owner(&t, 2, "x", 300), Some("b"));
        // A tombstone of an instance never seen changes nothing.
        t.forget("c", 400);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_stale_instance_is_never_named_and_leaves_the_table_when_read() {
        let stale = STALE_AFTER.as_millis() as i64;
        let mut t = Members::default();
        t.observe(m("killed", &[0, 1], 1_000, 4));
        t.observe(m("live", &[2], 1_000, 4));
        assert_eq!(owner(&t, 0, "x", 1_000 + stale), Some("killed"));
        // `live` republished; `killed` did not for longer than STALE_AFTER.
        t.observe(m("live", &[2], 1_000 + stale, 5));
        assert_eq!(owner(&t, 0, "x", 1_001 + stale), None);
        assert_eq!(owner(&t, 2, "x", 1_001 + stale), Some("live"));
        assert_eq!(t.len(), 2);
        t.expire(1_001 + stale);
        assert_eq!(t.iter().map(|m| m.instance.as_str()).collect::<Vec<_>>(), ["live"]);
    }

    #[test]
    fn of_several_fresh_publications_the_newest_names_the_owner() {
        let mut t = Members::default();
        // `old` still lists partition 0 (its revoke not published yet); `new` took it later.
        t.observe(m("old", &[0, 1], 1_000, 3));
        t.observe(m("new", &[0], 2_000, 1));
        assert_eq!(owner(&t, 0, "x", 2_000), Some("new"));
        assert_eq!(owner(&t, 1, "x", 2_000), Some("old"));
        // Same time: the later generation.
        t.observe(m("other", &[1], 1_000, 4));
        assert_eq!(owner(&t, 1, "x", 2_000), Some("other"));
    }
}
