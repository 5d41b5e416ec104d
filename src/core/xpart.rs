//! Identity resolution across partitions: the records of the internal identity topic
//! (`<group>.identity`, co-partitioned with the inputs), as bytes and back. Pure.
//!
//! Each record is keyed by the identifier whose partition ([`home`]) must act on it:
//! - [`XRecord::Link`]: "these identifiers are one person"; the receiver links the first (its
//!   own) with each of the others in its identity map, so its view of the group grows until
//!   every home of a member agrees on the canonical id.
//! - [`XRecord::Forward`]: an event that arrived under an id whose canonical prospect lives on
//!   the receiving partition, rewritten to that prospect (its event id kept, so dedup covers a
//!   redelivery).
//! - [`XRecord::Transfer`]: a prospect's whole state (changelog record layout, extras included),
//!   folded into `into` on the receiving partition with the semantics of a merge. It carries
//!   `from`'s transfer generation (1 for its first transfer, one more for each later one: an id
//!   whose canonical id flips back is transferred again); the receiver keeps `from` as a
//!   redirect record holding the generation it folded, so a redelivery folds nothing twice
//!   while a later generation folds.
//! - [`XRecord::Forget`]: a person left memory (`[retention]`: expired, or evicted at the cap)
//!   on the partition of its canonical id at `ts`; the receiver, another home of its
//!   identifiers, prunes those it holds that were first seen no later than `ts` (one seen
//!   later came back after the expiry: a new person's) and frees their redirect records.
//!
//! Layout (little endian; strings as `u32` length + UTF-8): a tag byte (`L`, `F`, `T`, `E`), then
//! - `L`: reason `u8`, `ts i64`, count `u32`, per identifier its map key, kind `u8`, first seen
//!   `i64`;
//! - `F`: `into`, then the event: event id, prospect, source `u8`, kind `u8`, name, signal `u16`
//!   (`0xFFFF`: none), `ts i64`, email and linked id (`u8` 0, or 1 + string), anonymous `u8`;
//! - `T`: `from`, `into`, reason `u8`, `ts i64`, the sending partition `u32`, the record
//!   (`u32` length + bytes), the generation `u32` (absent in records of builds before it: read
//!   as 0, deduplicated as they were, by the redirect alone);
//! - `E`: `ts i64`, count `u32`, per identifier its map key;
//! - `W`: the sending partition `u32`, `watermark i64`, `seen i64`, flags `u8` (bit 0: idle;
//!   bit 1: asking, the sender has not heard from every partition; the others refused); `i64::MIN` is "none yet", `i64::MAX` "unbounded" (every partition
//!   it heard of is idle). The layout is the one builds before idle reports lapsed wrote: what
//!   changed is what receivers make of bit 0 ([`ProgressTable`]: an idle report holds only
//!   while renewed) and when senders set it (a shard whose watermark the idle advance moves
//!   reports it, not idle). A report of an older build, which renews nothing, lapses at a
//!   receiver of this one and counts at its watermark until that build is upgraded.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use super::engine::snapshot::{Dec, Enc, StateError};
use super::event::{Event, EventKind, Source};
use super::identity::{IdKind, LinkReason};
use super::ids::kafka_partition;
use super::journey::{Journey, SignalId};
use super::time::Ts;

/// librdkafka's default `message.max.bytes`: the largest message (key + value) a producer
/// accepts unless configured otherwise.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// What a `Transfer` message holds besides its prospect record and its two ids (tag, reason,
/// time, partition, lengths, generation), with room to spare for the record batch's framing.
pub const TRANSFER_HEADROOM: usize = 4096;

/// The largest prospect record a `Transfer` of `from` into `into` may carry so that the message
/// (keyed by `into`) stays within `message_max_bytes`.
pub fn transfer_record_limit(message_max_bytes: usize, from: &str, into: &str) -> usize {
    message_max_bytes.saturating_sub(TRANSFER_HEADROOM + from.len() + 2 * into.len())
}

/// The partition (shard) of an identifier's map key among `partitions`: where a Kafka
/// producer keyed by it puts it (an email's key is NUL + the email).
pub fn home(key: &str, partitions: u32) -> u32 {
    if partitions <= 1 { 0 } else { kafka_partition(key.as_bytes(), partitions) }
}

/// An identifier as the identity map knows it: its map key, kind and first-seen time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ident {
    pub key: String,
    pub kind: IdKind,
    pub first_seen: Ts,
}

/// One record of the identity topic.
#[derive(Clone, Debug, PartialEq)]
pub enum XRecord {
    /// `ids[0]` (homed at the receiving partition) is one person with each of the others.
    Link { ids: Vec<Ident>, reason: LinkReason, ts: Ts },
    /// An event for the canonical prospect `into`, which lives on the receiving partition.
    Forward { into: String, event: Event<'static> },
    /// Prospect `from`'s state (a changelog record), to be folded into `into`.
    Transfer { from: String, into: String, reason: LinkReason, ts: Ts, source: u32, record: Vec<u8>, generation: u32 },
    /// The person of these identifiers (map keys; `ids[0]` homed at the receiving partition)
    /// left memory at `ts`: forget those first seen no later than `ts`.
    Forget { ids: Vec<String>, ts: Ts },
    /// Partition `partition` applied its inputs up to `watermark` (`Ts::NONE`: none yet; unless
    /// `idle`: caught up, then left out of the minimums), and every other partition's
    /// watermark it has received is at least `seen` (`Ts::NONE` until each reported; [`UNBOUNDED`]
    /// when all it counts are idle). `asking`: the sender has not heard from every partition
    /// (it started, or was restored): receivers publish theirs again. Sent to every other
    /// partition, in order with the sender's other records.
    Progress { partition: u32, watermark: Ts, seen: Ts, idle: bool, asking: bool },
}

/// A `Progress` bound that binds nothing: every partition it covers is idle.
pub const UNBOUNDED: Ts = Ts(i64::MAX);

/// One partition's last `Progress` record, as a receiver holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reported {
    pub watermark: Ts,
    pub seen: Ts,
    pub idle: bool,
}

/// How idle reports stay alive. A partition whose inputs are read to their end with nothing
/// queued, and whose watermark the wall clock does not move, reports `idle` (left out of the
/// minimums, so it never holds the others back) and renews that report at least every
/// `renew`; a receiver that has not received a report from it for `lapse` (by its own
/// monotonic clock) counts it at its last reported watermark instead: its owner may have died,
/// and its inputs may be receiving traffic no one reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewal {
    pub renew: Duration,
    pub lapse: Duration,
}

impl Renewal {
    /// The renewal of a service checkpointing every `commit_interval`. A renewal leaves with
    /// the shard's next durable checkpoint (the outbox), so between two receipts there are at
    /// most `renew` + a checkpoint interval + the checkpoint's write: renewed every two
    /// intervals (at least every second, the loop's progress tick), a report lapses after
    /// three renewals and one interval without one (35 s at the default 5 s interval).
    pub fn for_commit_interval(commit_interval: Duration) -> Renewal {
        let renew = (commit_interval * 2).max(Duration::from_secs(1));
        Renewal { renew, lapse: renew * 3 + commit_interval }
    }
}

/// The receiver's side of a [`Renewal`] at one moment: its monotonic clock `now`, and how long
/// an idle report holds without renewal.
#[derive(Clone, Copy, Debug)]
pub struct Lapse {
    pub now: Instant,
    pub after: Duration,
}

/// What a shard knows of every partition's event-time progress: the last `Progress` record
/// received from each other partition, with when it arrived (soft state: a restored shard
/// relearns it from the next ones). Two levels, so that records two hops away are covered: a
/// partition's own watermark `w_j`, and `seen_j`, the least `w_k` it had received. A record sent
/// by partition `k` for an input at `t` precedes `k`'s progress past `t` on every partition it
/// goes to, and a record that partition `j` sends on receiving it precedes `j`'s `seen` past
/// `t`. So once the [`horizon`](ProgressTable::horizon) of a shard is past `t`, it has read
/// every record caused, directly or through one other partition, by an input at or before `t`
/// (a third hop is not covered). No minimum is taken over received `seen` values alone, which
/// would wait on itself: `seen` is computed from watermarks, which move with the inputs.
///
/// An `idle` report leaves its watermark out only while it is renewed: given a [`Lapse`], one
/// received longer ago than `after` counts at its watermark (pure: the time is the caller's;
/// without a `Lapse`, or for a report received without a time, idle reports hold). With
/// [`wait_while_reading`](ProgressTable::wait_while_reading) (history mode, where no clock
/// moves an idle partition's watermark), idle reports are left out only while no partition
/// reads: once one does (this one, or a report that is not idle), every partition counts at
/// its watermark, so traffic produced to idle partitions is read before anyone expires past
/// it, whichever partition reads it first, once the reader's report that it reads has arrived
/// (a partition that read its share and went idle again before another fetched its own is
/// the exception README "Operate: expiry waiting on a partition" lists).
#[derive(Clone, Debug, Default)]
pub struct ProgressTable {
    partition: u32,
    reported: Vec<Option<(Reported, Option<Instant>)>>,
    wait_while_reading: bool,
}

impl ProgressTable {
    /// Partition `partition`'s table among `partitions`, nothing reported yet.
    pub fn new(partition: u32, partitions: u32) -> ProgressTable {
        ProgressTable { partition, reported: vec![None; partitions as usize], wait_while_reading: false }
    }

    /// The partition whose table this is.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// History mode: idle reports (and this shard's own idleness) are left out only while no
    /// partition reads.
    pub fn wait_while_reading(&mut self, on: bool) {
        self.wait_while_reading = on;
    }

    /// Whether idle reports are counted now: in history mode, while this shard (`own_idle`
    /// false) or a partition whose report is not idle reads.
    fn someone_reads(&self, own_idle: bool) -> bool {
        self.wait_while_reading && (!own_idle || self.others().any(|(_, r)| r.is_some_and(|(r, _)| !r.idle)))
    }

    /// Partition `from`'s progress record, received at `at` (the receiver's clock; `None`:
    /// unknown, the report never lapses); `false` (ignored) for a partition out of range or
    /// this one.
    pub fn receive(&mut self, from: u32, r: Reported, at: Option<Instant>) -> bool {
        if from == self.partition {
            return false;
        }
        match self.reported.get_mut(from as usize) {
            Some(slot) => {
                *slot = Some((r, at));
                true
            }
            None => false,
        }
    }

    /// The last record of partition `p`.
    pub fn reported(&self, p: u32) -> Option<Reported> {
        self.reported.get(p as usize).copied().flatten().map(|(r, _)| r)
    }

    /// Whether every other partition has reported.
    pub fn complete(&self) -> bool {
        self.others().all(|(_, r)| r.is_some())
    }

    fn others(&self) -> impl Iterator<Item = (u32, Option<(Reported, Option<Instant>)>)> + '_ {
        self.reported.iter().enumerate().filter(|&(p, _)| p as u32 != self.partition).map(|(p, r)| (p as u32, *r))
    }

    /// Whether a report received at `at` is left out of the minimums: idle, and renewed within
    /// the lapse.
    fn left_out(r: &Reported, at: Option<Instant>, lapse: Option<Lapse>) -> bool {
        r.idle && !Self::expired(at, lapse)
    }

    fn expired(at: Option<Instant>, lapse: Option<Lapse>) -> bool {
        match (at, lapse) {
            (Some(at), Some(l)) => l.now.saturating_duration_since(at) > l.after,
            _ => false,
        }
    }

    /// How many partitions' last report said idle and lapsed (counted at their watermark).
    pub fn lapsed(&self, lapse: Option<Lapse>) -> usize {
        self.lapsed_iter(lapse).count()
    }

    /// The partitions whose last report said idle and lapsed, in increasing order.
    pub fn lapsed_partitions(&self, lapse: Option<Lapse>) -> Vec<u32> {
        self.lapsed_iter(lapse).collect()
    }

    fn lapsed_iter(&self, lapse: Option<Lapse>) -> impl Iterator<Item = u32> + '_ {
        self.others().filter(move |(_, r)| r.is_some_and(|(r, at)| r.idle && Self::expired(at, lapse))).map(|(p, _)| p)
    }

    /// What this shard publishes as `seen`: the least of its own watermark (unless `own_idle`)
    /// and each other partition's reported watermark (unless idle and not lapsed; in history
    /// mode, idleness counts only while no partition reads); `Ts::NONE` while one has not
    /// reported, [`UNBOUNDED`] when every one counted is idle.
    pub fn seen(&self, own: Ts, own_idle: bool, lapse: Option<Lapse>) -> Ts {
        let reads = self.someone_reads(own_idle);
        let mut least = if own_idle && !reads { UNBOUNDED } else { own };
        for (_, r) in self.others() {
            let Some((r, at)) = r else { return Ts::NONE };
            if reads || !Self::left_out(&r, at, lapse) {
                least = least.min(r.watermark);
            }
        }
        least
    }

    /// The expiry horizon: the least of [`seen`](Self::seen) and each other partition's
    /// reported `seen`; `Ts::NONE` while one has not reported.
    pub fn horizon(&self, own: Ts, own_idle: bool, lapse: Option<Lapse>) -> Ts {
        let mut least = self.seen(own, own_idle, lapse);
        for (_, r) in self.others() {
            let Some((r, _)) = r else { return Ts::NONE };
            least = least.min(r.seen);
        }
        least
    }
}

impl XRecord {
    /// The identifier whose partition the record goes to (its Kafka key).
    pub fn key(&self) -> &str {
        match self {
            XRecord::Link { ids, .. } => ids.first().map_or("", |i| &i.key),
            XRecord::Forward { into, .. } | XRecord::Transfer { into, .. } => into,
            XRecord::Forget { ids, .. } => ids.first().map_or("", String::as_str),
            XRecord::Progress { .. } => "",
        }
    }

    /// The event time the record is merged by among the shard's inputs (a `Progress` record
    /// has none: `Ts::NONE`, taken at once).
    pub fn ts(&self) -> Ts {
        match self {
            XRecord::Link { ts, .. } | XRecord::Transfer { ts, .. } | XRecord::Forget { ts, .. } => *ts,
            XRecord::Forward { event, .. } => event.ts,
            XRecord::Progress { .. } => Ts::NONE,
        }
    }

    /// Checks what decoding alone cannot, against the journey the shard runs: a forwarded
    /// event's signal is one of the journey's (the topic carries signal indexes: a journey whose
    /// signals changed while records were in flight would misread them), and no id holds a
    /// control character (ids the decoders accept never do; an email's map key starts with NUL,
    /// and only there). `Err` names what is wrong; the caller dead-letters the record.
    pub fn check(&self, journey: &Journey) -> Result<(), &'static str> {
        let printable = |id: &str| !id.is_empty() && !id.bytes().any(|b| b < 0x20 || b == 0x7f);
        match self {
            XRecord::Link { ids, .. } => {
                let ok = |i: &Ident| match i.kind {
                    IdKind::Email => i.key.strip_prefix('\0').is_some_and(printable),
                    IdKind::Anonymous | IdKind::Known => printable(&i.key),
                };
                if ids.len() < 2 || !ids.iter().all(ok) {
                    return Err("link identifiers");
                }
            }
            XRecord::Forward { into, event } => {
                if !printable(into) || !printable(&event.prospect) || !printable(&event.event_id) {
                    return Err("forwarded event ids");
                }
                if event.signal.is_some_and(|s| s.0 as usize >= journey.signals.len()) {
                    return Err("forwarded event signal");
                }
            }
            XRecord::Transfer { from, into, .. } => {
                if !printable(from) || !printable(into) {
                    return Err("transfer ids");
                }
            }
            XRecord::Forget { ids, .. } => {
                let ok = |k: &String| printable(k.strip_prefix('\0').unwrap_or(k));
                if ids.is_empty() || !ids.iter().all(ok) {
                    return Err("forget identifiers");
                }
            }
            XRecord::Progress { .. } => {}
        }
        Ok(())
    }

    /// The record's kind, a bounded label.
    pub fn kind(&self) -> &'static str {
        match self {
            XRecord::Link { .. } => "link",
            XRecord::Forward { .. } => "forward",
            XRecord::Transfer { .. } => "transfer",
            XRecord::Forget { .. } => "forget",
            XRecord::Progress { .. } => "progress",
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut e = Enc(out);
        match self {
            XRecord::Link { ids, reason, ts } => {
                e.u8(b'L');
                e.u8(*reason as u8);
                e.ts(*ts);
                e.u32(ids.len() as u32);
                for i in ids {
                    e.bytes(i.key.as_bytes());
                    e.u8(i.kind as u8);
                    e.ts(i.first_seen);
                }
            }
            XRecord::Forward { into, event } => {
                e.u8(b'F');
                e.bytes(into.as_bytes());
                e.bytes(event.event_id.as_bytes());
                e.bytes(event.prospect.as_bytes());
                e.u8(event.source as u8);
                e.u8(event.kind as u8);
                e.bytes(event.name.as_bytes());
                e.u16(event.signal.map_or(u16::MAX, |s| s.0));
                e.ts(event.ts);
                for s in [&event.email, &event.linked] {
                    match s {
                        Some(s) => {
                            e.u8(1);
                            e.bytes(s.as_bytes());
                        }
                        None => e.u8(0),
                    }
                }
                e.u8(u8::from(event.anonymous));
            }
            XRecord::Transfer { from, into, reason, ts, source, record, generation } => {
                e.u8(b'T');
                e.bytes(from.as_bytes());
                e.bytes(into.as_bytes());
                e.u8(*reason as u8);
                e.ts(*ts);
                e.u32(*source);
                e.bytes(record);
                e.u32(*generation);
            }
            XRecord::Forget { ids, ts } => {
                e.u8(b'E');
                e.ts(*ts);
                e.u32(ids.len() as u32);
                for k in ids {
                    e.bytes(k.as_bytes());
                }
            }
            XRecord::Progress { partition, watermark, seen, idle, asking } => {
                e.u8(b'W');
                e.u32(*partition);
                e.ts(*watermark);
                e.ts(*seen);
                e.u8(u8::from(*idle) | u8::from(*asking) << 1);
            }
        }
    }

    pub fn decode(buf: &[u8]) -> Result<XRecord, StateError> {
        let mut d = Dec::new(buf);
        let at = d.position();
        let rec = match d.u8("identity record tag")? {
            b'L' => {
                let reason = reason(&mut d)?;
                let ts = d.ts("link time")?;
                let n = d.u32("identifier count")?;
                if n as usize > d.remaining() {
                    return Err(StateError::Invalid { what: "identifier count", at: d.position() });
                }
                let mut ids = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let key = d.str("identifier")?.to_string();
                    let kind = match d.u8("identifier kind")? {
                        0 => IdKind::Anonymous,
                        1 => IdKind::Known,
                        2 => IdKind::Email,
                        _ => return Err(StateError::Invalid { what: "identifier kind", at: d.position() - 1 }),
                    };
                    ids.push(Ident { key, kind, first_seen: d.ts("first seen")? });
                }
                if ids.is_empty() {
                    return Err(StateError::Invalid { what: "identifier count", at });
                }
                XRecord::Link { ids, reason, ts }
            }
            b'F' => {
                let into = d.str("forward into")?.to_string();
                let event_id = d.str("event id")?.to_string();
                let prospect = d.str("prospect")?.to_string();
                let source = match d.u8("source")? {
                    0 => Source::Web,
                    1 => Source::Crm,
                    _ => return Err(StateError::Invalid { what: "source", at: d.position() - 1 }),
                };
                let kinds = [
                    EventKind::Named,
                    EventKind::Page,
                    EventKind::Screen,
                    EventKind::Identify,
                    EventKind::Group,
                    EventKind::Alias,
                ];
                let k = d.u8("event kind")?;
                let Some(&kind) = kinds.get(k as usize) else {
                    return Err(StateError::Invalid { what: "event kind", at: d.position() - 1 });
                };
                let name = d.str("event name")?.to_string();
                let signal = match d.u16("signal")? {
                    u16::MAX => None,
                    s => Some(SignalId(s)),
                };
                let ts = d.ts("event time")?;
                let mut opt = |what| -> Result<Option<Cow<'static, str>>, StateError> {
                    Ok(match d.u8(what)? {
                        0 => None,
                        _ => Some(Cow::Owned(d.str(what)?.to_string())),
                    })
                };
                let email = opt("email")?;
                let linked = opt("linked id")?;
                let anonymous = d.u8("anonymous")? != 0;
                let event = Event {
                    event_id: Cow::Owned(event_id),
                    prospect: Cow::Owned(prospect),
                    source,
                    kind,
                    name: Cow::Owned(name),
                    signal,
                    ts,
                    email,
                    linked,
                    anonymous,
                    touch: None,
                };
                XRecord::Forward { into, event }
            }
            b'T' => XRecord::Transfer {
                from: d.str("transfer from")?.to_string(),
                into: d.str("transfer into")?.to_string(),
                reason: reason(&mut d)?,
                ts: d.ts("transfer time")?,
                source: d.u32("source partition")?,
                record: d.bytes("prospect record")?.to_vec(),
                generation: if d.is_empty() { 0 } else { d.u32("transfer generation")? },
            },
            b'E' => {
                let ts = d.ts("forget time")?;
                let n = d.u32("identifier count")?;
                if n == 0 || n as usize > d.remaining() {
                    return Err(StateError::Invalid { what: "identifier count", at: d.position() });
                }
                let ids = (0..n).map(|_| d.str("identifier").map(str::to_string)).collect::<Result<_, _>>()?;
                XRecord::Forget { ids, ts }
            }
            b'W' => {
                let partition = d.u32("progress partition")?;
                let watermark = d.ts("progress watermark")?;
                let seen = d.ts("progress seen")?;
                let flags = d.u8("progress flags")?;
                if flags > 3 {
                    return Err(StateError::Invalid { what: "progress flags", at: d.position() - 1 });
                }
                XRecord::Progress { partition, watermark, seen, idle: flags & 1 != 0, asking: flags & 2 != 0 }
            }
            _ => return Err(StateError::Invalid { what: "identity record tag", at }),
        };
        if !d.is_empty() {
            return Err(StateError::Invalid { what: "trailing bytes", at: d.position() });
        }
        Ok(rec)
    }
}

fn reason(d: &mut Dec<'_>) -> Result<LinkReason, StateError> {
    let at = d.position();
    match d.u8("link reason")? {
        0 => Ok(LinkReason::Identify),
        1 => Ok(LinkReason::Alias),
        2 => Ok(LinkReason::Email),
        3 => Ok(LinkReason::CanonicalRule),
        _ => Err(StateError::Invalid { what: "link reason", at }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(r: XRecord) {
        let mut buf = Vec::new();
        r.encode(&mut buf);
        assert_eq!(XRecord::decode(&buf).unwrap(), r);
        // Every cut of a record is refused, never misread, except a transfer cut before its
        // generation: the layout of builds before it, read as generation 0.
        let transfer = matches!(r, XRecord::Transfer { .. });
        for n in 0..buf.len() {
            let cut = XRecord::decode(&buf[..n]);
            if transfer && n == buf.len() - 4 {
                assert!(matches!(cut, Ok(XRecord::Transfer { generation: 0, .. })), "{cut:?}");
            } else {
                assert!(cut.is_err(), "cut at {n} of {}", r.kind());
            }
        }
    }

    #[test]
    fn records_round_trip_and_cuts_are_refused() {
        let ident = |k: &str, kind| Ident { key: k.into(), kind, first_seen: Ts(1_700_000_000_000) };
        round_trip(XRecord::Link {
            ids: vec![
                ident("anon_1", IdKind::Anonymous),
                ident("usr_1", IdKind::Known),
                ident("\0a@b.c", IdKind::Email),
            ],
            reason: LinkReason::Identify,
            ts: Ts(1_700_000_000_500),
        });
        round_trip(XRecord::Forward {
            into: "usr_1".into(),
            event: Event {
                event_id: "e1".into(),
                prospect: "usr_1".into(),
                source: Source::Crm,
                kind: EventKind::Named,
                name: "quote_sent".into(),
                signal: Some(SignalId(3)),
                ts: Ts(1_700_000_001_000),
                email: Some("a@b.c".into()),
                linked: None,
                anonymous: false,
                touch: None,
            },
        });
        round_trip(XRecord::Transfer {
            from: "anon_1".into(),
            into: "usr_1".into(),
            reason: LinkReason::Email,
            ts: Ts(5),
            source: 2,
            record: vec![b'P', 1, 2, 3],
            generation: 2,
        });
        round_trip(XRecord::Transfer {
            from: "anon_1".into(),
            into: "usr_1".into(),
            reason: LinkReason::Email,
            ts: Ts(5),
            source: 2,
            record: vec![b'P', 1, 2, 3],
            generation: 0,
        });
        round_trip(XRecord::Forget {
            ids: vec!["anon_1".into(), "usr_1".into(), "\0a@b.c".into()],
            ts: Ts(1_700_000_002_000),
        });
        round_trip(XRecord::Progress {
            partition: 2,
            watermark: Ts(1_700_000_003_000),
            seen: Ts::NONE,
            idle: false,
            asking: true,
        });
        round_trip(XRecord::Progress { partition: 0, watermark: Ts::NONE, seen: UNBOUNDED, idle: true, asking: false });
        assert!(XRecord::decode(&[b'W', 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 4]).is_err());
        assert!(XRecord::decode(b"X").is_err());
    }

    /// The horizon waits for every partition, takes the least watermark and `seen` (the second
    /// level: what the others had received), and leaves idle partitions out.
    #[test]
    fn the_progress_horizon_is_the_least_of_both_levels_without_idle_partitions() {
        let r = |watermark, seen, idle| Reported { watermark: Ts(watermark), seen: Ts(seen), idle };
        let mut t = ProgressTable::new(0, 3);
        assert_eq!(t.horizon(Ts(100), false, None), Ts::NONE);
        assert!(t.receive(1, r(50, 40, false), None));
        assert!(!t.receive(0, r(1, 1, false), None), "its own partition");
        assert!(!t.receive(3, r(1, 1, false), None), "out of range");
        assert_eq!((t.seen(Ts(100), false, None), t.horizon(Ts(100), false, None)), (Ts::NONE, Ts::NONE));
        assert!(!t.complete());
        t.receive(2, r(70, 60, false), None);
        assert!(t.complete());
        assert_eq!(t.seen(Ts(100), false, None), Ts(50));
        assert_eq!(t.horizon(Ts(100), false, None), Ts(40));
        // An idle partition's watermark binds nothing; what it has seen still does.
        t.receive(1, r(50, 65, true), None);
        assert_eq!(t.seen(Ts(100), false, None), Ts(70));
        assert_eq!(t.horizon(Ts(100), false, None), Ts(60));
        assert_eq!(t.seen(Ts(100), true, None), Ts(70));
        t.receive(2, r(70, UNBOUNDED.0, true), None);
        assert_eq!(t.seen(Ts(100), true, None), UNBOUNDED);
        assert_eq!(t.horizon(Ts(100), true, None), Ts(65));
        assert_eq!(t.horizon(Ts(100), false, None), Ts(65));
        t.receive(1, r(50, UNBOUNDED.0, true), None);
        assert_eq!(t.horizon(Ts(100), false, None), Ts(100));
        assert_eq!(t.horizon(Ts(100), true, None), UNBOUNDED);
    }

    /// Which partitions lapsed, not only how many: those whose idle report was not renewed
    /// within the lapse, in increasing order; a fresh idle report, a report that is not idle
    /// however old, and this table's own partition are not among them.
    #[test]
    fn the_lapsed_partitions_are_named_in_order() {
        let r = |idle| Reported { watermark: Ts(50), seen: Ts(50), idle };
        let t0 = Instant::now();
        let at = Some(Lapse { now: t0 + Duration::from_secs(60), after: Duration::from_secs(30) });
        let mut t = ProgressTable::new(2, 5);
        t.receive(3, r(true), Some(t0));
        t.receive(0, r(true), Some(t0));
        t.receive(1, r(true), Some(t0 + Duration::from_secs(50)));
        t.receive(4, r(false), Some(t0));
        assert_eq!(t.lapsed_partitions(at), [0, 3]);
        assert_eq!(t.lapsed(at), 2, "the gauge's count is the list's length");
    }

    /// An idle report holds only while renewed: received longer ago than the lapse, it counts
    /// at its watermark (a dead sender holds every horizon there); a renewal, or a report that
    /// is not idle, resets it. The time is the caller's.
    #[test]
    fn an_idle_report_lapses_unless_renewed_and_then_holds_at_its_watermark() {
        let r = |watermark, seen, idle| Reported { watermark: Ts(watermark), seen: Ts(seen), idle };
        let t0 = Instant::now();
        let after = Duration::from_secs(30);
        let at = |s: u64| Some(Lapse { now: t0 + Duration::from_secs(s), after });
        let mut t = ProgressTable::new(0, 3);
        t.receive(1, r(50, UNBOUNDED.0, true), Some(t0));
        t.receive(2, r(70, UNBOUNDED.0, true), Some(t0));
        assert_eq!(t.horizon(Ts(100), false, at(30)), Ts(100), "within the lapse: left out");
        assert_eq!(t.lapsed(at(30)), 0);
        assert_eq!(t.lapsed_partitions(at(30)), Vec::<u32>::new());
        // Partition 2 renews; partition 1 does not (its owner died while idle).
        t.receive(2, r(70, UNBOUNDED.0, true), Some(t0 + Duration::from_secs(20)));
        assert_eq!(t.seen(Ts(100), false, at(31)), Ts(50), "lapsed: counted at its last watermark");
        assert_eq!(t.horizon(Ts(100), false, at(31)), Ts(50));
        assert_eq!(t.horizon(Ts(100), true, at(31)), Ts(50), "also for a shard idle itself");
        assert_eq!(t.lapsed(at(31)), 1);
        assert_eq!(t.lapsed_partitions(at(31)), [1], "the one that did not renew");
        // Held there however far the others get.
        assert_eq!(t.horizon(Ts(10_000), false, at(45)), Ts(50));
        // Without a clock (in-process callers that pass none) nothing lapses.
        assert_eq!(t.horizon(Ts(100), false, None), Ts(100));
        // Renewed by partition 2 in time it never lapses; its report from 20 s is 51 s old at 71.
        t.receive(2, r(70, UNBOUNDED.0, true), Some(t0 + Duration::from_secs(45)));
        assert_eq!(t.lapsed(at(71)), 1);
        assert_eq!(t.lapsed(at(76)), 2, "partition 2 not renewed since 45 s");
        assert_eq!(t.lapsed_partitions(at(76)), [1, 2]);
        assert_eq!(t.lapsed_partitions(None), Vec::<u32>::new(), "without a clock nothing lapses");
        assert_eq!(t.horizon(Ts(10_000), false, at(76)), Ts(50));
        // The partition reports again (its new owner): the report is fresh, left out again.
        t.receive(1, r(90, UNBOUNDED.0, true), Some(t0 + Duration::from_secs(80)));
        t.receive(2, r(70, UNBOUNDED.0, true), Some(t0 + Duration::from_secs(80)));
        assert_eq!(t.horizon(Ts(10_000), false, at(81)), Ts(10_000));
        assert_eq!(t.lapsed(at(81)), 0);
        // A report that is not idle counts at its watermark however old: it never lapses.
        t.receive(1, r(90, 80, false), Some(t0));
        assert_eq!(t.lapsed(at(1000)), 1, "only partition 2's idle report");
        assert_eq!(t.lapsed_partitions(at(1000)), [2]);
        assert_eq!(t.horizon(Ts(10_000), false, at(81)), Ts(80));
    }

    /// The renewal derived from the checkpoint interval: a renewal leaves with a durable
    /// checkpoint, so the lapse covers three renewals and one more interval.
    #[test]
    fn the_renewal_follows_the_commit_interval() {
        let r = Renewal::for_commit_interval(Duration::from_secs(5));
        assert_eq!((r.renew, r.lapse), (Duration::from_secs(10), Duration::from_secs(35)));
        let fast = Renewal::for_commit_interval(Duration::from_millis(200));
        assert_eq!((fast.renew, fast.lapse), (Duration::from_secs(1), Duration::from_millis(3200)));
    }

    /// A record that decodes but does not fit the journey, or names an id no decoder
    /// accepts, is refused by `check` (the pipeline dead-letters it rather than panic on a
    /// signal index past the journey's).
    #[test]
    fn records_that_do_not_fit_the_journey_are_refused() {
        let journey = Journey::from_toml_str(include_str!("../../deploy/journeys/b2b.toml")).unwrap();
        let n = journey.signals.len() as u16;
        let forward = |prospect: &str, signal: u16| XRecord::Forward {
            into: prospect.into(),
            event: Event {
                event_id: "e1".into(),
                prospect: prospect.to_string().into(),
                source: Source::Crm,
                kind: EventKind::Named,
                name: "quote_sent".into(),
                signal: Some(SignalId(signal)),
                ts: Ts(1_700_000_001_000),
                email: None,
                linked: None,
                anonymous: false,
                touch: None,
            },
        };
        assert_eq!(forward("usr_1", n - 1).check(&journey), Ok(()));
        assert_eq!(forward("usr_1", n).check(&journey), Err("forwarded event signal"));
        assert_eq!(forward("\0microfunnel.checkpoint", 0).check(&journey), Err("forwarded event ids"));
        let ident = |k: &str, kind| Ident { key: k.into(), kind, first_seen: Ts(1) };
        let link = |ids| XRecord::Link { ids, reason: LinkReason::Email, ts: Ts(2) };
        assert_eq!(link(vec![ident("a", IdKind::Anonymous), ident("\0a@b.c", IdKind::Email)]).check(&journey), Ok(()));
        assert!(link(vec![ident("a", IdKind::Anonymous)]).check(&journey).is_err());
        assert!(link(vec![ident("a\n", IdKind::Known), ident("b", IdKind::Known)]).check(&journey).is_err());
        assert!(link(vec![ident("a", IdKind::Known), ident("a@b.c", IdKind::Email)]).check(&journey).is_err());
        let transfer = |from: &str| XRecord::Transfer {
            from: from.into(),
            into: "usr_1".into(),
            reason: LinkReason::Email,
            ts: Ts(5),
            source: 2,
            record: vec![],
            generation: 1,
        };
        assert_eq!(transfer("anon_1").check(&journey), Ok(()));
        assert!(transfer("").check(&journey).is_err());
        let forget = |ids: &[&str]| XRecord::Forget { ids: ids.iter().map(|s| s.to_string()).collect(), ts: Ts(5) };
        assert_eq!(forget(&["anon_1", "\0a@b.c"]).check(&journey), Ok(()));
        assert!(forget(&[]).check(&journey).is_err());
        assert!(forget(&["a\tb"]).check(&journey).is_err());
    }

    #[test]
    fn home_is_kafkas_partition() {
        assert_eq!(home("usr_1", 1), 0);
        assert_eq!(home("usr_1", 3), kafka_partition(b"usr_1", 3));
    }
}
