//! Identity resolution's pure model: which identifiers (anonymous ids, known ids, emails) are one
//! person, and which id is that person's canonical prospect. No engine state: the engine (or any
//! caller) tells it what events said, and it answers with [`Change`]s as data, the merges to
//! perform and the links refused.
//!
//! Rules:
//! - Identifiers are prospect ids, each *known* (a `userId`, a canonical or CRM `prospect_id`)
//!   or *anonymous* (a Segment `anonymousId`, an alias's `previousId` not otherwise known), and
//!   emails (never canonical: a person needs a prospect id). An id once seen as known stays known.
//! - A link joins two groups. Each group's canonical id is its best id: a known id over an
//!   anonymous one; between two of a kind, the one first seen (smallest event time it was seen
//!   at), then the smaller id bytes. So without refusals, the groups and their canonical ids
//!   depend only on the set of links and observations, not on their order.
//! - Guards ([`IdentityLimits`]): a link that would give one group more known ids or more
//!   anonymous ids than the limits is refused ([`Change::Refused`]), never silently; the two
//!   groups stay apart. Which link is refused depends on arrival order (the first ones fit).
//! - What is persisted: each identifier with its kind and first-seen time, and the accepted
//!   links (a spanning forest: one per join, so a group of n identifiers has n − 1). Restoring
//!   replays them without the guards and gives the same groups and canonical ids.
//! - A group leaves the map whole ([`IdentityMap::prune`]: its person left memory): its
//!   identifiers and links go, each with a changelog tombstone; an id seen again later starts
//!   a new identifier. Removed nodes stay as empty slots until they are half of the map, then
//!   the map is compacted (indexes renumbered; nothing outside the map holds them).

/// Tables keyed by client-chosen strings: foldhash under a random key per map (as the prospect
/// interner's table), so collisions cannot be chosen offline; results never depend on the key.
type HashMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;

use super::engine::snapshot::{Dec, Enc, StateError};
use super::time::Ts;

/// What an identifier is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdKind {
    Anonymous = 0,
    Known = 1,
    Email = 2,
}

impl IdKind {
    fn from_u8(b: u8) -> Option<IdKind> {
        match b {
            0 => Some(IdKind::Anonymous),
            1 => Some(IdKind::Known),
            2 => Some(IdKind::Email),
            _ => None,
        }
    }
}

/// Why two identifiers were linked (the `reason` of a merge).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkReason {
    /// A Segment call naming both a `userId` and an `anonymousId` (`identify`, or any call after
    /// signup).
    Identify,
    /// A Segment `alias` call (`previousId` → `userId`).
    Alias,
    /// An event carrying an id and an email: every id with that email.
    Email,
    /// No new link: an identifier seen earlier than before (or seen as known) made another id
    /// of its group the canonical one.
    CanonicalRule,
}

impl LinkReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkReason::Identify => "identify",
            LinkReason::Alias => "alias",
            LinkReason::Email => "email",
            LinkReason::CanonicalRule => "canonical_rule",
        }
    }

    fn from_u8(b: u8) -> Option<LinkReason> {
        [LinkReason::Identify, LinkReason::Alias, LinkReason::Email, LinkReason::CanonicalRule].get(b as usize).copied()
    }
}

/// Why a link was refused (bounded labels, for metrics and the `merge_refused` output).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    /// The group would hold more known ids than `max_known_ids` (one email shared by many
    /// users: a team inbox, a test address).
    TooManyKnownIds,
    /// The group would hold more anonymous ids than `max_anonymous_ids` (a shared device, a
    /// tracking bug reusing one id).
    TooManyAnonymousIds,
}

impl RefuseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::TooManyKnownIds => "too_many_known_ids",
            RefuseReason::TooManyAnonymousIds => "too_many_anonymous_ids",
        }
    }
}

/// The guards: how large one person may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityLimits {
    /// Known ids in one group (a web `userId` and a CRM contact id are two).
    pub max_known_ids: u32,
    /// Anonymous ids (devices, browsers) in one group.
    pub max_anonymous_ids: u32,
}

impl Default for IdentityLimits {
    fn default() -> IdentityLimits {
        IdentityLimits { max_known_ids: 4, max_anonymous_ids: 50 }
    }
}

/// What a call changed. Emails never appear in it: `Refused` names the ids on both sides (for an
/// email link, the id and the other group's canonical id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `from` was a group's canonical id and no longer is: fold its prospect into `into`'s.
    Merged { from: String, into: String, reason: LinkReason },
    /// The link was refused; the groups stay apart.
    Refused { ids: [String; 2], reason: RefuseReason },
}

#[derive(Clone, Debug)]
struct Node {
    key: Box<str>,
    kind: IdKind,
    first_seen: Ts,
    parent: u32,
}

/// A removed link's index while the map is compacted.
const REMOVED: u32 = u32::MAX;

impl Node {
    /// Pruned, not yet compacted away: its key is empty (no identifier has an empty key).
    fn gone(&self) -> bool {
        self.key.is_empty()
    }
}

/// Per group, kept at its root.
#[derive(Clone, Debug, Default)]
struct Group {
    members: Vec<u32>,
    known: u32,
    anonymous: u32,
    /// The canonical id's node; `None` for a group of emails only.
    canonical: Option<u32>,
    /// The group's accepted links (indexes into `IdentityMap::links`).
    links: Vec<u32>,
}

/// The identity map of one shard. See the module docs for its rules.
#[derive(Clone, Debug, Default)]
pub struct IdentityMap {
    nodes: Vec<Node>,
    index: HashMap<Box<str>, u32>,
    /// Groups by root node (only roots of groups of two or more identifiers).
    groups: HashMap<u32, Group>,
    /// Accepted links, in acceptance order.
    links: Vec<(u32, u32, LinkReason)>,
    /// Where an email's key is built (no allocation per lookup).
    scratch: String,
    /// Identifiers added or changed (kind, first seen) and links accepted since the last
    /// [`IdentityMap::take_changes`], for the changelog (node and link indexes).
    dirty: Changed,
    /// What [`IdentityMap::take_changes`] took, carried by the next capture to the changelog.
    taken: Changed,
    /// What changed since the last [`IdentityMap::capture_into`], for an incremental one.
    cap: CaptureChanges,
    /// Pruned nodes not yet compacted away.
    removed: u32,
    /// A changelog read removed identifiers: groups are rebuilt from the live links when it
    /// ends ([`IdentityMap::finish_restore`]).
    stale: bool,
}

/// Nodes whose kind, first-seen time or parent changed, and group roots whose group changed or
/// went, since the last capture (appended nodes and links are found by length); `full` when
/// the lists grew past the map itself (the next capture copies everything).
#[derive(Clone, Debug, Default)]
struct CaptureChanges {
    nodes: Vec<u32>,
    groups: Vec<u32>,
    full: bool,
}

/// Node and link indexes changed (see [`IdentityMap`]), and the changelog keys of identifiers
/// and links pruned (tombstones).
#[derive(Clone, Debug, Default)]
struct Changed {
    nodes: Vec<u32>,
    links: Vec<u32>,
    gone: Vec<String>,
}

impl Changed {
    fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.links.is_empty() && self.gone.is_empty()
    }

    fn append(&mut self, other: &mut Changed) {
        self.nodes.append(&mut other.nodes);
        self.links.append(&mut other.links);
        self.gone.append(&mut other.gone);
    }
}

/// A group's members (map key, kind, first seen) and its canonical id
/// ([`IdentityMap::group_members`]).
pub type GroupMembers<'a> = (Vec<(&'a str, IdKind, Ts)>, Option<&'a str>);

/// Changelog key prefix of an identifier's record (then its map key: the id, or NUL + email).
pub const ID_RECORD: &str = "\0id/";
/// Changelog key prefix of a link's record (then `<byte length of a's key>:`, a's key, b's key).
pub const LINK_RECORD: &str = "\0ln/";

/// One identity changelog record, decoded from its key and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityRecord {
    /// An identifier (its map key: an id, or NUL + email), kind and first seen.
    Id { key: String, kind: IdKind, first_seen: Ts },
    /// An accepted link between two identifiers (map keys).
    Link { a: String, b: String, reason: LinkReason },
}

impl IdentityRecord {
    /// Reads a record of the changelog; `None` when `key` is not an identity record's.
    pub fn read(key: &str, value: &[u8]) -> Option<Result<IdentityRecord, StateError>> {
        let bad = |what| Some(Err(StateError::Invalid { what, at: 0 }));
        if let Some(k) = key.strip_prefix(ID_RECORD) {
            let mut d = Dec::new(value);
            let r = (|| {
                if d.u8("identity record tag")? != b'I' {
                    return Err(StateError::Invalid { what: "identity record tag", at: 0 });
                }
                let kind = IdKind::from_u8(d.u8("identity kind")?)
                    .ok_or(StateError::Invalid { what: "identity kind", at: 1 })?;
                Ok(IdentityRecord::Id { key: k.to_string(), kind, first_seen: d.ts("identity first seen")? })
            })();
            return Some(r);
        }
        let k = key.strip_prefix(LINK_RECORD)?;
        let Some((len, rest)) = k.split_once(':') else { return bad("identity link key") };
        let Ok(len) = len.parse::<usize>() else { return bad("identity link key") };
        if !rest.is_char_boundary(len.min(rest.len())) || len > rest.len() {
            return bad("identity link key");
        }
        let (a, b) = rest.split_at(len);
        match value {
            [b'L', r] => match LinkReason::from_u8(*r) {
                Some(reason) => Some(Ok(IdentityRecord::Link { a: a.to_string(), b: b.to_string(), reason })),
                None => bad("identity link reason"),
            },
            _ => bad("identity link record"),
        }
    }
}

/// The map key of an identifier, in `buf` for an email: emails are prefixed with a NUL byte,
/// which no id may contain (the decoder refuses control characters in ids).
fn key<'k>(id: &'k str, kind: IdKind, buf: &'k mut String) -> &'k str {
    match kind {
        IdKind::Email => {
            buf.clear();
            buf.push('\0');
            buf.push_str(id);
            buf
        }
        IdKind::Anonymous | IdKind::Known => id,
    }
}

impl IdentityMap {
    pub fn new() -> IdentityMap {
        IdentityMap::default()
    }

    /// Identifiers known to the map.
    pub fn len(&self) -> usize {
        self.nodes.len() - self.removed as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Accepted links (of identifiers still in the map).
    pub fn links(&self) -> usize {
        self.links.iter().filter(|l| self.live_link(l)).count()
    }

    fn live_link(&self, &(a, b, _): &(u32, u32, LinkReason)) -> bool {
        !self.nodes[a as usize].gone() && !self.nodes[b as usize].gone()
    }

    /// Heap bytes held (capacity; keys counted twice: in the node and the index).
    pub fn heap_bytes(&self) -> usize {
        let keys: usize = self.nodes.iter().map(|n| n.key.len()).sum();
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.index.capacity() * (std::mem::size_of::<(Box<str>, u32)>() + 1)
            + 2 * keys
            + self.groups.capacity() * (std::mem::size_of::<(u32, Group)>() + 1)
            + self.groups.values().map(|g| g.members.capacity() * 4).sum::<usize>()
            + self.links.capacity() * std::mem::size_of::<(u32, u32, LinkReason)>()
    }

    fn root(&self, mut n: u32) -> u32 {
        while self.nodes[n as usize].parent != n {
            n = self.nodes[n as usize].parent;
        }
        n
    }

    /// Ranks an id node for the canonical rule: higher wins.
    fn better(&self, a: u32, b: u32) -> u32 {
        let (x, y) = (&self.nodes[a as usize], &self.nodes[b as usize]);
        use std::cmp::Reverse;
        let rank = (x.kind == IdKind::Known, Reverse(x.first_seen.0), Reverse(&x.key));
        if rank >= (y.kind == IdKind::Known, Reverse(y.first_seen.0), Reverse(&y.key)) { a } else { b }
    }

    fn group(&self, root: u32) -> Group {
        self.groups.get(&root).cloned().unwrap_or_else(|| {
            let n = &self.nodes[root as usize];
            Group {
                members: vec![root],
                known: u32::from(n.kind == IdKind::Known),
                anonymous: u32::from(n.kind == IdKind::Anonymous),
                canonical: (n.kind != IdKind::Email).then_some(root),
                links: Vec::new(),
            }
        })
    }

    /// The canonical id of the group of `id` (an id, not an email): `id` itself when it is
    /// linked to nothing or unknown.
    pub fn canonical<'a>(&'a self, id: &'a str) -> &'a str {
        let Some(&n) = self.index.get(id) else { return id };
        let root = self.root(n);
        match self.groups.get(&root).and_then(|g| g.canonical) {
            Some(c) => &self.nodes[c as usize].key,
            None => id,
        }
    }

    /// The canonical id of the group of an identifier of any kind (an email too), if the map
    /// holds it and its group has an id.
    pub fn person(&self, id: &str, kind: IdKind) -> Option<&str> {
        let mut buf = String::new();
        let &n = self.index.get(key(id, kind, &mut buf))?;
        let c = match self.groups.get(&self.root(n)) {
            Some(g) => g.canonical?,
            None if kind == IdKind::Email => return None,
            None => n,
        };
        Some(&self.nodes[c as usize].key)
    }

    /// The kind of id `id` (an id, not an email) as the map holds it: known once it was seen
    /// known.
    pub fn kind(&self, id: &str) -> Option<IdKind> {
        self.index.get(id).map(|&n| self.nodes[n as usize].kind)
    }

    /// The canonical id of the group of node `n` (as [`IdentityMap::observe`] returns it).
    pub fn canonical_of(&self, n: u32) -> &str {
        let root = self.root(n);
        let c = self.groups.get(&root).and_then(|g| g.canonical).unwrap_or(n);
        &self.nodes[c as usize].key
    }

    /// The ids (not emails) of `id`'s group, sorted; just `id` when it is linked to nothing.
    pub fn linked_ids<'a>(&'a self, id: &'a str) -> Vec<&'a str> {
        let Some(&n) = self.index.get(id) else { return vec![id] };
        let g = self.group(self.root(n));
        let mut ids: Vec<&str> = g
            .members
            .iter()
            .map(|&m| &self.nodes[m as usize])
            .filter(|n| n.kind != IdKind::Email)
            .map(|n| &*n.key)
            .collect();
        ids.sort_unstable();
        ids
    }

    fn node(&mut self, k: &str, kind: IdKind, ts: Ts) -> u32 {
        if let Some(&n) = self.index.get(k) {
            return n;
        }
        let n = self.nodes.len() as u32;
        self.nodes.push(Node { key: k.into(), kind, first_seen: ts, parent: n });
        self.index.insert(k.into(), n);
        self.dirty_node(n);
        n
    }

    /// Node `n` changed for the changelog (the list is kept free of repeats past a size).
    fn dirty_node(&mut self, n: u32) {
        self.dirty.nodes.push(n);
        if self.dirty.nodes.len() > 2 * self.nodes.len() + 1024 {
            self.dirty.nodes.sort_unstable();
            self.dirty.nodes.dedup();
        }
    }

    /// Node `n` (and the group at `root`, if any) changed since the last capture.
    fn captured_changed(&mut self, n: Option<u32>, root: Option<u32>) {
        let cap = &mut self.cap;
        if cap.full {
            return;
        }
        cap.nodes.extend(n);
        cap.groups.extend(root);
        if cap.nodes.len() + cap.groups.len() > self.nodes.len() + 1024 {
            *cap = CaptureChanges { full: true, ..CaptureChanges::default() };
        }
    }

    /// Records that `id` was seen at `ts` as `kind`. An id seen earlier than before, or seen as
    /// known for the first time, may become its group's canonical id: then a `Merged` with
    /// reason [`LinkReason::CanonicalRule`] goes to `out`.
    pub fn observe(&mut self, id: &str, kind: IdKind, ts: Ts, out: &mut Vec<Change>) -> u32 {
        let mut buf = std::mem::take(&mut self.scratch);
        let n = self.node(key(id, kind, &mut buf), kind, ts);
        self.scratch = buf;
        let node = &mut self.nodes[n as usize];
        let earlier = !ts.is_none() && (node.first_seen.is_none() || ts < node.first_seen);
        let upgraded = kind == IdKind::Known && node.kind == IdKind::Anonymous;
        if !earlier && !upgraded {
            return n;
        }
        if earlier {
            node.first_seen = ts;
        }
        self.dirty_node(n);
        let root = self.root(n);
        self.captured_changed(Some(n), Some(root));
        let Some(g) = self.groups.get(&root) else {
            if upgraded {
                self.nodes[n as usize].kind = IdKind::Known;
            }
            return n;
        };
        let (old, mut g) = (g.canonical, g.clone());
        if upgraded {
            self.nodes[n as usize].kind = IdKind::Known;
            g.known += 1;
            g.anonymous -= 1;
        }
        let new = g
            .members
            .iter()
            .copied()
            .filter(|&m| self.nodes[m as usize].kind != IdKind::Email)
            .reduce(|a, b| self.better(a, b));
        g.canonical = new;
        self.groups.insert(root, g);
        if let (Some(o), Some(c)) = (old, new)
            && o != c
        {
            out.push(Change::Merged {
                from: self.nodes[o as usize].key.to_string(),
                into: self.nodes[c as usize].key.to_string(),
                reason: LinkReason::CanonicalRule,
            });
        }
        n
    }

    /// Links two identifiers seen together at `ts`, each observed first (see
    /// [`IdentityMap::observe`]). Two groups joined give one `Merged` (when both have an id);
    /// a join beyond `limits` gives `Refused` and changes no group.
    pub fn link(
        &mut self,
        a: (&str, IdKind),
        b: (&str, IdKind),
        ts: Ts,
        reason: LinkReason,
        limits: &IdentityLimits,
        out: &mut Vec<Change>,
    ) {
        let na = self.observe(a.0, a.1, ts, out);
        let nb = self.observe(b.0, b.1, ts, out);
        let (ra, rb) = (self.root(na), self.root(nb));
        if ra == rb {
            return;
        }
        let (ga, gb) = (self.group(ra), self.group(rb));
        let refused = if ga.known + gb.known > limits.max_known_ids {
            Some(RefuseReason::TooManyKnownIds)
        } else if ga.anonymous + gb.anonymous > limits.max_anonymous_ids {
            Some(RefuseReason::TooManyAnonymousIds)
        } else {
            None
        };
        if let Some(reason) = refused {
            // Each side by an id (an email's side by its group's canonical id), never an email.
            let name = |n: u32, g: &Group| match (self.nodes[n as usize].kind, g.canonical) {
                (IdKind::Email, None) => "(email)".to_string(),
                (IdKind::Email, Some(c)) => self.nodes[c as usize].key.to_string(),
                (IdKind::Anonymous | IdKind::Known, _) => self.nodes[n as usize].key.to_string(),
            };
            out.push(Change::Refused { ids: [name(na, &ga), name(nb, &gb)], reason });
            return;
        }
        self.join(ra, rb, ga, gb, reason, Some(out));
        self.dirty.links.push(self.links.len() as u32);
        self.links.push((na, nb, reason));
    }

    /// Joins two groups (roots `ra`, `rb`), the smaller under the larger.
    fn join(&mut self, ra: u32, rb: u32, ga: Group, gb: Group, reason: LinkReason, out: Option<&mut Vec<Change>>) {
        let canonical = match (ga.canonical, gb.canonical) {
            (Some(x), Some(y)) => {
                let c = self.better(x, y);
                let from = if c == x { y } else { x };
                if let Some(out) = out {
                    out.push(Change::Merged {
                        from: self.nodes[from as usize].key.to_string(),
                        into: self.nodes[c as usize].key.to_string(),
                        reason,
                    });
                }
                Some(c)
            }
            (x, y) => x.or(y),
        };
        let (root, child, mut big, small) =
            if ga.members.len() >= gb.members.len() { (ra, rb, ga, gb) } else { (rb, ra, gb, ga) };
        self.nodes[child as usize].parent = root;
        for &m in &small.members {
            self.nodes[m as usize].parent = root;
        }
        self.captured_changed(Some(child), Some(child));
        self.captured_changed(None, Some(root));
        for &m in &small.members {
            self.captured_changed(Some(m), None);
        }
        big.members.extend_from_slice(&small.members);
        big.links.extend_from_slice(&small.links);
        // Every caller pushes the link that joined them right after.
        big.links.push(self.links.len() as u32);
        big.known += small.known;
        big.anonymous += small.anonymous;
        big.canonical = canonical;
        self.groups.remove(&child);
        self.groups.insert(root, big);
    }

    /// The map as bytes: identifiers (key, kind, first seen) in insertion order, then the
    /// accepted links (node indexes and reason).
    pub fn encode(&self, e: &mut Enc<'_>) {
        // Pruned nodes and their links are left out, the others renumbered.
        let mut at = Vec::with_capacity(if self.removed > 0 { self.nodes.len() } else { 0 });
        if self.removed > 0 {
            let mut next = 0;
            for n in &self.nodes {
                at.push(next);
                next += u32::from(!n.gone());
            }
        }
        let ix = |n: u32| if self.removed > 0 { at[n as usize] } else { n };
        e.u32(self.len() as u32);
        for n in self.nodes.iter().filter(|n| !n.gone()) {
            e.bytes(n.key.as_bytes());
            e.u8(n.kind as u8);
            e.ts(n.first_seen);
        }
        let links: Vec<_> = self.links.iter().filter(|l| self.live_link(l)).collect();
        e.u32(links.len() as u32);
        for &&(a, b, r) in &links {
            e.u32(ix(a));
            e.u32(ix(b));
            e.u8(r as u8);
        }
    }

    /// Reads what [`IdentityMap::encode`] wrote, replaying the links without the guards.
    pub fn decode(d: &mut Dec<'_>) -> Result<IdentityMap, StateError> {
        let mut m = IdentityMap::new();
        let n = d.u32("identity count")?;
        for _ in 0..n {
            let at = d.position();
            let k = d.str("identity key")?;
            let kind =
                IdKind::from_u8(d.u8("identity kind")?).ok_or(StateError::Invalid { what: "identity kind", at })?;
            let ts = d.ts("identity first seen")?;
            if m.index.contains_key(k) {
                return Err(StateError::Invalid { what: "identity key (repeated)", at });
            }
            m.node(k, kind, ts);
        }
        let links = d.u32("identity link count")?;
        for _ in 0..links {
            let at = d.position();
            let (a, b) = (d.u32("identity link")?, d.u32("identity link")?);
            let reason = LinkReason::from_u8(d.u8("identity link reason")?)
                .ok_or(StateError::Invalid { what: "identity link reason", at })?;
            if a >= n || b >= n {
                return Err(StateError::Invalid { what: "identity link", at });
            }
            let (ra, rb) = (m.root(a), m.root(b));
            if ra == rb {
                return Err(StateError::Invalid { what: "identity link (cycle)", at });
            }
            let (ga, gb) = (m.group(ra), m.group(rb));
            m.join(ra, rb, ga, gb, reason, None);
            m.links.push((a, b, reason));
        }
        m.dirty = Changed::default();
        m.cap = CaptureChanges::default();
        Ok(m)
    }

    /// Whether identifiers or links changed since the last [`IdentityMap::take_changes`].
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Moves what changed since the last call to the taken list, which the next
    /// [`IdentityMap::capture_into`] hands to its destination (the changelog writes it from
    /// there).
    pub fn take_changes(&mut self) {
        let Changed { nodes, links, gone } = &mut self.dirty;
        self.taken.nodes.append(nodes);
        self.taken.links.append(links);
        self.taken.gone.append(gone);
        // Checkpoints encode from the live map (no capture copy): nothing to track for one.
        self.cap = CaptureChanges { full: true, ..CaptureChanges::default() };
    }

    /// Ends a checkpoint's hold on the taken list: dropped once `durable`, otherwise marked
    /// changed again for the next checkpoint.
    pub fn settle_taken(&mut self, durable: bool) {
        let mut taken = std::mem::take(&mut self.taken);
        if !durable {
            self.dirty.append(&mut taken);
        }
    }

    /// Copies the map into `dst` (a checkpoint's capture) and hands it the taken list.
    /// With `incremental` (`dst` holds this map's previous capture), only what changed since
    /// then is copied: appended identifiers and links, changed nodes' fields, changed groups.
    pub fn capture_into(&mut self, dst: &mut IdentityMap, incremental: bool) {
        let cap = std::mem::take(&mut self.cap);
        let grown = dst.nodes.len() <= self.nodes.len() && dst.links.len() <= self.links.len();
        if incremental && !cap.full && grown {
            let old = dst.nodes.len();
            for &n in &cap.nodes {
                let n = n as usize;
                if n < old {
                    let (from, to) = (&self.nodes[n], &mut dst.nodes[n]);
                    if from.gone() && !to.gone() {
                        dst.index.remove(&to.key);
                        to.key = Box::default();
                        dst.removed += 1;
                    }
                    (to.kind, to.first_seen, to.parent) = (from.kind, from.first_seen, from.parent);
                }
            }
            for (i, n) in self.nodes[old..].iter().enumerate() {
                if n.gone() {
                    dst.removed += 1;
                } else {
                    dst.index.insert(n.key.clone(), (old + i) as u32);
                }
                dst.nodes.push(n.clone());
            }
            for &root in &cap.groups {
                match self.groups.get(&root) {
                    Some(g) => {
                        dst.groups.insert(root, g.clone());
                    }
                    None => {
                        dst.groups.remove(&root);
                    }
                }
            }
            dst.links.extend_from_slice(&self.links[dst.links.len()..]);
        } else {
            dst.nodes.clone_from(&self.nodes);
            dst.index.clone_from(&self.index);
            dst.groups.clone_from(&self.groups);
            dst.links.clone_from(&self.links);
            dst.removed = self.removed;
        }
        dst.dirty = Changed::default();
        dst.cap = CaptureChanges::default();
        dst.taken = std::mem::take(&mut self.taken);
    }

    /// Marks again what a failed checkpoint's capture carried.
    pub fn remark(&mut self, capture: &mut IdentityMap) {
        self.dirty.append(&mut capture.taken);
    }

    /// The changelog records of what the capture carries, key and value: each identifier added
    /// or changed (`\0id/` + map key → `I`, kind u8, first seen), then each link accepted
    /// (`\0ln/` + byte length of a's key + `:` + a's key + b's key → `L`, reason u8).
    /// Pruned identifiers and links get a tombstone (`None`), unless the same key is written
    /// again (an id pruned and seen again since).
    pub fn taken_records(&self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut nodes = self.taken.nodes.clone();
        nodes.sort_unstable();
        nodes.dedup();
        let mut out = Vec::with_capacity(nodes.len() + self.taken.links.len() + self.taken.gone.len());
        for n in nodes {
            let node = &self.nodes[n as usize];
            if node.gone() {
                continue;
            }
            let mut v = vec![b'I', node.kind as u8];
            Enc(&mut v).ts(node.first_seen);
            out.push((format!("{ID_RECORD}{}", node.key), Some(v)));
        }
        let mut links = self.taken.links.clone();
        links.sort_unstable();
        links.dedup();
        for l in links {
            let link = self.links[l as usize];
            if !self.live_link(&link) {
                continue;
            }
            let (a, b, r) = link;
            out.push((self.link_key(a, b), Some(vec![b'L', r as u8])));
        }
        let written: std::collections::HashSet<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
        let mut gone: Vec<&String> = self.taken.gone.iter().filter(|k| !written.contains(k.as_str())).collect();
        gone.sort_unstable();
        gone.dedup();
        let gone: Vec<String> = gone.into_iter().cloned().collect();
        out.extend(gone.into_iter().map(|k| (k, None)));
        out
    }

    fn link_key(&self, a: u32, b: u32) -> String {
        let (a, b) = (&self.nodes[a as usize].key, &self.nodes[b as usize].key);
        format!("{LINK_RECORD}{}:{a}{b}", a.len())
    }

    /// Removes the group of `id` (an id, not an email): every identifier of it and its links,
    /// each queued for a changelog tombstone. Only when `id` is its group's canonical id (or
    /// linked to nothing): the group's person is the prospect `id` names. Returns whether it
    /// removed anything.
    pub fn prune(&mut self, id: &str) -> bool {
        let Some(&n) = self.index.get(id) else { return false };
        let root = self.root(n);
        let g = self.group(root);
        if g.canonical != Some(n) {
            return false;
        }
        for &l in &g.links {
            let (a, b, _) = self.links[l as usize];
            let key = self.link_key(a, b);
            self.dirty.gone.push(key);
        }
        for &m in &g.members {
            let node = &mut self.nodes[m as usize];
            let key = std::mem::take(&mut node.key);
            node.parent = m;
            self.index.remove(&key);
            self.dirty.gone.push(format!("{ID_RECORD}{key}"));
            self.captured_changed(Some(m), None);
        }
        self.removed += g.members.len() as u32;
        if self.groups.remove(&root).is_some() {
            self.captured_changed(None, Some(root));
        }
        if self.removed as usize > 1024 && 2 * self.removed as usize > self.nodes.len() {
            self.compact();
        }
        true
    }

    /// Removes the identifiers with these map keys that were first seen no later than `before`
    /// (a person that left memory at `before` on another partition: an identifier first seen
    /// later is a new person's), each with its links, all queued for changelog tombstones; what
    /// is left of each group they were in is regrouped by its remaining links (each part's
    /// canonical id by the rule). Returns how many identifiers it removed.
    pub fn forget(&mut self, keys: &[String], before: Ts) -> usize {
        let mut gone: Vec<u32> = keys
            .iter()
            .filter_map(|k| self.index.get(k.as_str()).copied())
            .filter(|&n| self.nodes[n as usize].first_seen <= before)
            .collect();
        gone.sort_unstable();
        gone.dedup();
        let mut roots: Vec<u32> = gone.iter().map(|&n| self.root(n)).collect();
        roots.sort_unstable();
        roots.dedup();
        for root in roots {
            let g = self.group(root);
            if self.groups.remove(&root).is_some() {
                self.captured_changed(None, Some(root));
            }
            let is_gone = |n: u32| gone.binary_search(&n).is_ok();
            let mut kept = Vec::with_capacity(g.links.len());
            for &l in &g.links {
                let (a, b, _) = self.links[l as usize];
                if is_gone(a) || is_gone(b) {
                    let key = self.link_key(a, b);
                    self.dirty.gone.push(key);
                } else {
                    kept.push(l);
                }
            }
            for &m in &g.members {
                let node = &mut self.nodes[m as usize];
                node.parent = m;
                if is_gone(m) {
                    let key = std::mem::take(&mut node.key);
                    self.index.remove(&key);
                    self.dirty.gone.push(format!("{ID_RECORD}{key}"));
                    self.removed += 1;
                }
                self.captured_changed(Some(m), Some(m));
            }
            // The rest, regrouped by the links left (each keeps its index in `links`).
            for l in kept {
                let (a, b, reason) = self.links[l as usize];
                let (ra, rb) = (self.root(a), self.root(b));
                if ra == rb {
                    continue;
                }
                let (ga, gb) = (self.group(ra), self.group(rb));
                self.join(ra, rb, ga, gb, reason, None);
                let r = self.root(a);
                if let Some(g) = self.groups.get_mut(&r) {
                    // `join` noted the next link index; this link is an existing one.
                    g.links.pop();
                    g.links.push(l);
                }
            }
        }
        if self.removed as usize > 1024 && 2 * self.removed as usize > self.nodes.len() {
            self.compact();
        }
        gone.len()
    }

    /// Drops pruned nodes and dead links, renumbering the rest (and every list that holds their
    /// indexes); the next capture copies the whole map.
    fn compact(&mut self) {
        let mut at = vec![REMOVED; self.nodes.len()];
        let mut next = 0u32;
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.gone() {
                at[i] = next;
                next += 1;
            }
        }
        let mut link_at = vec![REMOVED; self.links.len()];
        let mut links = Vec::with_capacity(self.links.len());
        for (i, l) in self.links.iter().enumerate() {
            if self.live_link(l) {
                link_at[i] = links.len() as u32;
                links.push((at[l.0 as usize], at[l.1 as usize], l.2));
            }
        }
        self.links = links;
        self.nodes.retain(|n| !n.gone());
        for n in &mut self.nodes {
            n.parent = at[n.parent as usize];
        }
        for v in self.index.values_mut() {
            *v = at[*v as usize];
        }
        let groups = std::mem::take(&mut self.groups);
        for (root, mut g) in groups {
            g.members.iter_mut().for_each(|m| *m = at[*m as usize]);
            g.links.iter_mut().for_each(|l| *l = link_at[*l as usize]);
            g.canonical = g.canonical.map(|c| at[c as usize]);
            self.groups.insert(at[root as usize], g);
        }
        for c in [&mut self.dirty, &mut self.taken] {
            c.nodes.retain_mut(|n| {
                *n = at[*n as usize];
                *n != REMOVED
            });
            c.links.retain_mut(|l| {
                *l = link_at[*l as usize];
                *l != REMOVED
            });
        }
        self.removed = 0;
        self.cap = CaptureChanges { full: true, ..CaptureChanges::default() };
    }

    /// A changelog tombstone of an identifier (by its record key's map key): the identifier
    /// leaves the map; groups are rebuilt when the read ends.
    pub fn forget_key(&mut self, key: &str) {
        let Some(n) = self.index.remove(key) else { return };
        self.nodes[n as usize].key = Box::default();
        self.removed += 1;
        self.stale = true;
    }

    /// After a changelog read that removed identifiers: the groups again, from the identifiers
    /// left and the links between them (in their order).
    fn rebuild(&mut self) {
        // Members of a removed node's old group may point at it: every node starts alone.
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.parent = i as u32;
        }
        self.groups.clear();
        let links = std::mem::take(&mut self.links);
        for l in links {
            if !self.live_link(&l) {
                continue;
            }
            let (ra, rb) = (self.root(l.0), self.root(l.1));
            if ra != rb {
                let (ga, gb) = (self.group(ra), self.group(rb));
                self.join(ra, rb, ga, gb, l.2, None);
                self.links.push(l);
            }
        }
        self.stale = false;
        self.compact();
    }

    /// Installs a record read from the changelog (no guards; nothing marked changed): an
    /// identifier is added, or takes the record's kind and first-seen time (its group's
    /// canonical id recomputed); a link joins two identifiers' groups unless they are one.
    pub fn restore(&mut self, record: IdentityRecord) -> Result<(), StateError> {
        match record {
            IdentityRecord::Id { key, kind, first_seen } => {
                let n = self.node(&key, kind, first_seen);
                let node = &mut self.nodes[n as usize];
                (node.kind, node.first_seen) = (kind, first_seen);
                let root = self.root(n);
                self.captured_changed(Some(n), Some(root));
                if let Some(mut g) = self.groups.get(&root).cloned() {
                    let count = |k| g.members.iter().filter(|&&m| self.nodes[m as usize].kind == k).count() as u32;
                    (g.known, g.anonymous) = (count(IdKind::Known), count(IdKind::Anonymous));
                    g.canonical = g
                        .members
                        .iter()
                        .copied()
                        .filter(|&m| self.nodes[m as usize].kind != IdKind::Email)
                        .reduce(|a, b| self.better(a, b));
                    self.groups.insert(root, g);
                }
            }
            IdentityRecord::Link { a, b, reason } => {
                let missing = StateError::Invalid { what: "identity link (unknown identifier)", at: 0 };
                let (Some(&na), Some(&nb)) = (self.index.get(a.as_str()), self.index.get(b.as_str())) else {
                    return Err(missing);
                };
                let (ra, rb) = (self.root(na), self.root(nb));
                if ra != rb {
                    let (ga, gb) = (self.group(ra), self.group(rb));
                    self.join(ra, rb, ga, gb, reason, None);
                    self.links.push((na, nb, reason));
                } else if self.stale {
                    // The groups are rebuilt at the end: they may be one only through an
                    // identifier removed since.
                    self.links.push((na, nb, reason));
                }
            }
        }
        Ok(())
    }

    /// Ends a changelog read: nothing is owed to the changelog.
    pub fn finish_restore(&mut self) {
        if self.stale {
            self.rebuild();
        }
        self.dirty = Changed::default();
        self.taken = Changed::default();
        self.cap = CaptureChanges::default();
    }

    /// Whether the map holds what `record` says: the identifier with that kind and first-seen
    /// time, or the two identifiers in one group.
    pub fn holds(&self, record: &IdentityRecord) -> bool {
        match record {
            IdentityRecord::Id { key, kind, first_seen } => self.index.get(key.as_str()).is_some_and(|&n| {
                (self.nodes[n as usize].kind, self.nodes[n as usize].first_seen) == (*kind, *first_seen)
            }),
            IdentityRecord::Link { a, b, .. } => match (self.index.get(a.as_str()), self.index.get(b.as_str())) {
                (Some(&x), Some(&y)) => self.root(x) == self.root(y),
                _ => false,
            },
        }
    }

    /// Whether the map holds an identifier under this map key.
    pub fn has_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Marks an identifier changed by its map key (a record of a checkpoint that did not
    /// finish: the next checkpoint writes it again).
    pub fn mark_key(&mut self, key: &str) {
        if let Some(&n) = self.index.get(key) {
            self.dirty_node(n);
        }
    }

    /// The members of the group of the identifier with map key `key` (an id, or NUL + email),
    /// each as (map key, kind, first seen), and the group's canonical id; `None` when the key is
    /// unknown. For the identity topic (`core::xpart`).
    pub fn group_members(&self, key: &str) -> Option<GroupMembers<'_>> {
        let &n = self.index.get(key)?;
        let g = self.group(self.root(n));
        let members =
            g.members.iter().map(|&m| &self.nodes[m as usize]).map(|n| (&*n.key, n.kind, n.first_seen)).collect();
        Some((members, g.canonical.map(|c| &*self.nodes[c as usize].key)))
    }

    /// Each identifier's map key with its group's canonical id and kind, sorted: what two maps
    /// that resolve alike share, whatever their insertion order (for tests and tools).
    pub fn resolution(&self) -> Vec<(String, IdKind, Ts, String)> {
        let mut v: Vec<_> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.gone())
            .map(|(i, n)| (n.key.to_string(), n.kind, n.first_seen, self.canonical_of(i as u32).to_string()))
            .collect();
        v.sort();
        v
    }
}
