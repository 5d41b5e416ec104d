//! The validated event the engine applies, whatever its wire format was.

use std::borrow::Cow;

use super::journey::SignalId;
use super::time::Ts;

/// Where an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Web,
    Crm,
}

impl Source {
    pub fn parse(s: &str) -> Option<Source> {
        if s.eq_ignore_ascii_case("web") {
            Some(Source::Web)
        } else if s.eq_ignore_ascii_case("crm") {
            Some(Source::Crm)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Web => "web",
            Source::Crm => "crm",
        }
    }
}

/// How the event names its signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Canonical envelope `type`, or a Segment `track` call's `event`.
    Named,
    /// Segment `page` call.
    Page,
    /// Segment `screen` call.
    Screen,
    /// Segment `identify` call.
    Identify,
    /// Segment `group` call (a user joins an account): valid, maps to no signal, counted as
    /// ignored.
    Group,
    /// Segment `alias` call (`previousId` becomes `userId`): valid, maps to no signal; the link
    /// it states is in [`Event::linked`].
    Alias,
}

/// One micro-conversion, validated. Strings borrow from the input buffer where they can.
#[derive(Clone, Debug, PartialEq)]
pub struct Event<'a> {
    pub event_id: Cow<'a, str>,
    pub prospect: Cow<'a, str>,
    pub source: Source,
    pub kind: EventKind,
    /// The name as sent ("Demo Requested", "quote_sent"); empty for other Segment calls.
    pub name: Cow<'a, str>,
    /// The journey signal the name maps to, if any.
    pub signal: Option<SignalId>,
    pub ts: Ts,
    /// Lower-cased email, when the payload carries one.
    pub email: Option<Cow<'a, str>>,
    /// Another id the payload says is the same person as `prospect`: a Segment call's
    /// `anonymousId` when it also carries a usable `userId` (the prospect), an `alias` call's
    /// `previousId`. Never blank, never a placeholder id, never equal to `prospect`.
    pub linked: Option<Cow<'a, str>>,
    /// `prospect` is a Segment `anonymousId` (the call had no usable `userId`): a device, not
    /// yet a known person. Ids of the canonical envelope and of CRM formats are known ids.
    pub anonymous: bool,
    /// The breakdown dimension values the payload carries (UTM source, medium, campaign,
    /// referrer domain), read only for journeys with `[breakdowns]`.
    pub touch: Option<Box<super::breakdown::Touch<'a>>>,
}

impl Event<'_> {
    pub fn into_owned(self) -> Event<'static> {
        Event {
            event_id: Cow::Owned(self.event_id.into_owned()),
            prospect: Cow::Owned(self.prospect.into_owned()),
            source: self.source,
            kind: self.kind,
            name: Cow::Owned(self.name.into_owned()),
            signal: self.signal,
            ts: self.ts,
            email: self.email.map(|e| Cow::Owned(e.into_owned())),
            linked: self.linked.map(|l| Cow::Owned(l.into_owned())),
            anonymous: self.anonymous,
            touch: self.touch.map(|t| Box::new(t.into_owned())),
        }
    }
}
