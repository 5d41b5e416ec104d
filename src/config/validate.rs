//! `Settings::validate`: every setting checked once at start, each refusal naming the key and the
//! fix.

use std::net::SocketAddr;

use super::{ConfigError, Settings, invalid};

/// librdkafka settings microfunnel owns: setting them would break its guarantees.
const RESERVED_CLIENT_KEYS: [&str; 6] = [
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
    "enable.partition.eof",
    "delivery.report.only.error",
];

/// The shortest `http.token` accepted.
const MIN_TOKEN_LEN: usize = 16;

impl Settings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "is empty", "list at least one host:port"));
        }
        if k.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "is empty", "name the consumer group"));
        }
        if k.input_topics.is_empty() || k.input_topics.iter().any(|t| t.trim().is_empty()) {
            return Err(invalid(
                "kafka.input_topics",
                "is empty or holds an empty name",
                "list the website and CRM topics",
            ));
        }
        let outs = [&k.topics.hot_leads, &k.topics.journey_events, &k.topics.funnel, &k.topics.dead_letter];
        for (name, t) in ["hot_leads", "journey_events", "funnel", "dead_letter"].iter().zip(outs) {
            if t.trim().is_empty() {
                return Err(invalid(&format!("kafka.topics.{name}"), "is empty", "name the output topic"));
            }
            if k.input_topics.contains(t) {
                return Err(invalid(
                    &format!("kafka.topics.{name}"),
                    format!("`{t}` is also an input topic"),
                    "outputs must go to topics microfunnel does not consume",
                ));
            }
        }
        if !(1..=10_000).contains(&k.partitions) {
            return Err(invalid("kafka.partitions", format!("{} is out of range", k.partitions), "use 1 to 10000"));
        }
        if !(1..=16).contains(&k.replication) {
            return Err(invalid("kafka.replication", "is out of range", "use 1 (one broker) to 16; 3 in production"));
        }
        if !(1_000..=300_000).contains(&k.session_timeout_ms) {
            return Err(invalid("kafka.session_timeout_ms", "is out of range", "use 1000 to 300000 (tests use 6000)"));
        }
        for key in k.client.keys() {
            if RESERVED_CLIENT_KEYS.contains(&key.as_str()) {
                return Err(invalid(
                    &format!("kafka.client.\"{key}\""),
                    "is managed by microfunnel",
                    "remove it (use kafka.brokers / kafka.group_id for those)",
                ));
            }
        }
        if self.limits.max_bytes < 256 || self.limits.max_bytes > 16 * 1024 * 1024 {
            return Err(invalid("limits.max_bytes", "is out of range", "use 256 to 16777216"));
        }
        if !(2..=128).contains(&self.limits.max_depth) {
            return Err(invalid("limits.max_depth", "is out of range", "use 2 to 128"));
        }
        let p = &self.pipeline;
        if p.commit_interval_ms == 0 || p.commit_every_messages == 0 {
            return Err(invalid(
                "pipeline.commit_interval_ms",
                "must be positive",
                "use e.g. 5000 (and commit_every_messages 250000)",
            ));
        }
        if p.funnel_interval_ms == 0 {
            return Err(invalid("pipeline.funnel_interval_ms", "must be positive", "use e.g. 10000"));
        }
        if p.shutdown_timeout_ms < 1_000 {
            return Err(invalid("pipeline.shutdown_timeout_ms", "is under a second", "use e.g. 20000"));
        }
        if p.max_input_wait_ms > 600_000 {
            return Err(invalid(
                "pipeline.max_input_wait_ms",
                "is over 10 minutes",
                "use 0 (never wait) to 600000; 1000 covers a fetch round trip",
            ));
        }
        if p.merge_buffer_messages > 10_000_000 {
            return Err(invalid(
                "pipeline.merge_buffer_messages",
                "is over 10000000",
                "use 0 (no merge) to 10000000; each buffered message holds a copy of its payload",
            ));
        }
        if !(1..=100).contains(&self.checkpoint.keep) {
            return Err(invalid(
                "checkpoint.keep",
                "is out of range",
                "keep 1 to 100 snapshot files per shard (3 is plenty)",
            ));
        }
        let share = self.checkpoint.rewrite_share;
        if !(0.0..=100.0).contains(&share) {
            return Err(invalid(
                "checkpoint.rewrite_share",
                "is out of range",
                "use 0 to 100: the share of a base's bytes the deltas after it reach before the base is rewritten (0.5 is the default; 0 rewrites it at every checkpoint)",
            ));
        }
        let changelog = self.changelog_topic();
        if self.checkpoint.changelog && (k.input_topics.contains(&changelog) || outs.contains(&&changelog)) {
            return Err(invalid(
                "checkpoint.changelog_topic",
                format!("`{changelog}` is also an input or output topic"),
                "give the changelog a topic of its own",
            ));
        }
        let identity = k.identity_topic();
        if k.input_topics.contains(&identity) || outs.contains(&&identity) || identity == changelog {
            return Err(invalid(
                "kafka.identity_topic",
                format!("`{identity}` is also an input, output or changelog topic"),
                "give the identity topic a topic of its own",
            ));
        }
        for topic in self.inputs.keys() {
            if !k.input_topics.contains(topic) {
                return Err(invalid(
                    &format!("inputs.\"{topic}\""),
                    "is not one of kafka.input_topics",
                    format!("configure only input topics ({})", k.input_topics.join(", ")),
                ));
            }
        }
        for topic in &k.input_topics {
            self.input_spec(topic)?;
        }
        if self.http.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "http.listen",
                format!("`{}` is not an address", self.http.listen),
                "use ip:port, e.g. 127.0.0.1:9464",
            ));
        }
        let token = self.http.token.trim();
        if !self.http.token.is_empty() && (token.len() < MIN_TOKEN_LEN || token != self.http.token) {
            return Err(invalid(
                "http.token",
                format!("must be at least {MIN_TOKEN_LEN} characters without surrounding blanks"),
                "set a long random secret, e.g. the output of `openssl rand -hex 32`",
            ));
        }
        if self.http.query_api
            && self.http.token.is_empty()
            && self.http.listen.parse::<SocketAddr>().is_ok_and(|a| !a.ip().is_loopback())
        {
            return Err(invalid(
                "http.token",
                format!("is not set, and the query API (personal data) would listen on {}", self.http.listen),
                "set http.token (MICROFUNNEL__HTTP__TOKEN) to a long random secret, or listen on 127.0.0.1",
            ));
        }
        let advertised = &self.http.advertised_url;
        if !advertised.is_empty()
            && url::Url::parse(advertised).map_or(true, |u| !matches!(u.scheme(), "http" | "https") || !u.has_host())
        {
            return Err(invalid(
                "http.advertised_url",
                format!("`{advertised}` is not an http(s) URL"),
                "give the base URL other instances' clients reach this one at, e.g. http://10.0.3.7:9464, or leave it empty",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("`{}` is not a filter", self.log.level),
                "use e.g. info or microfunnel=debug",
            ));
        }
        Ok(())
    }
}
