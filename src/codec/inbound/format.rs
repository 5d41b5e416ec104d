//! What an input topic carries: its wire [`Format`], the [`Source`] of its events, and for the
//! `mapped` format the JSON Pointers of its fields ([`Mapped`]). One [`InputSpec`] per topic,
//! from the `[inputs.<topic>]` configuration or `replay --format/--source`.

use crate::core::Source;

/// The wire format of an input topic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Our canonical envelope or a Segment call, told apart per payload (the behaviour before
    /// formats were declared).
    #[default]
    Auto,
    Canonical,
    Segment,
    /// HubSpot webhook deliveries: a JSON array of events.
    Hubspot,
    /// Salesforce Change Data Capture events (CometD JSON, or as Kafka Connect writes them).
    SalesforceCdc,
    /// Pipedrive webhooks v2: `{data, previous, meta}`.
    Pipedrive,
    /// Debezium change events: `{before, after, op, source}`.
    Debezium,
    /// Any JSON object, its fields found by JSON Pointers from the configuration.
    Mapped,
}

impl Format {
    pub const ALL: [Format; 8] = [
        Format::Auto,
        Format::Canonical,
        Format::Segment,
        Format::Hubspot,
        Format::SalesforceCdc,
        Format::Pipedrive,
        Format::Debezium,
        Format::Mapped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Canonical => "canonical",
            Format::Segment => "segment",
            Format::Hubspot => "hubspot",
            Format::SalesforceCdc => "salesforce_cdc",
            Format::Pipedrive => "pipedrive",
            Format::Debezium => "debezium",
            Format::Mapped => "mapped",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// The formats, comma-separated, for error messages.
    pub fn names() -> String {
        Format::ALL.map(Format::as_str).join(", ")
    }

    /// A CRM's change events: their source is `crm` unless the topic says otherwise.
    pub fn is_crm(self) -> bool {
        matches!(self, Format::Hubspot | Format::SalesforceCdc | Format::Pipedrive | Format::Debezium)
    }
}

/// The unit of a mapped time field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeUnit {
    #[default]
    Rfc3339,
    EpochS,
    EpochMs,
}

impl TimeUnit {
    pub fn parse(s: &str) -> Option<TimeUnit> {
        match s {
            "rfc3339" => Some(TimeUnit::Rfc3339),
            "epoch_s" => Some(TimeUnit::EpochS),
            "epoch_ms" => Some(TimeUnit::EpochMs),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TimeUnit::Rfc3339 => "rfc3339",
            TimeUnit::EpochS => "epoch_s",
            TimeUnit::EpochMs => "epoch_ms",
        }
    }
}

/// Where the fields of a `mapped` payload are: JSON Pointers (RFC 6901, `/user/id`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapped {
    pub event_id: String,
    pub prospect: String,
    /// The event's type (its signal name or alias), or `None` when `type_constant` names it.
    pub kind: Option<String>,
    pub kind_constant: Option<String>,
    pub time: String,
    pub time_unit: TimeUnit,
    pub email: Option<String>,
}

/// How one input topic is decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InputSpec {
    pub format: Format,
    /// The source of the topic's events; `None`: the payload decides (canonical `source`,
    /// Segment calls are `web`). A payload field naming another source is refused.
    pub source: Option<Source>,
    /// The field pointers of the `mapped` format.
    pub mapped: Option<Mapped>,
}

impl InputSpec {
    pub fn new(format: Format, source: Option<Source>) -> InputSpec {
        InputSpec { format, source, mapped: None }
    }

    /// The topic's source, with the format's default (CRM formats: `crm`).
    pub fn source(&self) -> Option<Source> {
        self.source.or(self.format.is_crm().then_some(Source::Crm))
    }
}
