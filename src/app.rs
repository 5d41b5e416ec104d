//! The one place that builds everything and hands it down, and stops it in order:
//! signal → stop consuming → flush producer → commit offsets → leave the group → exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::config::Settings;
use crate::core::Journey;
use crate::http::{self, Health, QueryApi};
use crate::pipeline::status::Status;
use crate::pipeline::{self, Handles, PipelineError};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the runtime or bind {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    /// The HTTP address `http.listen` names cannot be bound: in the shape of a refused setting
    /// (the cause is in the message, not a `source`, so that it is not printed twice).
    #[error("http.listen: cannot bind {addr}: {cause}; {}", listen_fix(.cause))]
    Listen { addr: SocketAddr, cause: std::io::Error },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("the pipeline did not stop within {0:?}")]
    StopTimeout(Duration),
    #[error("membership: {0}")]
    Members(crate::members::MembersError),
}

/// What to do when `http.listen` cannot be bound, by the reason.
fn listen_fix(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "another process holds the port: set http.listen (or MICROFUNNEL__HTTP__LISTEN) to a free port \
             (port 0 picks one), or stop what holds it"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "the address is not one of this host's: use one of its addresses, 127.0.0.1 or 0.0.0.0"
        }
        std::io::ErrorKind::PermissionDenied => "ports below 1024 need privileges: use a port above 1023",
        _ => "set http.listen (or MICROFUNNEL__HTTP__LISTEN) to an address this host can bind",
    }
}

/// A started service.
pub struct Running {
    pub http_addr: SocketAddr,
    pub metrics: Metrics,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    done: mpsc::Receiver<Result<(), PipelineError>>,
    shutdown_timeout: Duration,
    runtime: Runtime,
    /// The thread publishing and reading `<group>.members` (with the query API on).
    members: Option<std::thread::JoinHandle<()>>,
}

/// Starts the HTTP endpoints and the pipeline thread; returns once both are launched.
pub fn start(settings: Settings, journey: Arc<Journey>) -> Result<Running, AppError> {
    settings.check_state_dir()?;
    let metrics = Metrics::new(&journey)?;
    // Every start-time refusal comes before the port is bound: a refused start holds nothing.
    pipeline::check_topics(&settings, &journey)?;
    let ready = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = settings.listen_addr();
    let bind_err = |source| AppError::Bind { addr: addr.to_string(), source };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("microfunnel-http")
        .enable_all()
        .build()
        .map_err(bind_err)?;
    let listener =
        runtime.block_on(tokio::net::TcpListener::bind(addr)).map_err(|cause| AppError::Listen { addr, cause })?;
    let http_addr = listener.local_addr().map_err(bind_err)?;
    let advertised = (!settings.http.advertised_url.is_empty()).then_some(settings.http.advertised_url.as_str());
    let membership = crate::members::Membership::new(&crate::members::instance_id(http_addr.port()), advertised);
    let status = Status::with_membership(membership.clone());
    let members = if settings.http.query_api {
        match crate::members::spawn(&settings.kafka, membership, status.clone(), Arc::clone(&stop)) {
            Ok(t) => Some(t),
            Err(e @ crate::members::MembersError::Missing { .. }) => {
                tracing::warn!(error = %e, "a 421 will not name the instance that holds a prospect");
                None
            }
            Err(e) => return Err(AppError::Members(e)),
        }
    } else {
        None
    };
    let (query, inbox) = if settings.http.query_api {
        let (queries, inbox) = pipeline::query::channel(64);
        let token = (!settings.http.token.is_empty()).then(|| Arc::from(settings.http.token.as_str()));
        (Some(QueryApi { queries, token, show_emails: settings.http.show_emails }), Some(inbox))
    } else {
        (None, None)
    };
    let health = Health { metrics: metrics.clone(), ready: Arc::clone(&ready), status: status.clone(), query };
    let app = http::router(health);
    runtime.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    tracing::info!("metrics at http://{http_addr}/metrics, health at /healthz and /readyz");
    if settings.http.query_api {
        tracing::info!("query API at http://{http_addr}/prospects/{{id}}, /funnel, /signals, /rules and /forecast");
    }
    let (tx, done) = mpsc::channel();
    let handles = Handles {
        metrics: metrics.clone(),
        ready: Arc::clone(&ready),
        stop: Arc::clone(&stop),
        status: status.clone(),
        queries: inbox,
    };
    let shutdown_timeout = Duration::from_millis(settings.pipeline.shutdown_timeout_ms);
    std::thread::Builder::new()
        .name("microfunnel-pipeline".into())
        .spawn(move || {
            let _ = tx.send(pipeline::run(settings, journey, handles));
        })
        .map_err(bind_err)?;
    Ok(Running { http_addr, metrics, ready, stop, done, shutdown_timeout, runtime, members })
}

impl Running {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Asks the pipeline to stop; `wait` then returns once it has flushed and committed.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Waits for the pipeline to finish (after `request_stop`, within the shutdown deadline).
    pub fn wait(self) -> Result<(), AppError> {
        let limit = self.shutdown_timeout + Duration::from_secs(5);
        let result = match self.done.recv_timeout(limit) {
            Ok(r) => r.map_err(AppError::from),
            Err(_) => Err(AppError::StopTimeout(limit)),
        };
        if let Some(t) = self.members {
            self.stop.store(true, Ordering::Release);
            // It stops with the same flag, within one poll and a 2 s flush.
            let _ = t.join();
        }
        self.runtime.shutdown_timeout(Duration::from_secs(1));
        result
    }

    /// Runs until SIGINT/SIGTERM (or the pipeline fails), then stops in order.
    pub fn run_until_signal(self) -> Result<(), AppError> {
        let stop = Arc::clone(&self.stop);
        self.runtime.spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        stop.store(true, Ordering::Release);
                        return;
                    }
                };
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            #[cfg(not(unix))]
            let _ = ctrl_c.await;
            tracing::info!("stopping: finishing in-flight work, flushing outputs, committing offsets");
            stop.store(true, Ordering::Release);
        });
        // Wait for the pipeline: it ends after a signal, or on its own with an error.
        loop {
            match self.done.recv_timeout(Duration::from_millis(200)) {
                Ok(r) => {
                    self.runtime.shutdown_timeout(Duration::from_secs(1));
                    return r.map_err(AppError::from);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.stop.load(Ordering::Acquire) {
                        return self.wait();
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }
}
