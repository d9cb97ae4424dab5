//! Which replica holds which tunnels: one sorted set per environment,
//! members the replicas holding one of its tunnels, scores when that
//! claim lapses (Redis's clock). A replica refreshes its claims every
//! [`REFRESH`] and at once when it gains or loses an environment; one
//! that dies stops refreshing and drops out after [`TTL`].

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::SharedState;

use super::{REFRESH, TTL};

/// How long one publication may take (it never holds a request).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// KEYS: the environments' sets; ARGV[1]: the replica, ARGV[2]: the TTL
/// in seconds.
const HOLD: &str = r"
local now = tonumber(redis.call('TIME')[1])
local ttl = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  redis.call('EXPIRE', key, ttl)
end
return 1
";

/// KEYS[1]: an environment's set. The replicas whose claim holds now.
pub(super) const HOLDERS: &str = r"
local now = tonumber(redis.call('TIME')[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
";

fn key(prefix: &str, environment: &str) -> String {
    format!("{prefix}:tunnels:{environment}")
}

impl SharedState {
    /// The other replicas holding a tunnel of `environment`, as far as
    /// Redis knows within the budget.
    pub async fn holders(&self, environment: &str) -> Option<Vec<String>> {
        let mut connection = self.connection.clone();
        let invocation = self.holders.key(key(&self.prefix, environment));
        let mut holders = self
            .call_rarely(invocation.invoke_async::<Vec<String>>(&mut connection))
            .await?;
        holders.retain(|r| *r != self.replica);
        Some(holders)
    }

    /// Publishes what `environments` says this replica holds.
    pub(super) fn publisher(
        &self,
        environments: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
        changed: Arc<Notify>,
    ) -> Publisher {
        Publisher {
            connection: self.connection.clone(),
            hold: Script::new(HOLD),
            prefix: self.prefix.clone(),
            replica: self.replica.clone(),
            environments,
            changed,
            published: self.published.clone(),
        }
    }

    /// Withdraws this replica's claims (it is leaving): after the
    /// publication in flight, if any, and with none after it.
    pub async fn withdraw(&self) {
        self.stop.cancel();
        let nothing = self.publisher(Arc::new(Vec::new), Default::default());
        if let Err(e) = nothing.once().await {
            debug!(error = %e, "could not withdraw this replica's tunnels from redis");
        }
    }
}

pub(super) struct Publisher {
    connection: ConnectionManager,
    hold: Script,
    prefix: String,
    replica: String,
    environments: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    changed: Arc<Notify>,
    /// What the last publication claimed; held while one is under way.
    published: Arc<Mutex<Vec<String>>>,
}

impl Publisher {
    /// Claims the environments held now and withdraws the ones no longer
    /// held.
    async fn once(&self) -> anyhow::Result<()> {
        let mut published = self.published.lock().await;
        let mut held = (self.environments)();
        held.sort();
        let gone: Vec<String> = (published.iter())
            .filter(|e| held.binary_search(e).is_err())
            .cloned()
            .collect();
        let mut connection = self.connection.clone();
        let publish = async {
            if !held.is_empty() {
                let mut invocation = self.hold.prepare_invoke();
                for environment in &held {
                    invocation.key(key(&self.prefix, environment));
                }
                invocation.arg(&self.replica).arg(TTL.as_secs());
                invocation.invoke_async::<u8>(&mut connection).await?;
            }
            if !gone.is_empty() {
                let mut pipe = redis::pipe();
                for environment in &gone {
                    pipe.zrem(key(&self.prefix, environment), &self.replica)
                        .ignore();
                }
                pipe.query_async::<()>(&mut connection).await?;
            }
            Ok::<_, redis::RedisError>(())
        };
        tokio::time::timeout(PUBLISH_TIMEOUT, publish).await??;
        *published = held;
        Ok(())
    }
}

/// Keeps this replica's claims current until `stop` (a reload replaced
/// the settings; claims left behind lapse, and withdrawing them could race
/// the new state's claims in the same Redis).
pub(super) async fn publish(publisher: Publisher, stop: CancellationToken) {
    let mut failing = false;
    loop {
        match publisher.once().await {
            Ok(()) if failing => {
                info!("publishing this replica's tunnels to redis again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                warn!(error = %e, "cannot publish this replica's tunnels to redis; retrying");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REFRESH) => {}
            _ = publisher.changed.notified() => {}
        }
    }
}
