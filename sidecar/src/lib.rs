//! The sidecar: dials out to the edge and connects tunnel streams to the
//! services it is allowed to reach. Nothing here listens for visitors.
//!
//! # Layout
//! - [`config`]: YAML → validated config, including the target allowlist.
//! - [`session`]: one tunnel session (control stream, heartbeats, drain).
//! - [`tls`]: TLS to the edge: verification, pinning, client certificates, errors.
//! - [`stream`]: one proxied connection (dial target, pipe bytes).
//! - [`backoff`]: reconnect delays.
//!
//! [`Sidecar::run`] keeps `connections` sessions up, each reconnecting on its
//! own, until shutdown.

pub mod admin;
pub mod backoff;
pub mod config;
pub mod session;
pub mod stream;
pub mod tls;

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::SidecarConfig;
use session::SessionEnd;
use stream::Stats;

/// What the sidecar looks like from outside: for printing and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Sessions the edge currently accepts.
    pub connected: usize,
    /// Public URLs of the registered routes (from the edge).
    pub urls: Vec<String>,
    pub environment: String,
    /// The last failure, as the user should read it.
    pub last_error: Option<String>,
    /// Sessions that ended in a failure (the edge lost, refused, …).
    pub failures: u64,
}

pub struct Sidecar {
    config: Arc<SidecarConfig>,
    status: watch::Sender<Status>,
    /// Every session's stream counters added up, for metrics.
    totals: Arc<Stats>,
}

impl Sidecar {
    pub fn new(config: SidecarConfig) -> Self {
        Self {
            config: Arc::new(config),
            status: watch::Sender::new(Status::default()),
            totals: Arc::default(),
        }
    }

    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Every session's stream counters added up.
    pub fn totals(&self) -> Arc<Stats> {
        self.totals.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut sessions = tokio::task::JoinSet::new();
        for index in 0..self.config.connections {
            let config = self.config.clone();
            let status = self.status.clone();
            let shutdown = shutdown.clone();
            let totals = self.totals.clone();
            sessions.spawn(async move {
                keep_session(index, &config, &status, &totals, &shutdown).await
            });
        }
        while sessions.join_next().await.is_some() {}
    }
}

async fn keep_session(
    index: u32,
    config: &SidecarConfig,
    status: &watch::Sender<Status>,
    totals: &Arc<Stats>,
    shutdown: &CancellationToken,
) {
    let mut backoff = backoff::Backoff::new(config.reconnect_min, config.reconnect_max);
    while !shutdown.is_cancelled() {
        let started = tokio::time::Instant::now();
        let mut welcomed = false;
        let result = session::run(config, totals, shutdown, |welcome| {
            welcomed = true;
            info!(session = index, id = %welcome.session_id, environment = %welcome.environment, "tunnel up");
            status.send_modify(|s| {
                s.connected += 1;
                s.urls = welcome.urls.clone();
                s.environment = welcome.environment.clone();
                s.last_error = None;
            });
        })
        .await;
        if welcomed {
            status.send_modify(|s| s.connected -= 1);
        }
        if started.elapsed() >= backoff::HEALTHY_PERIOD {
            backoff.reset();
        }
        let delay = match result {
            Ok(SessionEnd::Shutdown) => return,
            Ok(SessionEnd::Drained) => {
                backoff.reset();
                backoff.next_delay() / 4
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if matches!(e, session::SessionError::Tls(_)) {
                    warn!(session = index, error = %e, retry_in = ?delay, "cannot reach the edge securely; check the edge URL and tls settings");
                } else if e.is_rejection() {
                    warn!(session = index, error = %e, retry_in = ?delay, "edge rejected this sidecar; check token and environment");
                } else {
                    warn!(session = index, error = %e, retry_in = ?delay, "tunnel down; reconnecting");
                }
                status.send_modify(|s| {
                    s.last_error = Some(e.to_string());
                    s.failures += 1;
                });
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::config::{Allowlist, Secret};

    /// The reconnect schedule on the sidecar's own clock, paused: each retry
    /// waits `min·2^n` capped at `max`, jittered into its upper half.
    #[tokio::test(start_paused = true)]
    async fn failed_sessions_are_retried_with_exponential_backoff_and_jitter() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(8));
        let sidecar = Sidecar::new(SidecarConfig {
            // A failure that needs no I/O, so the paused clock moves only
            // by the delays the sidecar sleeps.
            edge: "not a URL".into(),
            transport: crate::config::EdgeTransport::Plaintext { warn: false },
            token: Secret::new("token"),
            environment: "demo".into(),
            access: String::new(),
            owner: String::new(),
            name: "test".into(),
            connections: 1,
            connect_timeout: Duration::from_secs(2),
            reconnect_min: min,
            reconnect_max: max,
            admin: None,
            targets: Allowlist::default(),
        });
        let mut status = sidecar.status();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { sidecar.run(shutdown).await }
        });
        let mut failures = Vec::new();
        while failures.len() < 7 {
            status.changed().await.expect("the sidecar runs");
            assert!(status.borrow().last_error.is_some());
            failures.push(Instant::now());
        }
        for (n, pair) in failures.windows(2).enumerate() {
            let full = (min * 2u32.pow(n as u32)).min(max);
            let waited = pair[1] - pair[0];
            assert!(
                waited >= full / 2 && waited <= full,
                "retry {} after {waited:?}, not within [{:?}, {full:?}]",
                n + 1,
                full / 2
            );
        }
        shutdown.cancel();
        run.await.unwrap();
    }
}
