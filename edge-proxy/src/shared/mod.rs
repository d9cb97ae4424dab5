//! State shared by the edge's replicas through Redis (`redis:`): rate
//! limits counted once for all of them. One atomic script per decision
//! (GCRA, on Redis's clock, so replicas whose clocks differ still agree).
//!
//! Redis is never allowed to stall a request: each decision has a budget
//! (`redis.budget`), past which, or when Redis cannot be reached, the
//! request is decided by the replica's own in-memory limits
//! (`on_failure: open`, the default) or refused (`closed`). After a
//! failure Redis is left alone for a moment, then one request tries it
//! again; the change is logged once each way and counted.
//!
//! Uses `limits` (what a decision is about) and `config` (the settings).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::config::RedisSettings;
use crate::limits::{RateLimit, Refused};

/// How long Redis is left alone after a failed decision before a request
/// tries it again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// GCRA on Redis's clock. KEYS[1]: the key; ARGV[1]: the emission
/// interval and ARGV[2] the burst tolerance (interval × burst), both in
/// microseconds. Returns {1, 0} when admitted, {0, µs to wait} when not.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local next_tat = tat + interval
local allowed_at = next_tat - tolerance
if now < allowed_at then
  return {0, allowed_at - now}
end
redis.call('SET', KEYS[1], string.format('%d', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
return {1, 0}
";

/// What a shared decision came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Admitted,
    Refused(Refused),
    /// Redis did not answer within the budget or at all: the caller
    /// decides as `on_failure` says.
    Unavailable,
}

/// The shared limits in force, swapped by a reload that changes `redis:`.
pub type InForce = arc_swap::ArcSwapOption<SharedLimits>;

/// The shared limits for `settings`, or none; logs why not.
pub fn for_settings(settings: Option<&RedisSettings>) -> Option<std::sync::Arc<SharedLimits>> {
    let settings = settings?;
    match SharedLimits::connect(settings) {
        Ok(shared) => {
            info!(
                budget = ?settings.budget,
                on_failure = if settings.fail_closed { "closed" } else { "open" },
                "rate limits are shared through redis"
            );
            Some(std::sync::Arc::new(shared))
        }
        Err(e) => {
            warn!(error = %e, "redis: cannot use these settings; limits stay per replica");
            None
        }
    }
}

/// The replicas' shared limits.
pub struct SharedLimits {
    /// What it was made from (a reload with other settings replaces it).
    pub settings: RedisSettings,
    connection: ConnectionManager,
    script: Script,
    prefix: String,
    budget: Duration,
    /// Refuse, rather than decide locally, while Redis is unreachable.
    pub fail_closed: bool,
    healthy: AtomicBool,
    /// When the last failure was (to leave Redis alone for a moment).
    failed_at: Mutex<Option<Instant>>,
    /// Decisions Redis did not make (timed out or failed).
    pub failures: AtomicU64,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits")
            .field("prefix", &self.prefix)
            .field("budget", &self.budget)
            .field("fail_closed", &self.fail_closed)
            .finish_non_exhaustive()
    }
}

impl SharedLimits {
    /// Connects (lazily: an unreachable Redis at start is a failure like
    /// any other, and the connection is retried in the background). Needs
    /// a Tokio runtime, which drives the connection.
    pub fn connect(settings: &RedisSettings) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.budget.max(Duration::from_millis(100))))
            .set_response_timeout(Some(settings.budget.max(Duration::from_millis(100))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            settings: settings.clone(),
            connection,
            script: Script::new(GCRA),
            prefix: settings.key_prefix.clone(),
            budget: settings.budget,
            fail_closed: settings.fail_closed,
            healthy: AtomicBool::new(true),
            failed_at: Mutex::new(None),
            failures: AtomicU64::new(0),
        })
    }

    /// The Redis key of `limit` for one thing (`value`: an address, an
    /// identity, a route...): the same on every replica, new when the
    /// limit changes.
    pub fn key(&self, limit: &RateLimit, value: &str) -> String {
        let mut h = Sha256::new();
        h.update(limit.owner.as_deref().unwrap_or("").as_bytes());
        h.update([0]);
        h.update(value.as_bytes());
        let digest = h.finalize();
        format!(
            "{}:rl:{}:{}/{}/{}:{}",
            self.prefix,
            limit.scope.as_str(),
            limit.rate.rate,
            limit.rate.period.as_secs(),
            limit.rate.burst,
            hex::encode(&digest[..12])
        )
    }

    /// Counts one request under `limit` for `value`, across replicas.
    pub async fn check(&self, limit: &RateLimit, value: &str) -> Decision {
        if !self.worth_trying() {
            return Decision::Unavailable;
        }
        let interval = limit.rate.period.as_micros() as u64 / u64::from(limit.rate.rate.get());
        let tolerance = interval.max(1) * u64::from(limit.rate.burst.get());
        let mut connection = self.connection.clone();
        let mut invocation = self.script.key(self.key(limit, value));
        invocation.arg(interval.max(1)).arg(tolerance);
        let answer = tokio::time::timeout(
            self.budget,
            invocation.invoke_async::<(u8, u64)>(&mut connection),
        )
        .await;
        match answer {
            Ok(Ok((1, _))) => {
                self.succeeded();
                Decision::Admitted
            }
            Ok(Ok((_, wait_us))) => {
                self.succeeded();
                Decision::Refused(limit.refusal(Duration::from_micros(wait_us)))
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                Decision::Unavailable
            }
            Err(_) => {
                self.failed(&format!(
                    "no answer within redis.budget ({:?})",
                    self.budget
                ));
                Decision::Unavailable
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
            info!("redis answers again: limits are shared across replicas again");
        }
    }

    fn failed(&self, why: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.failed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if self.healthy.swap(false, Ordering::Relaxed) {
            let fallback = if self.fail_closed {
                "refusing requests that limits apply to (redis.on_failure: closed)"
            } else {
                "deciding limits in this replica's memory (redis.on_failure: open)"
            };
            warn!(error = why, "redis unavailable: {fallback}");
        }
    }

    /// Redis answers (the last decision went through it).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{Rate, Scope};
    use std::num::NonZeroU32;

    fn settings() -> RedisSettings {
        RedisSettings {
            url: "redis://127.0.0.1:1".into(),
            budget: Duration::from_millis(5),
            fail_closed: false,
            key_prefix: "p".into(),
        }
    }

    fn limit(rate: u32, owner: Option<&str>) -> RateLimit {
        let rate = NonZeroU32::new(rate).unwrap();
        RateLimit::new(
            Scope::Route,
            Rate {
                rate,
                period: Duration::from_secs(60),
                burst: rate,
            },
            false,
            owner.map(Into::into),
        )
    }

    #[tokio::test]
    async fn keys_name_the_thing_and_the_limit_the_same_on_every_replica() {
        let (a, b) = (
            SharedLimits::connect(&settings()).unwrap(),
            SharedLimits::connect(&settings()).unwrap(),
        );
        let key = a.key(&limit(10, None), "shop.example.com/");
        assert_eq!(key, b.key(&limit(10, None), "shop.example.com/"));
        assert!(key.starts_with("p:rl:route:10/60/10:"), "{key}");
        assert_ne!(key, a.key(&limit(10, None), "api.example.com/"));
        assert_ne!(key, a.key(&limit(11, None), "shop.example.com/"));
        assert_ne!(key, a.key(&limit(10, Some("x")), "shop.example.com/"));
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_unavailable_within_the_budget_then_left_alone() {
        let shared = SharedLimits::connect(&settings()).unwrap();
        let started = Instant::now();
        assert_eq!(
            shared.check(&limit(10, None), "x").await,
            Decision::Unavailable
        );
        assert!(!shared.healthy());
        assert_eq!(shared.failures.load(Ordering::Relaxed), 1);
        // Not asked again for a while: no wait at all.
        assert_eq!(
            shared.check(&limit(10, None), "x").await,
            Decision::Unavailable
        );
        assert_eq!(shared.failures.load(Ordering::Relaxed), 1);
        assert!(started.elapsed() < RETRY_AFTER_FAILURE);
    }
}
