//! Logs and metrics. One `Metrics` value, built once in `app` and passed down: no globals.

pub mod breakdown;
pub mod metrics;

pub use metrics::Metrics;

use crate::config::{Log, LogFormat};

/// Installs the tracing subscriber (stderr). Emails and secrets are never passed to it.
pub fn init_logs(log: &Log) {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.level).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
