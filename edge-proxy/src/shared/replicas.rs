//! The replicas alive, as sidecars dial them: each announces its
//! `tunnel.advertise` URL in one sorted set (score: when the announcement
//! lapses, on Redis's clock), refreshed every [`REFRESH`]. A new member is
//! published on a channel of the same name, and so is a replica leaving,
//! so the others re-read the set at once instead of at their next refresh:
//! a replica that just started is told to sidecars within a moment, before
//! visitors reach it. One that dies drops out after [`TTL`]; the set is
//! re-read every [`REFRESH`] too.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::Notify;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{REFRESH, TTL};

/// How long after a failure Redis is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// How long one renewal may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// KEYS[1]: the set (and channel); ARGV[1]: this replica's URL or empty,
/// ARGV[2]: the TTL in seconds. Returns the URLs announced now.
const ANNOUNCE: &str = r"
local now = tonumber(redis.call('TIME')[1])
local ttl = tonumber(ARGV[2])
if ARGV[1] ~= '' then
  if redis.call('ZADD', KEYS[1], now + ttl, ARGV[1]) == 1 then
    redis.call('PUBLISH', KEYS[1], '+' .. ARGV[1])
  end
  redis.call('EXPIRE', KEYS[1], ttl)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
";

/// KEYS[1]: the set (and channel); ARGV[1]: the URL leaving.
const LEAVE: &str = r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('PUBLISH', KEYS[1], '-' .. ARGV[1])
end
return 1
";

pub(super) fn key(prefix: &str) -> String {
    format!("{prefix}:replicas")
}

/// What one replica announces and where it hears of the others.
pub(super) struct Announcer {
    pub client: redis::Client,
    pub connection: ConnectionManager,
    pub key: String,
    /// This replica's URL now (`tunnel.advertise`, reloadable).
    pub advertise: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    /// Told the set after every read.
    pub learned: Arc<dyn Fn(Vec<String>) + Send + Sync>,
    /// Notified when `advertise` changes (a reload).
    pub advertise_changed: Arc<Notify>,
}

impl Announcer {
    /// Renews the announcement and returns the set. A URL announced
    /// before and changed since (a reload) leaves the set first.
    async fn announce(&self, announced: &mut Option<String>) -> anyhow::Result<Vec<String>> {
        let advertise = (self.advertise)();
        if let Some(old) = announced.take_if(|old| Some(&*old) != advertise.as_ref()) {
            leave(self.connection.clone(), &self.key, &old).await;
        }
        let mut connection = self.connection.clone();
        let script = Script::new(ANNOUNCE);
        let mut invocation = script.key(&self.key);
        invocation
            .arg(advertise.as_deref().unwrap_or_default())
            .arg(TTL.as_secs());
        let call = invocation.invoke_async::<Vec<String>>(&mut connection);
        let set = tokio::time::timeout(CALL_TIMEOUT, call).await??;
        *announced = advertise;
        Ok(set)
    }

    /// Announces this replica and follows the others until `stop`: the set
    /// is read after every change published and every [`REFRESH`].
    pub async fn run(self, stop: CancellationToken) {
        let (mut failing, mut announced) = (false, None);
        loop {
            let Err(error) = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = self.follow(&mut failing, &mut announced) => outcome,
            };
            if !failing {
                warn!(%error, "cannot announce this replica to the others through redis; retrying");
                failing = true;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    async fn follow(
        &self,
        failing: &mut bool,
        announced: &mut Option<String>,
    ) -> anyhow::Result<Infallible> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(&self.key).await?;
        let mut changes = pubsub.into_on_message();
        loop {
            // Subscribed first, read second: no change is missed.
            (self.learned)(self.announce(announced).await?);
            if std::mem::take(failing) {
                info!("announcing this replica to the others through redis again");
            }
            tokio::select! {
                change = changes.next() => if change.is_none() {
                    anyhow::bail!("redis closed the subscription");
                },
                _ = tokio::time::sleep(REFRESH) => {}
                _ = self.advertise_changed.notified() => {}
            }
        }
    }
}

/// Takes `url` out of the set at once and tells the others.
pub(super) async fn leave(mut connection: ConnectionManager, key: &str, url: &str) {
    let script = Script::new(LEAVE);
    let mut invocation = script.key(key);
    invocation.arg(url);
    let call = invocation.invoke_async::<u8>(&mut connection);
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => debug!(%error, "could not take this replica out of redis's set"),
        Err(_) => debug!("could not take this replica out of redis's set in time"),
    }
}
