//! `[inputs."<topic>"]`: each input topic's format and source, validated into the
//! [`InputSpec`] the decoder takes.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Settings, invalid};
use crate::codec::inbound::{Format, InputSpec, Mapped, TimeUnit};
use crate::core::Source;

/// `[inputs."<topic>"]`: how one input topic is decoded.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputSettings {
    /// `auto`, `canonical`, `segment`, `hubspot`, `salesforce_cdc`, `pipedrive`, `debezium` or
    /// `mapped`.
    #[serde(default = "default_format")]
    pub format: String,
    /// `web` or `crm`: the source of every event of the topic. Unset: the payload says
    /// (canonical `source`; Segment calls are `web`); CRM formats default to `crm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The JSON Pointers of a `mapped` topic's fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped: Option<MappedSettings>,
}

impl Default for InputSettings {
    fn default() -> Self {
        InputSettings { format: default_format(), source: None, mapped: None }
    }
}

/// `[inputs."<topic>".mapped]`: JSON Pointers (RFC 6901, `/user/id`) to a payload's fields.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MappedSettings {
    pub event_id: String,
    pub prospect: String,
    /// Pointer to the event's type (a signal name or alias) ...
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// ... or the one type of every event of the topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_constant: Option<String>,
    pub time: String,
    /// `rfc3339`, `epoch_s` or `epoch_ms`.
    #[serde(default = "default_time_unit")]
    pub time_unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl Settings {
    /// How `topic` is decoded: its `[inputs."<topic>"]` section, validated, or `auto`.
    pub fn input_spec(&self, topic: &str) -> Result<InputSpec, ConfigError> {
        let Some(i) = self.inputs.get(topic) else { return Ok(InputSpec::default()) };
        let key = |k: &str| format!("inputs.\"{topic}\".{k}");
        let format = Format::parse(&i.format).ok_or_else(|| {
            invalid(&key("format"), format!("unknown format `{}`", i.format), format!("use one of {}", Format::names()))
        })?;
        let source = match &i.source {
            None => None,
            Some(s) => Some(Source::parse(s).ok_or_else(|| {
                invalid(&key("source"), format!("unknown source `{s}`"), "use \"web\" or \"crm\", or leave it unset")
            })?),
        };
        let mapped = match (&i.mapped, format) {
            (None, Format::Mapped) => {
                return Err(invalid(
                    &key("mapped"),
                    "is missing for format `mapped`",
                    "give the JSON Pointers: event_id, prospect, type or type_constant, time, time_unit",
                ));
            }
            (Some(_), f) if f != Format::Mapped => {
                return Err(invalid(
                    &key("mapped"),
                    "is set but the format is not `mapped`",
                    "remove it or set format = \"mapped\"",
                ));
            }
            (None, _) => None,
            (Some(m), _) => Some(mapped(m, &key)?),
        };
        Ok(InputSpec { format, source, mapped })
    }

    /// Every input topic's [`InputSpec`], in `kafka.input_topics` order.
    pub fn input_specs(&self) -> Vec<InputSpec> {
        // Validated in `validate`.
        self.kafka.input_topics.iter().map(|t| self.input_spec(t).unwrap_or_default()).collect()
    }
}

fn default_format() -> String {
    "auto".into()
}
fn default_time_unit() -> String {
    "rfc3339".into()
}

fn mapped(m: &MappedSettings, key: &dyn Fn(&str) -> String) -> Result<Mapped, ConfigError> {
    let pointer = |name: &str, p: &str| -> Result<String, ConfigError> {
        if p.is_empty() || p.starts_with('/') {
            Ok(p.to_string())
        } else {
            Err(invalid(
                &key(&format!("mapped.{name}")),
                format!("`{p}` is not a JSON Pointer"),
                "start it with `/`, e.g. \"/user/id\"",
            ))
        }
    };
    let kind = match (&m.kind, &m.type_constant) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(invalid(
                &key("mapped.type"),
                "needs exactly one of `type` (a pointer) and `type_constant`",
                "point at the event's type, or name the one signal of every event",
            ));
        }
        (Some(p), None) => Some(pointer("type", p)?),
        (None, Some(_)) => None,
    };
    let time_unit = TimeUnit::parse(&m.time_unit).ok_or_else(|| {
        invalid(&key("mapped.time_unit"), format!("unknown unit `{}`", m.time_unit), "use rfc3339, epoch_s or epoch_ms")
    })?;
    Ok(Mapped {
        event_id: pointer("event_id", &m.event_id)?,
        prospect: pointer("prospect", &m.prospect)?,
        kind,
        kind_constant: m.type_constant.clone(),
        time: pointer("time", &m.time)?,
        time_unit,
        email: m.email.as_deref().map(|p| pointer("email", p)).transpose()?,
    })
}
