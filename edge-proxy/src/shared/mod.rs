//! State shared by the edge's replicas through Redis (`redis:`):
//!
//! - rate limits counted once for all of them ([`limits`]): one atomic
//!   script per decision (GCRA, on Redis's clock, so replicas whose clocks
//!   differ still agree);
//! - sign-outs and used sign-in tickets ([`revocations`]): written to a
//!   sorted set and published; every replica follows the channel and loads
//!   the set whenever it (re)subscribes;
//! - which replica holds which tunnels ([`tunnels`]): entries that lapse
//!   unless refreshed, so a replica that dies leaves no lie behind;
//! - the replicas alive, by the tunnel URL sidecars dial ([`replicas`]),
//!   told to sidecars so each keeps sessions with every replica.
//!
//! Redis is never allowed to stall a request: each call has a budget
//! (`redis.budget`), past which, or when Redis cannot be reached, the
//! replica decides alone (`on_failure: open`, the default) or refuses
//! (`closed`). After a failure Redis is left alone for a moment, then one
//! request tries it again; the change is logged once each way and counted.
//!
//! Uses `limits` (what a decision is about), `auth` (the sign-outs it
//! feeds) and `config` (the settings).

mod limits;
mod replicas;
mod revocations;
mod tunnels;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::session::Revocations;
use crate::config::RedisSettings;
use crate::limits::Refused;

pub use revocations::Ended;

/// How often a replica renews what it claims in Redis (the tunnels it
/// holds, its tunnel URL).
const REFRESH: Duration = Duration::from_secs(10);

/// How long a claim lasts unless renewed: a replica that dies drops out.
const TTL: Duration = Duration::from_secs(30);

/// How long what is asked rarely may wait for Redis (see
/// [`SharedState::call_rarely`]).
const RARE_CALL_BUDGET: Duration = Duration::from_millis(500);

/// How long Redis is left alone after a failed call before a request
/// tries it again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What a shared decision came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Admitted,
    Refused(Refused),
    /// Redis did not answer within the budget or at all: the caller
    /// decides as `on_failure` says.
    Unavailable,
}

/// The shared state in force, swapped by a reload that changes `redis:`.
pub type InForce = arc_swap::ArcSwapOption<SharedState>;

/// What this replica shares and learns: fixed for the process.
#[derive(Clone)]
pub struct Local {
    /// This replica's name in Redis, unless the config gives one.
    pub replica: String,
    /// Where sign-outs on other replicas land.
    pub revocations: Arc<Revocations>,
    /// The environments whose tunnels this replica holds.
    pub environments: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    /// Notified when those change.
    pub environments_changed: Arc<Notify>,
    /// This replica's tunnel URL (`tunnel.advertise`), announced to the
    /// others.
    pub advertise: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    /// Notified when that changes (a reload).
    pub advertise_changed: Arc<Notify>,
    /// Told the tunnel URLs of the replicas alive (this one's included).
    pub learned: Arc<dyn Fn(Vec<String>) + Send + Sync>,
}

/// The shared state for `settings`, or none; logs why not. Starts
/// following sign-outs and publishing tunnels until it is dropped.
pub fn for_settings(settings: Option<&RedisSettings>, local: &Local) -> Option<Arc<SharedState>> {
    let settings = settings?;
    match SharedState::connect(settings, local) {
        Ok(shared) => {
            info!(
                budget = ?settings.budget,
                on_failure = if settings.fail_closed { "closed" } else { "open" },
                replica = %shared.replica,
                "rate limits, sign-outs and tunnels are shared through redis"
            );
            Some(Arc::new(shared))
        }
        Err(e) => {
            warn!(error = %e, "redis: cannot use these settings; state stays per replica");
            None
        }
    }
}

/// The replicas' shared state.
pub struct SharedState {
    connection: ConnectionManager,
    gcra: Script,
    end: Script,
    holders: Script,
    prefix: String,
    /// This replica's name (which tunnels it holds).
    pub replica: String,
    budget: Duration,
    /// Refuse, rather than decide locally, while Redis is unreachable.
    pub fail_closed: bool,
    healthy: AtomicBool,
    /// When the last failure was (to leave Redis alone for a moment).
    failed_at: Mutex<Option<Instant>>,
    /// Calls Redis did not answer (timed out or failed).
    pub failures: AtomicU64,
    /// The environments this replica last published (to withdraw them).
    published: Arc<tokio::sync::Mutex<Vec<String>>>,
    /// Stops the follower and the publisher (when this state is replaced,
    /// or the replica leaves).
    stop: CancellationToken,
    /// Stops announcing this replica (it is leaving).
    announcing: CancellationToken,
    advertise: Arc<dyn Fn() -> Option<String> + Send + Sync>,
}

impl Drop for SharedState {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("prefix", &self.prefix)
            .field("replica", &self.replica)
            .field("budget", &self.budget)
            .field("fail_closed", &self.fail_closed)
            .finish_non_exhaustive()
    }
}

impl SharedState {
    /// Connects (lazily: an unreachable Redis at start is a failure like
    /// any other, and the connection is retried in the background), and
    /// starts following sign-outs and publishing `local`'s tunnels. Needs
    /// a Tokio runtime, which drives the connection and those tasks.
    pub fn connect(settings: &RedisSettings, local: &Local) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.budget.max(Duration::from_millis(100))))
            .set_response_timeout(Some(settings.budget.max(Duration::from_millis(100))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let stop = CancellationToken::new();
        let state = Self {
            connection,
            gcra: Script::new(limits::GCRA),
            end: Script::new(revocations::END),
            holders: Script::new(tunnels::HOLDERS),
            prefix: settings.key_prefix.clone(),
            replica: (settings.replica.clone()).unwrap_or_else(|| local.replica.clone()),
            budget: settings.budget,
            fail_closed: settings.fail_closed,
            healthy: AtomicBool::new(true),
            failed_at: Mutex::new(None),
            failures: AtomicU64::new(0),
            published: Default::default(),
            stop: stop.clone(),
            announcing: stop.child_token(),
            advertise: local.advertise.clone(),
        };
        let announcer = replicas::Announcer {
            client: client.clone(),
            connection: state.connection.clone(),
            key: replicas::key(&state.prefix),
            advertise: local.advertise.clone(),
            learned: local.learned.clone(),
            advertise_changed: local.advertise_changed.clone(),
        };
        tokio::spawn(announcer.run(state.announcing.clone()));
        tokio::spawn(revocations::follow(
            client,
            state.connection.clone(),
            state.revocations_key(),
            local.revocations.clone(),
            stop.clone(),
        ));
        let publisher = state.publisher(
            local.environments.clone(),
            local.environments_changed.clone(),
        );
        tokio::spawn(tunnels::publish(publisher, stop));
        Ok(state)
    }

    /// Runs `call` within the budget (when Redis is worth trying now),
    /// keeping track of Redis's health. `None`: no answer.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        self.call_within(self.budget, call).await
    }

    /// [`Self::call`] for what is asked rarely (a sign-out, a request that
    /// failed already): worth a longer wait than the request budget.
    async fn call_rarely<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        self.call_within(self.budget.max(RARE_CALL_BUDGET), call)
            .await
    }

    async fn call_within<T>(
        &self,
        budget: Duration,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        if !self.worth_trying() {
            return None;
        }
        match tokio::time::timeout(budget, call).await {
            Ok(Ok(answer)) => {
                self.succeeded();
                Some(answer)
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed(&format!("no answer within {budget:?}"));
                None
            }
        }
    }

    /// Whether to ask Redis now: always while it answers; after a failure,
    /// once per [`RETRY_AFTER_FAILURE`].
    fn worth_trying(&self) -> bool {
        if self.healthy.load(Ordering::Relaxed) {
            return true;
        }
        let mut failed_at = self.failed_at.lock().unwrap_or_else(|e| e.into_inner());
        match *failed_at {
            Some(at) if at.elapsed() < RETRY_AFTER_FAILURE => false,
            _ => {
                // This request tries; the others wait for its verdict.
                *failed_at = Some(Instant::now());
                true
            }
        }
    }

    fn succeeded(&self) {
        if !self.healthy.swap(true, Ordering::Relaxed) {
            info!("redis answers again: state is shared across replicas again");
        }
    }

    fn failed(&self, why: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.failed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if self.healthy.swap(false, Ordering::Relaxed) {
            let fallback = if self.fail_closed {
                "refusing what needs it: limited requests, sign-in tickets (redis.on_failure: closed)"
            } else {
                "this replica decides alone: limits in its memory, sign-outs its own (redis.on_failure: open)"
            };
            warn!(error = why, "redis unavailable: {fallback}");
        }
    }

    /// This replica is leaving: the others stop telling sidecars of it
    /// now (its tunnels stay claimed while they drain).
    pub async fn leave(&self) {
        self.announcing.cancel();
        if let Some(url) = (self.advertise)() {
            replicas::leave(self.connection.clone(), &replicas::key(&self.prefix), &url).await;
        }
    }

    /// Redis answers (the last call went through it).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// Settings for a Redis nobody listens on.
    pub fn settings() -> RedisSettings {
        RedisSettings {
            url: "redis://127.0.0.1:1".into(),
            budget: Duration::from_millis(5),
            fail_closed: false,
            key_prefix: "p".into(),
            replica: None,
        }
    }

    pub fn local() -> Local {
        Local {
            replica: "test:1".into(),
            revocations: Default::default(),
            environments: Arc::new(Vec::new),
            environments_changed: Default::default(),
            advertise: Arc::new(|| None),
            advertise_changed: Default::default(),
            learned: Arc::new(|_| {}),
        }
    }
}
