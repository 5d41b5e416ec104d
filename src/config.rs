//! Service settings: a TOML file, then `MICROFUNNEL__SECTION__KEY` environment overrides.
//! Unknown keys are rejected and every value is validated before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod inputs;
mod unknown;
mod validate;

pub use inputs::{InputSettings, MappedSettings};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(String),
    #[error("{key}: {problem}; {fix}")]
    Invalid { key: String, problem: String, fix: String },
}

fn invalid(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_string(), problem: problem.into(), fix: fix.into() }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: Kafka,
    #[serde(default)]
    pub journey: JourneySettings,
    #[serde(default)]
    pub limits: LimitSettings,
    #[serde(default)]
    pub pipeline: Pipeline,
    #[serde(default)]
    pub checkpoint: Checkpoint,
    #[serde(default)]
    pub http: Http,
    #[serde(default)]
    pub log: Log,
    /// Per input topic: its format and source (README "Input formats"). Topics not listed are
    /// `auto`: canonical envelopes and Segment calls, the source from the payload.
    #[serde(default)]
    pub inputs: BTreeMap<String, InputSettings>,
}

/// Where shard state is persisted at each checkpoint (see README "Checkpoints and recovery").
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Directory of local snapshot files (`<dir>/<group>/shard-NNNN/`); empty = no local files.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// Snapshot bases kept per shard (the newest ones, each with the deltas after it); older
    /// ones are deleted.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// A shard's base is rewritten (from base + deltas, in the background) once its deltas'
    /// bytes reach this share of the base's.
    #[serde(default = "default_rewrite_share")]
    pub rewrite_share: f64,
    /// Also write changed prospects to a compacted changelog topic, so a shard's state follows
    /// its partition to another instance.
    #[serde(default = "default_true")]
    pub changelog: bool,
    /// The changelog topic; empty = `<group_id>-changelog`. Created (compacted, one partition
    /// per input partition) at start if missing.
    #[serde(default)]
    pub changelog_topic: String,
}

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint {
            dir: default_state_dir(),
            keep: default_keep(),
            rewrite_share: default_rewrite_share(),
            changelog: true,
            changelog_topic: String::new(),
        }
    }
}

impl Checkpoint {
    /// Whether any state is persisted (if not, a restarted shard starts empty at the committed offsets).
    pub fn persists(&self) -> bool {
        self.changelog || !self.dir.as_os_str().is_empty()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Kafka {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    #[serde(default = "default_group")]
    pub group_id: String,
    #[serde(default = "default_inputs")]
    pub input_topics: Vec<String>,
    #[serde(default)]
    pub topics: OutputTopics,
    /// Partition count used by `microfunnel create-topics` for every topic.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of the topics microfunnel creates (`create-topics`, the changelog).
    #[serde(default = "default_replication")]
    pub replication: i32,
    #[serde(default = "default_session_timeout")]
    pub session_timeout_ms: u32,
    /// Start a resumed partition this many offsets before its state's position and skip what the
    /// state covers. 0 for Apache Kafka and Redpanda; brokers that answer a fetch from inside a
    /// record batch with the next batch (Tansu 0.6) need at least the producers' batch size.
    #[serde(default)]
    pub resume_rewind: u32,
    /// librdkafka settings passed through as they are (`security.protocol`, `sasl.username`,
    /// `ssl.ca.location`, ...). From the environment, write `_` for `.`.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// The internal identity topic of identity resolution across partitions (journey
    /// `[identity] resolve`); empty = `<group_id>.identity`. Created (delete policy, as many
    /// partitions as the inputs) by `create-topics` and at start.
    #[serde(default)]
    pub identity_topic: String,
}

impl Kafka {
    /// The identity topic's name (`kafka.identity_topic` or `<group_id>.identity`).
    pub fn identity_topic(&self) -> String {
        if self.identity_topic.trim().is_empty() {
            format!("{}.identity", self.group_id)
        } else {
            self.identity_topic.clone()
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputTopics {
    #[serde(default = "default_hot_leads")]
    pub hot_leads: String,
    #[serde(default = "default_journey_events")]
    pub journey_events: String,
    #[serde(default = "default_funnel")]
    pub funnel: String,
    #[serde(default = "default_dead_letter")]
    pub dead_letter: String,
}

impl Default for OutputTopics {
    fn default() -> Self {
        OutputTopics {
            hot_leads: default_hot_leads(),
            journey_events: default_journey_events(),
            funnel: default_funnel(),
            dead_letter: default_dead_letter(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JourneySettings {
    /// A built-in journey's name (`b2b`) or a TOML file; a relative file path written in the
    /// config file resolves against the config file's directory.
    #[serde(default = "default_journey_path")]
    pub path: PathBuf,
}

impl Default for JourneySettings {
    fn default() -> Self {
        JourneySettings { path: default_journey_path() }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings { max_bytes: default_max_bytes(), max_depth: default_max_depth() }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Producer flush + offset commit at least this often (the checkpoint barrier).
    #[serde(default = "default_commit_interval")]
    pub commit_interval_ms: u64,
    /// ... or after this many messages, whichever comes first.
    #[serde(default = "default_commit_every")]
    pub commit_every_messages: u64,
    /// Funnel aggregates per shard to the funnel topic and gauges this often.
    #[serde(default = "default_funnel_interval")]
    pub funnel_interval_ms: u64,
    /// A shard with no input for this long advances its watermark from the wall clock
    /// (minus the allowed lateness), so silence timers fire when traffic stops. 0 = never.
    #[serde(default = "default_idle_advance")]
    pub idle_advance_ms: u64,
    /// Deadline for a graceful stop (flush, commit, leave the group).
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_ms: u64,
    /// How long a shard waits for an input partition that has nothing buffered but may have a
    /// backlog before it processes its other inputs without it (the event-time merge, README
    /// "Time"). 0 = never wait (the merge then only orders what is already buffered).
    #[serde(default = "default_max_input_wait")]
    pub max_input_wait_ms: u64,
    /// Delivered, unprocessed messages a shard buffers per input partition for the merge; past
    /// it the partition is paused until a tenth of that is left. 0 = no merge: messages are
    /// processed in the order they are delivered.
    #[serde(default = "default_merge_buffer")]
    pub merge_buffer_messages: usize,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline {
            commit_interval_ms: default_commit_interval(),
            commit_every_messages: default_commit_every(),
            funnel_interval_ms: default_funnel_interval(),
            idle_advance_ms: default_idle_advance(),
            shutdown_timeout_ms: default_shutdown_timeout(),
            max_input_wait_ms: default_max_input_wait(),
            merge_buffer_messages: default_merge_buffer(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Address of /metrics, /healthz and /readyz; loopback by default. Port 0 picks one.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Serve the query API (`/prospects/{id}`, `/funnel`, `/signals`, `/forecast`). Off by default: it shows personal data.
    #[serde(default)]
    pub query_api: bool,
    /// Bearer token the query API requires (`Authorization: Bearer ...`); required when `listen`
    /// is not a loopback address. A secret: masked, never logged.
    #[serde(default)]
    pub token: String,
    /// Show prospects' emails in query answers (hidden by default).
    #[serde(default)]
    pub show_emails: bool,
    /// Base URL at which the other instances' clients reach this instance's query API (e.g.
    /// `http://10.0.3.7:9464`), published on `<group>.members` so that a 421 names it. Empty:
    /// none (a 421 names the owning instance without a URL).
    #[serde(default)]
    pub advertised_url: String,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: default_listen(),
            query_api: false,
            token: String::new(),
            show_emails: false,
            advertised_url: String::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// A tracing filter: `info`, `microfunnel=debug,rdkafka=warn`, ...
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log { format: default_log_format(), level: default_log_level() }
    }
}

fn default_group() -> String {
    "microfunnel".into()
}
fn default_inputs() -> Vec<String> {
    vec!["web-events".into(), "crm-events".into()]
}
fn default_replication() -> i32 {
    1
}
fn default_partitions() -> i32 {
    4
}
fn default_session_timeout() -> u32 {
    10_000
}
fn default_hot_leads() -> String {
    "hot-leads".into()
}
fn default_journey_events() -> String {
    "journey-events".into()
}
fn default_funnel() -> String {
    "funnel".into()
}
fn default_dead_letter() -> String {
    "dead-letter".into()
}
fn default_journey_path() -> PathBuf {
    crate::journeys::DEFAULT.into()
}
fn default_max_bytes() -> usize {
    64 * 1024
}
fn default_max_depth() -> usize {
    32
}
fn default_commit_interval() -> u64 {
    5_000
}
fn default_commit_every() -> u64 {
    250_000
}
fn default_funnel_interval() -> u64 {
    10_000
}
fn default_idle_advance() -> u64 {
    60_000
}
fn default_shutdown_timeout() -> u64 {
    20_000
}
fn default_max_input_wait() -> u64 {
    1_000
}
fn default_merge_buffer() -> usize {
    50_000
}
fn default_state_dir() -> PathBuf {
    "state".into()
}
fn default_keep() -> usize {
    3
}
fn default_rewrite_share() -> f64 {
    0.5
}
fn default_true() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:9464".into()
}
fn default_log_format() -> LogFormat {
    LogFormat::Pretty
}
fn default_log_level() -> String {
    "info".into()
}

/// Client keys whose values are secrets: masked by `check-config`, never logged.
pub fn is_secret_key(key: &str) -> bool {
    ["password", "secret", "token", "sasl.oauthbearer.config", "ssl.key.pem", "ssl_key"].iter().any(|s| key.contains(s))
}

impl Settings {
    /// Loads `file` (if given), then the environment (`MICROFUNNEL__KAFKA__BROKERS=...`), then
    /// validates. `env` is the variables to read (the process environment in production).
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Settings, ConfigError> {
        let mut b = config::Config::builder();
        if let Some(f) = file {
            if !f.exists() {
                return Err(invalid(
                    "--config",
                    format!("file {} does not exist", f.display()),
                    "pass an existing TOML file",
                ));
            }
            b = b.add_source(config::File::from(f).format(config::FileFormat::Toml));
        }
        let vars: config::Map<String, String> =
            env.into_iter().filter(|(k, _)| k.starts_with("MICROFUNNEL__")).collect();
        b = b.add_source(
            config::Environment::with_prefix("MICROFUNNEL")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("kafka.input_topics")
                .try_parsing(true)
                .source(Some(vars.clone())),
        );
        let raw = b.build().map_err(|e| ConfigError::Load(e.to_string()))?;
        let mut s: Settings = serde_path_to_error::deserialize(raw).map_err(|e| {
            let msg = e.inner().to_string();
            if let Some(refusal) = unknown::refusal(e.path(), &msg, file, vars.keys()) {
                refusal
            } else if msg.contains("missing field `kafka`") || msg.contains("missing field `brokers`") {
                invalid(
                    "kafka.brokers",
                    "is not set",
                    "set [kafka] brokers = \"host:9092\" in the config file or MICROFUNNEL__KAFKA__BROKERS",
                )
            } else {
                ConfigError::Load(format!("{msg} (check the key's spelling and type against README \"Configuration\")"))
            }
        })?;
        s.kafka.client = s.kafka.client.into_iter().map(|(k, v)| (k.replace('_', "."), v)).collect();
        if let Some(f) = file {
            s.resolve_paths(f);
        }
        s.validate()?;
        Ok(s)
    }

    /// Relative paths written in the config file (`journey.path` unless it names a built-in
    /// journey, `checkpoint.dir`) resolve against the file's directory, so a config works from
    /// any working directory. Defaults and values from the environment stay as they are
    /// (relative to the working directory).
    fn resolve_paths(&mut self, file: &Path) {
        let Some(table) = std::fs::read_to_string(file).ok().and_then(|t| t.parse::<toml::Table>().ok()) else {
            return;
        };
        let dir = file.parent().unwrap_or(Path::new(""));
        let written = |section: &str, key: &str| table.get(section)?.get(key)?.as_str().map(PathBuf::from);
        let journey_is_file = matches!(self.journey(), crate::journeys::JourneyRef::File(_));
        for (path, section, key, applies) in [
            (&mut self.journey.path, "journey", "path", journey_is_file),
            (&mut self.checkpoint.dir, "checkpoint", "dir", true),
        ] {
            if applies
                && path.is_relative()
                && !path.as_os_str().is_empty()
                && written(section, key).as_deref() == Some(path.as_path())
            {
                *path = dir.join(&*path);
            }
        }
    }

    /// The journey `journey.path` names: a built-in journey or a file.
    pub fn journey(&self) -> crate::journeys::JourneyRef {
        crate::journeys::JourneyRef::parse(&self.journey.path)
    }

    /// The changelog topic name (`checkpoint.changelog_topic` or `<group_id>-changelog`).
    pub fn changelog_topic(&self) -> String {
        if self.checkpoint.changelog_topic.trim().is_empty() {
            format!("{}-changelog", self.kafka.group_id)
        } else {
            self.checkpoint.changelog_topic.clone()
        }
    }

    /// Checks that the snapshot directory can be written, so a bad path fails at start and not
    /// at the first checkpoint.
    pub fn check_state_dir(&self) -> Result<(), ConfigError> {
        let dir = &self.checkpoint.dir;
        if dir.as_os_str().is_empty() {
            return Ok(());
        }
        let probe = dir.join(".microfunnel-write-probe");
        std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&probe, b"ok")).and_then(|_| std::fs::remove_file(&probe)).map_err(
            |e| {
                invalid(
                    "checkpoint.dir",
                    format!("{} is not a writable directory: {e}", dir.display()),
                    "point it at a writable directory (a persistent volume in production), or set it to \"\" to keep no local snapshots",
                )
            },
        )
    }

    pub fn listen_addr(&self) -> SocketAddr {
        // Validated in `validate`.
        self.http.listen.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9464)))
    }

    /// The effective settings as TOML, secrets masked.
    /// The effective settings as TOML, secrets masked and derived defaults filled in (the
    /// changelog topic's name).
    pub fn masked_toml(&self) -> String {
        let mut s = self.clone();
        s.checkpoint.changelog_topic = self.changelog_topic();
        s.kafka.identity_topic = self.kafka.identity_topic();
        for topic in &self.kafka.input_topics {
            s.inputs.entry(topic.clone()).or_default();
        }
        for (k, v) in s.kafka.client.iter_mut() {
            if is_secret_key(k) {
                *v = "*****".into();
            }
        }
        if !s.http.token.is_empty() {
            s.http.token = "*****".into();
        }
        toml::to_string_pretty(&s).unwrap_or_else(|e| format!("# cannot render settings: {e}"))
    }
}
