//! Which event names map to no signal, and how often: a bounded count for replay's summary and
//! the service's periodic log line, so a user sees what their data sends that the journey does
//! not know yet.

use std::collections::HashMap;

use super::event::{Event, EventKind};

/// Most distinct names counted one by one; further new names are counted together.
pub const MAX_NAMES: usize = 10_000;

/// Longest name kept (in characters); longer names are cut.
const MAX_NAME_CHARS: usize = 100;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnmappedNames {
    names: HashMap<String, u64>,
    /// Events with a name seen after [`MAX_NAMES`] distinct names were held.
    beyond: u64,
    total: u64,
}

impl UnmappedNames {
    /// Counts the event if it maps to no signal: a track call or canonical event by its name;
    /// page, screen and identify calls without a `[segment]` mapping as `(page)`, `(screen)`,
    /// `(identify)`. Group and alias calls mean nothing to a journey and are not counted.
    pub fn saw(&mut self, ev: &Event<'_>) {
        if ev.signal.is_some() {
            return;
        }
        let name: &str = match ev.kind {
            EventKind::Named => &ev.name,
            EventKind::Page => "(page)",
            EventKind::Screen => "(screen)",
            EventKind::Identify => "(identify)",
            EventKind::Group | EventKind::Alias => return,
        };
        self.total += 1;
        let name = name.char_indices().nth(MAX_NAME_CHARS).map_or(name, |(i, _)| &name[..i]);
        // A name seen before costs no allocation.
        if let Some(n) = self.names.get_mut(name) {
            *n += 1;
        } else if self.names.len() < MAX_NAMES {
            self.names.insert(name.to_string(), 1);
        } else {
            self.beyond += 1;
        }
    }

    /// Unmapped events counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The `n` most frequent names, most frequent first (ties by name), and how many unmapped
    /// events the list leaves out.
    pub fn top(&self, n: usize) -> (Vec<(&str, u64)>, u64) {
        let mut all: Vec<(&str, u64)> = self.names.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        all.truncate(n);
        let listed: u64 = all.iter().map(|(_, c)| c).sum();
        (all, self.total - listed)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::core::{SignalId, Source, Ts};

    fn ev(name: &str, kind: EventKind, signal: Option<SignalId>) -> Event<'static> {
        Event {
            event_id: Cow::Borrowed("e"),
            prospect: Cow::Borrowed("p"),
            source: Source::Web,
            kind,
            name: Cow::Owned(name.to_string()),
            signal,
            ts: Ts(0),
            email: None,
            linked: None,
            anonymous: false,
            touch: Default::default(),
        }
    }

    #[test]
    fn counts_only_what_maps_to_nothing_and_stays_bounded() {
        let mut u = UnmappedNames::default();
        u.saw(&ev("Demo Requested", EventKind::Named, Some(SignalId(1))));
        u.saw(&ev("", EventKind::Group, None));
        u.saw(&ev("", EventKind::Page, None));
        for k in 0..MAX_NAMES + 5 {
            u.saw(&ev(&format!("thing {k}"), EventKind::Named, None));
        }
        u.saw(&ev("thing 7", EventKind::Named, None));
        assert_eq!(u.total(), MAX_NAMES as u64 + 7);
        assert_eq!(u.names.len(), MAX_NAMES);
        let (top, rest) = u.top(2);
        assert_eq!(top, [("thing 7", 2), ("(page)", 1)]);
        assert_eq!(rest, MAX_NAMES as u64 + 7 - 3);
    }
}
