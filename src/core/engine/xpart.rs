//! Identity resolution across partitions, the engine's side: a shard that resolves identities
//! and knows its partition ([`Engine::resolve_across`]) keeps every prospect on the partition
//! of its canonical id. What must cross goes out as [`XRecord`]s (taken by the caller with
//! [`Engine::take_identity_records`], each with the partition it goes to) and comes in through
//! [`Engine::apply_identity_record`]:
//! - after an event or a link changes a group (its canonical id or its size), each member homed
//!   on another partition gets a `Link` naming it and every other member this shard knows, so
//!   that every home of a member comes to hold the group and agree on its canonical id (the rule
//!   is total; groups only grow; a home that learns nothing new sends nothing, so it stops);
//! - a merge whose canonical id lives elsewhere sends the merged-away prospect's whole state as
//!   a `Transfer` and leaves it a redirect (out of the funnel and the census);
//! - an event whose canonical prospect lives elsewhere goes there as a `Forward`, rewritten to
//!   that prospect, after its links were learnt here;
//! - under `[retention]`, a person that leaves memory here (expired, or evicted at the cap)
//!   frees the redirect records of its other ids held here and sends a `Forget` to each other
//!   home of its identifiers, which prunes them from that shard's map and frees their redirect
//!   records there; a received `Link` or `Transfer` first expires the people it names whose
//!   expiry fell due before it (as an event's links do). Redirect records are not people: the
//!   cap counts the shard's prospects without them.

use super::Engine;
use crate::core::event::Event;
use crate::core::identity::{Change, IdKind, LinkReason};
use crate::core::output::Output;
use crate::core::prospect;
use crate::core::snapshot::Dec;
use crate::core::time::Ts;
use crate::core::xpart::{DEFAULT_MESSAGE_MAX_BYTES, Ident, XRecord, home, transfer_record_limit};

/// A shard's part in cross-partition identity resolution.
#[derive(Clone, Debug, Default)]
pub(super) struct XPart {
    partition: u32,
    partitions: u32,
    /// The producer's `message.max.bytes` a `Transfer` must fit in (0: the default,
    /// [`DEFAULT_MESSAGE_MAX_BYTES`]).
    pub(super) message_max_bytes: usize,
    /// Records to send, each with its partition, until taken.
    out: Vec<(u32, XRecord)>,
    /// Dedup keys and waiting signals left out of transfers since [`Engine::take_transfer_drops`].
    dropped: (u64, u64),
    /// Redirect records held (counted at [`Engine::resolve_across`], then kept up to date):
    /// what the prospect cap leaves out.
    redirects: usize,
    pub(super) stats: XPartStats,
}

/// What cross-partition identity resolution did in a shard (counted since the engine started).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct XPartStats {
    pub links_sent: u64,
    pub links_received: u64,
    /// Events sent to the partition of their canonical prospect.
    pub forwarded: u64,
    pub transfers_sent: u64,
    /// Transfers folded into a prospect here.
    pub transfers_received: u64,
    /// Transfers received again (at-least-once redelivery) and folded no second time.
    pub transfers_duplicate: u64,
    /// Transfers into a person that had left memory ahead of the expiry horizon, caused before
    /// it left: counted as merges, their state gone with the person (`horizon.rs`).
    pub transfers_to_gone: u64,
    /// Records that did not decode, or transfers whose record did not.
    pub invalid: u64,
    /// Older event ids (dedup keys) of transferred prospects left out so the transfer fits the
    /// producer's `message.max.bytes` (the oldest first): a redelivery of one of those events
    /// to the canonical prospect counts again.
    pub dedup_keys_dropped: u64,
    /// Sequence signals waiting for their anchor left out of a transfer for the same reason
    /// (after every older event id, the oldest first): their anchor arriving later fires
    /// nothing for them.
    pub waiting_dropped: u64,
    /// `Forget`s sent: one per other partition homing an identifier of a person that left.
    pub forgets_sent: u64,
    pub forgets_received: u64,
    /// Identifiers pruned from the map by received `Forget`s.
    pub forgotten: u64,
    /// Redirect records freed because their person left memory.
    pub redirects_freed: u64,
}

/// A group as far as propagation cares: its canonical id, how many identifiers it has, and a
/// sum over them of their kind and first-seen time. The last part changes when an identifier
/// is seen earlier than known (a late event) without changing the canonical id here: another
/// home, whose view made another member canonical, must still learn it (first-seen times only
/// move earlier and kinds only from anonymous to known, so propagation still stops).
type Signature = Option<(Option<String>, usize, u64)>;

impl Engine {
    /// Resolves identities across `partitions` partitions, this shard being `partition` (no
    /// effect with `[identity] resolve` off or one partition; none when already so).
    pub fn resolve_across(&mut self, partition: u32, partitions: u32) {
        let same = self.xpart.as_deref().is_some_and(|x| (x.partition, x.partitions) == (partition, partitions));
        if self.identity.is_some() && partitions > 1 && !same {
            let redirects =
                (0..self.store.len()).filter(|&i| self.holds(i) && self.store.fixed(i).has(prospect::REDIRECT)).count();
            self.xpart = Some(Box::new(XPart { partition, partitions, redirects, ..XPart::default() }));
        }
    }

    /// The producer's `message.max.bytes` (key + value) every `Transfer` must fit in
    /// ([`DEFAULT_MESSAGE_MAX_BYTES`] unless set; no effect before [`Engine::resolve_across`]).
    pub fn limit_transfers(&mut self, message_max_bytes: usize) {
        if let Some(x) = self.xpart.as_deref_mut() {
            x.message_max_bytes = message_max_bytes;
        }
    }

    /// Dedup keys and waiting signals left out of transfers since the last call (to count them).
    pub fn take_transfer_drops(&mut self) -> (u64, u64) {
        self.xpart.as_deref_mut().map(|x| std::mem::take(&mut x.dropped)).unwrap_or_default()
    }

    /// The identity records the last calls produced, each with the partition it goes to.
    pub fn take_identity_records(&mut self) -> Vec<(u32, XRecord)> {
        self.xpart.as_deref_mut().map(|x| std::mem::take(&mut x.out)).unwrap_or_default()
    }

    /// What cross-partition identity resolution did here (`None` when it is off).
    pub fn xpart_stats(&self) -> Option<&XPartStats> {
        self.xpart.as_deref().map(|x| &x.stats)
    }

    /// Prospects of this shard's own ids that are redirects (their state was folded into
    /// another prospect); the copies of transferred ids kept as markers are not counted.
    pub fn redirects(&self) -> usize {
        self.iter_ids().filter(|&(ix, id)| self.prospect(ix).has(prospect::REDIRECT) && !self.foreign(id)).count()
    }

    /// A digest of what does not depend on the order in which a shard's inputs and the
    /// identity topic interleave: for each prospect that is not a redirect, its id, stage,
    /// stage entry dates, signal counts, look-back marks and last activity (not the score's
    /// last bits, the dedup memory, timers' flags, the email last given, alerts). Summed over
    /// shards it is what `replay --partitions N` and the service agree on once the identity
    /// topic is drained ([`Engine::digest`] covers everything).
    pub fn resolved_digest(&self) -> u64 {
        let mut buf = Vec::with_capacity(256);
        let mut sum = 0u64;
        for i in (0..self.store.len()).filter(|&i| self.holds(i)) {
            let p = self.store.fixed(i);
            if p.has(prospect::REDIRECT) {
                continue;
            }
            buf.clear();
            buf.extend_from_slice(self.ids.get(crate::core::ids::ProspectIx(i as u32)).as_bytes());
            buf.push(0);
            buf.push(p.stage.0);
            buf.extend_from_slice(&p.last_activity.0.to_le_bytes());
            self.store.stage_times(i).iter().for_each(|v| buf.extend_from_slice(&v.to_le_bytes()));
            self.store.counts(i).iter().for_each(|v| buf.extend_from_slice(&v.to_le_bytes()));
            self.store.marks(i).iter().for_each(|v| buf.extend_from_slice(&v.0.to_le_bytes()));
            sum = sum.wrapping_add(crate::core::ids::hash64(crate::core::ids::SEED_DIGEST, &buf));
        }
        sum
    }

    /// The ids of the redirect records this shard holds (its own ids and the markers of ids
    /// transferred in), sorted.
    pub fn redirect_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .iter_ids()
            .filter(|&(ix, _)| self.prospect(ix).has(prospect::REDIRECT))
            .map(|(_, id)| id.to_string())
            .collect();
        v.sort_unstable();
        v
    }

    pub(super) fn foreign(&self, key: &str) -> bool {
        self.xpart.as_deref().is_some_and(|x| home(key, x.partitions) != x.partition)
    }

    fn signature(&self, key: &str) -> Signature {
        let (members, canonical) = self.identity.as_deref()?.group_members(key)?;
        let seen = members.iter().fold(0u64, |sum, &(k, kind, first_seen)| {
            let id = crate::core::ids::hash64(crate::core::ids::SEED_DIGEST, k.as_bytes());
            let at = (first_seen.0 as u64 ^ u64::from(kind as u8) << 62).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            sum.wrapping_add(id.rotate_left(29) ^ at)
        });
        Some((canonical.map(String::from), members.len(), seen))
    }

    /// A merge that identity resolution decided: here when `into` lives here, else `from`'s
    /// prospect (if it has one here) goes to `into`'s partition.
    pub(super) fn merge_or_transfer(
        &mut self,
        from: &str,
        into: &str,
        reason: LinkReason,
        at: Ts,
        out: &mut Vec<Output>,
    ) {
        if self.foreign(into) {
            self.transfer_out(from, into, reason, at);
        } else {
            self.merge_here(from, into, reason, at, out);
        }
    }

    /// [`Engine::merge`], keeping the count of redirect records (a redirect `into` may take
    /// the person's state).
    fn merge_here(&mut self, from: &str, into: &str, reason: LinkReason, at: Ts, out: &mut Vec<Output>) {
        let redirect = |e: &Engine| e.ids.find(into).is_some_and(|t| e.prospect(t).has(prospect::REDIRECT));
        let was = redirect(self);
        self.merge(from, into, reason, at, out);
        if was && !redirect(self) {
            self.redirect_gone();
        }
    }

    /// [`Engine::apply`] across partitions: links first (they may transfer prospects away),
    /// then the event applies to its canonical prospect here, or is forwarded to its partition.
    pub(super) fn apply_across(&mut self, ev: &Event<'_>, out: &mut Vec<Output>) {
        let before = self.signature(&ev.prospect);
        let canonical = self.resolve_identity(ev, out);
        let target = canonical.as_deref().unwrap_or(&ev.prospect);
        if self.foreign(target) {
            let anonymous = self
                .identity
                .as_deref()
                .and_then(|m| m.group_members(target))
                .and_then(|(m, _)| m.iter().find(|(k, _, _)| *k == target).map(|&(_, kind, _)| kind))
                .is_some_and(|k| k == IdKind::Anonymous);
            let mut event = ev.clone().into_owned();
            event.prospect = target.to_string().into();
            event.anonymous = anonymous;
            event.touch = None;
            let into = target.to_string();
            self.send(XRecord::Forward { into, event });
        } else if let Some(c) = canonical {
            self.identity_stats.routed += 1;
            let routed = Event { prospect: c.into(), ..ev.clone() };
            self.apply_one(&routed, out);
        } else {
            self.apply_one(ev, out);
        }
        let reason = if ev.linked.is_some() { LinkReason::Identify } else { LinkReason::Email };
        self.propagate(&ev.prospect, before, reason, ev.ts);
    }

    /// Applies one record of the identity topic received on this shard's partition.
    pub fn apply_identity_record(&mut self, rec: XRecord, out: &mut Vec<Output>) {
        self.release_freed();
        if self.xpart.is_none() {
            return;
        }
        // Expiries on contact compare with the record's time (`contact_time`).
        self.in_record = true;
        match rec {
            XRecord::Link { ids, reason, ts } => self.link_in(&ids, reason, ts, out),
            XRecord::Forward { event, .. } => self.apply(&event, out),
            XRecord::Transfer { from, generation, .. } if self.transfer_duplicate(&from, generation) => {}
            XRecord::Transfer { from, into, ts, generation, .. }
                if self.transfer_to_gone(&from, &into, ts, generation) => {}
            XRecord::Transfer { from, into, reason, ts, record, generation, .. } => {
                self.transfer_in(&from, &into, reason, ts, generation, &record, out)
            }
            XRecord::Forget { ids, ts } => self.forget_in(&ids, ts),
            XRecord::Progress { partition, watermark, seen, idle, asking } => {
                self.progress_in(crate::core::xpart::Reported { watermark, seen, idle }, partition, asking, out)
            }
        }
        self.in_record = false;
    }

    /// The shard's partition and the partition count (`None`: not resolving across partitions).
    pub(super) fn partition(&self) -> Option<(u32, u32)> {
        self.xpart.as_deref().map(|x| (x.partition, x.partitions))
    }

    /// Queues `rec` for partition `p` (a record not keyed by an identifier: `Progress`).
    pub(super) fn send_to(&mut self, p: u32, rec: XRecord) {
        if let Some(x) = self.xpart.as_deref_mut() {
            x.out.push((p, rec));
        }
    }

    pub(super) fn send(&mut self, rec: XRecord) {
        let Some(x) = self.xpart.as_deref_mut() else { return };
        let p = home(rec.key(), x.partitions);
        match &rec {
            XRecord::Link { .. } => x.stats.links_sent += 1,
            XRecord::Forward { .. } => x.stats.forwarded += 1,
            XRecord::Transfer { .. } => x.stats.transfers_sent += 1,
            XRecord::Forget { .. } => x.stats.forgets_sent += 1,
            XRecord::Progress { .. } => {}
        }
        x.out.push((p, rec));
    }

    /// After the group of `key` changed: a `Link` to each member homed elsewhere, naming it
    /// first, then every other member as this shard knows the group (`key` and the canonical
    /// id among them), so that each home learns the whole group, not only the ids it shares a
    /// record with.
    fn propagate(&mut self, key: &str, before: Signature, reason: LinkReason, ts: Ts) {
        if self.signature(key) == before {
            return;
        }
        let Some(x) = self.xpart.as_deref() else { return };
        let (partition, partitions) = (x.partition, x.partitions);
        let Some((members, _)) = self.identity.as_deref().and_then(|m| m.group_members(key)) else {
            return;
        };
        let ident = |&(k, kind, first_seen): &(&str, IdKind, Ts)| Ident { key: k.to_string(), kind, first_seen };
        let mut records = Vec::new();
        for m in members.iter().filter(|m| m.0 != key && home(m.0, partitions) != partition) {
            let mut ids = vec![ident(m)];
            // `key` right after the receiver's own id, then the rest.
            ids.extend(members.iter().filter(|o| o.0 == key).map(ident));
            ids.extend(members.iter().filter(|o| o.0 != key && o.0 != m.0).map(ident));
            records.push(XRecord::Link { ids, reason, ts });
        }
        for r in records {
            self.send(r);
        }
    }

    /// The email guard across partitions: an event of `prospect` (whose group holds a known id)
    /// with `email`, on a shard that is not the email's home and knows no known id in the
    /// email's group. Linking them here would make this shard's view of the email's person one
    /// the email's home has not decided: if `max_known_ids` refuses the link there, another id
    /// of this shard with the same email would still join it here (refused ids sharing a home
    /// joined one another). So this shard does not link them: it sends the email's home a `Link`
    /// naming the email, then the prospect's group; the home decides with its guards, and an
    /// accepted link comes back as the home's `Link` to every member's home (this one too), a
    /// refused one is its `merge_refused`. Once the email's person (a known id) is known here,
    /// through the home's links, links to it are made here as before (no round trip), the
    /// home's guard deciding again when the link reaches it. Returns whether it asked.
    pub(super) fn ask_email_home(&mut self, prospect: &str, email: &str, ts: Ts) -> bool {
        let Some(map) = self.identity.as_deref() else { return false };
        let key = format!("\0{email}");
        if !self.foreign(&key) {
            return false;
        }
        let own = map.canonical(prospect);
        let person = map.person(email, IdKind::Email);
        if map.kind(own) != Some(IdKind::Known) || person.is_some_and(|c| map.kind(c) == Some(IdKind::Known)) {
            return false;
        }
        let first_seen = map.group_members(&key).and_then(|(m, _)| m.iter().find(|i| i.0 == key).map(|i| i.2));
        let ident = |&(k, kind, first_seen): &(&str, IdKind, Ts)| Ident { key: k.to_string(), kind, first_seen };
        let mut ids = vec![Ident { key, kind: IdKind::Email, first_seen: first_seen.map_or(ts, |f| f.min(ts)) }];
        if let Some((members, _)) = map.group_members(prospect) {
            ids.extend(members.iter().filter(|m| m.0 == prospect).map(ident));
            ids.extend(members.iter().filter(|m| m.0 != prospect).map(ident));
        }
        if ids.len() < 2 {
            return false;
        }
        self.send(XRecord::Link { ids, reason: LinkReason::Email, ts });
        true
    }

    fn link_in(&mut self, ids: &[Ident], reason: LinkReason, ts: Ts, out: &mut Vec<Output>) {
        if let Some(x) = self.xpart.as_deref_mut() {
            x.stats.links_received += 1;
        }
        let (Some(first), Some(limits)) = (ids.first(), self.journey.identity) else { return };
        let raw = |i: &Ident| match i.kind {
            IdKind::Email => i.key.strip_prefix('\0').unwrap_or(&i.key).to_string(),
            IdKind::Anonymous | IdKind::Known => i.key.clone(),
        };
        let named: Vec<(String, IdKind)> = ids.iter().map(|i| (raw(i), i.kind)).collect();
        self.expire_people(&named, ts, out);
        let before = self.signature(&first.key);
        let mut changes = Vec::new();
        if let Some(map) = self.identity.as_deref_mut() {
            for i in ids {
                map.observe(&raw(i), i.kind, i.first_seen, &mut changes);
            }
            // Each identifier was observed above with its own first-seen time; the link's time
            // is not a sighting of either (`Ts::NONE`: observe nothing more).
            for i in &ids[1..] {
                map.link((&raw(first), first.kind), (&raw(i), i.kind), Ts::NONE, reason, &limits, &mut changes);
            }
        }
        for c in changes {
            match c {
                Change::Merged { from, into, reason } => self.merge_or_transfer(&from, &into, reason, ts, out),
                Change::Refused { ids, reason } => {
                    self.identity_stats.refused += 1;
                    out.push(Output::MergeRefused { ids: Box::new(ids), reason, at: ts });
                }
            }
        }
        self.propagate(&first.key, before, reason, ts);
    }

    /// `from`'s prospect leaves this shard for `into`'s partition: its record goes out as a
    /// `Transfer` of its next generation, and it stays here as a redirect holding that
    /// generation (`Prospect::handoff`), out of the funnel.
    fn transfer_out(&mut self, from: &str, into: &str, reason: LinkReason, at: Ts) {
        let Some(f) = self.ids.find(from) else { return };
        if self.prospect(f).has(prospect::REDIRECT) {
            return;
        }
        // Above any generation of `from` that left memory here (a receiver may still keep it).
        let generation = self.prospect(f).handoff().max(self.kept_handoff(from)) / 2 + 1;
        let record = self.transfer_record(f, from, into);
        let journey = std::sync::Arc::clone(&self.journey);
        self.count_in_funnel(&journey, f.0 as usize, false);
        if self.extras.get(&f.0).is_some_and(|x| !x.alerted.is_empty()) {
            self.funnel.hot_prospects = self.funnel.hot_prospects.saturating_sub(1);
        }
        self.make_redirect(f);
        self.store.fixed_mut(f.0 as usize).set_handoff(generation.saturating_mul(2));
        let Some(source) = self.xpart.as_deref().map(|x| x.partition) else { return };
        let generation = u32::from(generation);
        self.send(XRecord::Transfer {
            from: from.into(),
            into: into.into(),
            reason,
            ts: at,
            source,
            record,
            generation,
        });
    }

    /// `from`'s changelog record for a transfer into `into`, within the producer's
    /// `message.max.bytes`: a record that would not fit leaves out its oldest older event ids
    /// (dedup keys beyond the ring of 4 recent ones), then, if that is not enough, its oldest
    /// waiting sequence signals; both counted. The rest (fixed part, per-journey arrays, email,
    /// matched rules, first-shown times) is bounded by the journey and always goes.
    fn transfer_record(&mut self, f: crate::core::ids::ProspectIx, from: &str, into: &str) -> Vec<u8> {
        let mut record = Vec::new();
        self.encode_changelog_record(f, &mut record);
        let max = self.xpart.as_deref().map_or(0, |x| x.message_max_bytes);
        let limit = transfer_record_limit(if max == 0 { DEFAULT_MESSAGE_MAX_BYTES } else { max }, from, into);
        if record.len() <= limit {
            return record;
        }
        let Some(mut live) = self.live_extras(f).map(std::borrow::Cow::into_owned) else { return record };
        let mut over = record.len() - limit;
        // Newest first, so the oldest are cut from the end.
        live.seen.sort_unstable_by_key(|&(k, t)| std::cmp::Reverse((t, k)));
        let keys = over.div_ceil(16).min(live.seen.len());
        live.seen.truncate(live.seen.len() - keys);
        over = over.saturating_sub(keys * 16);
        let mut waiting = 0;
        live.waiting.sort_by(|a, b| (b.1, &b.2, b.0).cmp(&(a.1, &a.2, a.0)));
        while over > 0 {
            let Some((_, _, id)) = live.waiting.pop() else { break };
            over = over.saturating_sub(9 + if id.len() < 255 { 1 } else { 5 } + id.len());
            waiting += 1;
        }
        live.seen.sort_unstable();
        live.waiting.sort_unstable();
        // The prospect leaves this shard (a redirect next): what it keeps of its extras is what
        // it sends.
        if live.is_empty() {
            self.extras.remove(&f.0);
        } else {
            self.extras.insert(f.0, live);
        }
        if let Some(x) = self.xpart.as_deref_mut() {
            x.stats.dedup_keys_dropped += keys as u64;
            x.stats.waiting_dropped += waiting;
            x.dropped.0 += keys as u64;
            x.dropped.1 += waiting;
        }
        record.clear();
        self.encode_changelog_record(f, &mut record);
        record
    }

    /// Folds a transferred prospect into `into` (or, if `into` was folded further since, sends
    /// it on). `from` stays here as a redirect record holding the generation folded
    /// (`Prospect::handoff` `2g + 1`): a transfer of a generation no later than that is a
    /// redelivery (the topic is at-least-once; a sender that crashed before its checkpoint
    /// sends it again, with the same generation, since that is state too) and folds nothing;
    /// a later one (the id was canonical again in between and is transferred again) folds.
    /// Generation 0 (a record of an earlier build) is a redelivery when any redirect for `from`
    /// exists. That marker is prospect state, so it is checkpointed and restored with the shard
    /// like any record; once retention frees it, its generation is kept by id for a span
    /// ([`Engine::kept_handoffs`]) and still counts here.
    #[allow(clippy::too_many_arguments)]
    fn transfer_in(
        &mut self,
        from: &str,
        into: &str,
        reason: LinkReason,
        ts: Ts,
        generation: u32,
        record: &[u8],
        out: &mut Vec<Output>,
    ) {
        // Duplicates were dropped before (`transfer_duplicate`).
        let held = self.ids.find(from).map(|f| self.prospect(f));
        let folded = u32::from(held.map_or(0, |p| p.handoff()).max(self.kept_handoff(from)));
        self.expire_people(&[(into.to_string(), IdKind::Known)], ts, out);
        let target = self.identity.as_deref().map_or(into, |m| m.canonical(into)).to_string();
        if self.foreign(&target) {
            // `into` was folded further since: the state follows it.
            let Some(source) = self.xpart.as_deref().map(|x| x.partition) else { return };
            let record = record.to_vec();
            let into = target;
            return self.send(XRecord::Transfer { from: from.into(), into, reason, ts, source, record, generation });
        }
        let handoff = u16::try_from(2 * u64::from(generation) + 1).unwrap_or(u16::MAX).max(folded as u16);
        // What `from` holds here now (the expiry above may have freed its redirect record):
        // `Some(true)` a redirect record, `Some(false)` a live prospect.
        let held = self.ids.find(from).map(|f| self.prospect(f).has(prospect::REDIRECT));
        if held == Some(false) {
            // `from` is live here: its canonical id flipped back to it, or onto an id of this
            // partition, while its earlier state was on its way. That state folds into the
            // person like any other.
            return self.fold_returning(from, &target, reason, ts, handoff, record, out);
        }
        let rec = match self.decode_changelog_record(&mut Dec::new(record)) {
            Ok(r) => r,
            Err(_) => {
                if let Some(x) = self.xpart.as_deref_mut() {
                    x.stats.invalid += 1;
                }
                return;
            }
        };
        let Ok(ix) = self.install_keeping_freed(from, rec) else {
            self.identity_stats.refused += 1;
            return;
        };
        if held == Some(true) {
            // `from`'s redirect record is a prospect again (`merge` below may make it one anew).
            self.redirect_gone();
        }
        // The generation folded: `merge` keeps `from` as a redirect that holds it (`retire`).
        self.store.fixed_mut(ix.0 as usize).set_handoff(handoff);
        self.count_transferred_in(ix);
        if target == from {
            // The person comes back whole to its own id (a redirect here until now), anonymous
            // as this shard's map says.
            let anonymous = self.id_is_anonymous(from, self.store.fixed(ix.0 as usize).is_anonymous());
            self.set_anonymous(ix, anonymous);
            // Past its due, it leaves at once, as a folded person does below.
            self.expire_past_watermark(from, out);
            return;
        }
        self.merge_here(from, &target, reason, ts, out);
        // A person whose expiry fell due before the watermark would have left already (a
        // transfer sent again by a restored sender after the person expired here, its marker
        // freed with it): it leaves again at once, with the marker, rather than stay.
        if self.expire_past_watermark(&target, out) {
            self.free_redirect(from);
        }
    }

    /// Whether a transfer of `from` at `generation` is a redelivery, counted as a duplicate: a
    /// generation no later than the one folded here (`from`'s record's handoff `2g + 1`, or the
    /// one kept when it left memory, or when its transfer was taken as a merge into a person
    /// gone: [`Engine::transfer_to_gone`]). Generation 0 (a record of an earlier build) is a
    /// redelivery when any redirect for `from` exists.
    fn transfer_duplicate(&mut self, from: &str, generation: u32) -> bool {
        let held = self.ids.find(from).map(|f| self.prospect(f));
        let kept = self.kept_handoff(from);
        let folded = u32::from(held.map_or(0, |p| p.handoff()).max(kept));
        let duplicate = match generation {
            0 => held.is_some_and(|p| p.has(prospect::REDIRECT)),
            g => (held.is_some() || kept != 0) && 2 * u64::from(g) < u64::from(folded),
        };
        if duplicate && let Some(x) = self.xpart.as_deref_mut() {
            x.stats.transfers_duplicate += 1;
        }
        duplicate
    }

    /// Under `[retention]`, person `id`, just given transferred state, leaves memory at once
    /// when its expiry fell due before the watermark (the shard's timers have passed it: it
    /// would have left already). Returns whether it left.
    fn expire_past_watermark(&mut self, id: &str, out: &mut Vec<Output>) -> bool {
        let watermark = self.watermark;
        !self.journey.retention.after.is_empty()
            && !watermark.is_none()
            && self.expire_if_due(id, watermark, out).is_none()
    }

    /// A transfer received here (installed at `ix`) counted in: the funnel, hot prospects,
    /// the stats.
    fn count_transferred_in(&mut self, ix: crate::core::ids::ProspectIx) {
        let journey = std::sync::Arc::clone(&self.journey);
        self.count_in_funnel(&journey, ix.0 as usize, true);
        if self.extras.get(&ix.0).is_some_and(|x| !x.alerted.is_empty()) {
            self.funnel.hot_prospects += 1;
        }
        if let Some(x) = self.xpart.as_deref_mut() {
            x.stats.transfers_received += 1;
        }
    }

    /// A transferred state of `from` arriving while `from` holds a live prospect here: the
    /// state is installed under a scratch id (no prospect id holds a control character), folded
    /// into `target` with `merge`'s semantics (emitted as a merge of `from`), and `from` keeps
    /// the generation folded.
    #[allow(clippy::too_many_arguments)]
    fn fold_returning(
        &mut self,
        from: &str,
        target: &str,
        reason: LinkReason,
        ts: Ts,
        handoff: u16,
        record: &[u8],
        out: &mut Vec<Output>,
    ) {
        const SCRATCH: &str = "\0transfer";
        let Some(f) = self.ids.find(from) else { return };
        let Ok(rec) = self.decode_changelog_record(&mut Dec::new(record)) else {
            if let Some(x) = self.xpart.as_deref_mut() {
                x.stats.invalid += 1;
            }
            return;
        };
        let Ok(ix) = self.install_keeping_freed(SCRATCH, rec) else {
            self.identity_stats.refused += 1;
            return;
        };
        self.store.fixed_mut(ix.0 as usize).set_handoff(0);
        self.count_transferred_in(ix);
        let emitted = out.len();
        self.merge_here(SCRATCH, target, reason, ts, out);
        // The outputs name `from`, as a transfer folded under its own id would have.
        let scratch_event = format!("merge:{SCRATCH}");
        for o in &mut out[emitted..] {
            match o {
                Output::ProspectMerged { from: m, .. } if *m == ix => *m = f,
                Output::HotLead(h) if h.event_id == scratch_event => {
                    let rules: Vec<&str> = (0..self.journey.hot_rules.len())
                        .filter(|r| h.rules & (1 << r) != 0)
                        .map(|r| self.journey.hot_rules[r].name.as_str())
                        .collect();
                    h.event_id = format!("merge:{from}");
                    h.alert_id = crate::core::ids::alert_id(self.ids.get(h.prospect), &rules.join("+"), &h.event_id);
                }
                Output::HotLeadSuppressed(h) if h.event_id == scratch_event => h.event_id = format!("merge:{from}"),
                _ => {}
            }
        }
        self.removed_ids.retain(|k| &**k != SCRATCH);
        let p = self.store.fixed_mut(f.0 as usize);
        p.set_handoff(p.handoff().max(handoff));
        self.mark_changed(f.0);
    }

    /// `from` of a merge leaves memory (`Engine::free`), unless cross-partition resolution is
    /// on and the id has a transfer history (`Prospect::handoff`): then it stays as a redirect
    /// that keeps it, so a later transfer of the id gets the next generation and a redelivered
    /// one is still known.
    pub(super) fn retire(&mut self, f: crate::core::ids::ProspectIx) {
        if self.xpart.is_some() && self.prospect(f).handoff() != 0 {
            self.make_redirect(f);
        } else {
            self.free(f);
        }
    }

    /// An event applies to an id whose record is a redirect: the id is canonical again (a late
    /// sighting made it so). The record becomes a new prospect, as for an id never seen
    /// (keeping only its transfer history); the person's state, wherever it is, comes back by
    /// a transfer and folds into it.
    pub(super) fn revive(&mut self, ix: crate::core::ids::ProspectIx, at: Ts) {
        let i = ix.0 as usize;
        let handoff = self.store.fixed(i).handoff();
        if self.store.fixed(i).has(prospect::REDIRECT) {
            self.redirect_gone();
        }
        let mut p = crate::core::prospect::Prospect::new(self.journey.first_stage(), at);
        p.set_handoff(handoff);
        self.store.put(i, p);
        if self.emails.get(&ix.0).is_some() {
            self.emails.remove(&ix.0);
            self.mark_email_changed(ix.0);
        }
        self.clear_side_state(ix);
        self.mark_changed(ix.0);
    }

    /// Turns prospect `f` into a redirect record: no email, extras, first-shown times or
    /// timers; out of the census and the funnel (the caller moved its counts).
    fn make_redirect(&mut self, f: crate::core::ids::ProspectIx) {
        if self.emails.get(&f.0).is_some() {
            self.emails.remove(&f.0);
            self.mark_email_changed(f.0);
        }
        self.extras.remove(&f.0);
        self.shown.clear(f.0 as usize);
        let p = self.store.fixed_mut(f.0 as usize);
        let was = p.has(prospect::REDIRECT);
        p.flags = prospect::REDIRECT;
        p.ghost_due = Ts::NONE;
        p.stall_due = Ts::NONE;
        p.hot_until = Ts::NONE;
        self.quiet.remove(&f.0);
        self.mark_changed(f.0);
        if !was && let Some(x) = self.xpart.as_deref_mut() {
            x.redirects += 1;
        }
    }

    /// Redirect records held here (out of the prospect cap); 0 unless across partitions.
    pub(super) fn redirects_held(&self) -> usize {
        self.xpart.as_deref().map_or(0, |x| x.redirects)
    }

    /// A redirect record left (freed, or turned back into a prospect).
    pub(super) fn redirect_gone(&mut self) {
        if let Some(x) = self.xpart.as_deref_mut() {
            x.redirects = x.redirects.saturating_sub(1);
        }
    }

    /// Under `[retention]`, before a received record's links or fold: each person it names
    /// (its canonical id here, else the id itself) whose expiry fell due before `ts` leaves
    /// memory first, as before an event's links (`expire_named`).
    fn expire_people(&mut self, named: &[(String, IdKind)], ts: Ts, out: &mut Vec<Output>) {
        if self.journey.retention.after.is_empty() {
            return;
        }
        let Some(map) = self.identity.as_deref() else { return };
        let people: Vec<String> = named
            .iter()
            .filter_map(|(id, kind)| match map.person(id, *kind) {
                Some(c) => Some(c.to_string()),
                None => (*kind != IdKind::Email).then(|| id.clone()),
            })
            .collect();
        for id in people {
            self.expire_if_due(&id, ts, out);
        }
    }

    /// Person `id` (its group's canonical id) leaves memory here at `at` (called by `expire`
    /// before the map prunes the group): the redirect records of its other ids held here are
    /// freed, and each other partition homing one of its identifiers gets a `Forget` naming
    /// those first, then the rest of the group.
    pub(super) fn forget_across(&mut self, id: &str, at: Ts) {
        let Some(x) = self.xpart.as_deref() else { return };
        let (partition, partitions) = (x.partition, x.partitions);
        let Some((members, canonical)) = self.identity.as_deref().and_then(|m| m.group_members(id)) else {
            return;
        };
        if canonical != Some(id) {
            return;
        }
        let keys: Vec<(String, IdKind)> = members.iter().map(|&(k, kind, _)| (k.to_string(), kind)).collect();
        let mut homes: std::collections::BTreeMap<u32, Vec<String>> = std::collections::BTreeMap::new();
        for (k, _) in &keys {
            let p = home(k, partitions);
            if p != partition {
                homes.entry(p).or_default().push(k.clone());
            }
        }
        for (k, kind) in &keys {
            if *kind != IdKind::Email && k != id {
                self.free_redirect(k);
            }
        }
        for (_, mut ids) in homes {
            let rest: Vec<String> = keys.iter().map(|(k, _)| k).filter(|k| !ids.contains(k)).cloned().collect();
            ids.extend(rest);
            self.send(XRecord::Forget { ids, ts: at });
        }
    }

    /// A received `Forget`: the identifiers it names that this shard's map holds, first seen no
    /// later than its time, leave the map (with tombstones), and the redirect records of those
    /// no longer in the map are freed. A group whose canonical prospect is alive here is left
    /// alone (that person did not leave). A second delivery finds nothing left to forget.
    fn forget_in(&mut self, ids: &[String], ts: Ts) {
        let Some(map) = self.identity.as_deref() else { return };
        let alive = |k: &str| {
            map.group_members(k)
                .and_then(|(_, c)| c)
                .and_then(|c| self.ids.find(c))
                .is_some_and(|ix| !self.prospect(ix).has(prospect::REDIRECT))
        };
        let keys: Vec<String> = ids.iter().filter(|k| !alive(k)).cloned().collect();
        let forgotten = self.identity.as_deref_mut().map_or(0, |m| m.forget(&keys, ts));
        for k in keys.iter().filter(|k| !k.starts_with('\0')) {
            if !self.identity.as_deref().is_some_and(|m| m.has_key(k)) {
                self.free_redirect(k);
            }
        }
        if let Some(x) = self.xpart.as_deref_mut() {
            x.stats.forgets_received += 1;
            x.stats.forgotten += forgotten as u64;
        }
    }

    /// Frees the redirect record of `id`, if this shard holds one (its transfer generation
    /// kept aside: [`Engine::keep_handoff`]).
    fn free_redirect(&mut self, id: &str) {
        let Some(ix) = self.ids.find(id) else { return };
        if !self.prospect(ix).has(prospect::REDIRECT) {
            return;
        }
        self.keep_handoff(ix);
        self.free(ix);
        if let Some(x) = self.xpart.as_deref_mut() {
            x.stats.redirects_freed += 1;
        }
    }
}
