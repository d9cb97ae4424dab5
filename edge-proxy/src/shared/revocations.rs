//! Sign-outs and used sign-in tickets, known to every replica.
//!
//! Ending an id writes it to one sorted set (score: when it would have
//! lapsed anyway) and publishes it on a channel of the same name, in one
//! script, so "was it already ended?" has one answer for all replicas (a
//! ticket is used once, whichever replica sees it). Each replica follows
//! the channel into its own [`Revocations`], which requests read without
//! touching Redis; whenever it (re)subscribes it first loads the set, so
//! what it missed while away is not lost.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::SharedState;
use crate::auth::session::Revocations;

/// KEYS[1]: the set (and channel); ARGV[1]: the id, ARGV[2]: until when
/// (unix seconds), ARGV[3]: entries kept at most. Returns 1 if the id was
/// not ended yet, 0 if it was.
pub(super) const END: &str = r"
local now = tonumber(redis.call('TIME')[1])
local was = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if was and was > now then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if extra > 0 then
  redis.call('ZPOPMIN', KEYS[1], extra)
end
redis.call('PUBLISH', KEYS[1], ARGV[2] .. ' ' .. ARGV[1])
return 1
";

/// Entries the shared set keeps at most (as each replica's own
/// [`Revocations`]).
const MAX_ENDED: usize = 100_000;

/// How often a sign-out Redis missed is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The longest wait between two attempts to follow the channel.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What ending an id came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Ended now, for every replica.
    First,
    /// It had been ended before (here or on another replica).
    Already,
    /// Redis did not answer: the caller decides as `on_failure` says.
    Unavailable,
}

impl SharedState {
    pub(super) fn revocations_key(&self) -> String {
        format!("{}:ended", self.prefix)
    }

    /// Ends `id` until `until` (unix seconds) on every replica. If Redis
    /// does not answer, it is ended there as soon as Redis is back (a
    /// sign-out is never lost to an outage).
    pub async fn end(&self, id: &str, until: u64) -> Ended {
        let mut connection = self.connection.clone();
        let mut invocation = self.end.key(self.revocations_key());
        invocation.arg(id).arg(until).arg(MAX_ENDED);
        let answer = self
            .call_rarely(invocation.invoke_async::<u8>(&mut connection))
            .await;
        match answer {
            Some(1) => Ended::First,
            Some(_) => Ended::Already,
            None => {
                tokio::spawn(end_later(
                    connection,
                    self.end.clone(),
                    self.revocations_key(),
                    (id.to_owned(), until),
                    self.stop.clone(),
                ));
                Ended::Unavailable
            }
        }
    }
}

/// Ends `id` in Redis once it answers again, unless it lapses first or
/// the shared state is replaced.
async fn end_later(
    mut connection: ConnectionManager,
    script: redis::Script,
    key: String,
    (id, until): (String, u64),
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(RETRY_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if crate::auth::now() >= until {
            return;
        }
        let mut invocation = script.key(&key);
        invocation.arg(&id).arg(until).arg(MAX_ENDED);
        let call = invocation.invoke_async::<u8>(&mut connection);
        if let Ok(Ok(_)) = tokio::time::timeout(RETRY_EVERY, call).await {
            info!("a sign-out made while redis was away has reached it");
            return;
        }
    }
}

/// Follows the other replicas' sign-outs into `revocations` until `stop`.
pub(super) async fn follow(
    client: redis::Client,
    mut connection: ConnectionManager,
    key: String,
    revocations: Arc<Revocations>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut outage_logged = false;
    loop {
        let followed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&key).await?;
            // Subscribed first, loaded second: nothing ended in between is
            // missed.
            let now = crate::auth::now();
            let ended: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg(now)
                .arg("+inf")
                .arg("WITHSCORES")
                .query_async(&mut connection)
                .await?;
            for (id, until) in &ended {
                revocations.end(id, *until as u64, now);
            }
            info!(
                loaded = ended.len(),
                "following sign-outs of the other replicas through redis"
            );
            backoff = Duration::from_millis(100);
            outage_logged = false;
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let payload = message.get_payload_bytes();
                match parse(payload) {
                    Some((until, id)) => {
                        revocations.end(id, until, crate::auth::now());
                    }
                    None => debug!(?payload, "not a sign-out; ignored"),
                }
            }
            Ok::<_, redis::RedisError>(())
        };
        let why = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = followed => match outcome {
                Ok(()) => "redis closed the subscription".to_owned(),
                Err(e) => e.to_string(),
            },
        };
        if !outage_logged {
            warn!(error = %why, "cannot follow sign-outs through redis; retrying");
            outage_logged = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `"<until> <id>"`, as [`END`] publishes it.
fn parse(payload: &[u8]) -> Option<(u64, &str)> {
    let (until, id) = std::str::from_utf8(payload).ok()?.split_once(' ')?;
    let until = until.parse().ok()?;
    (!id.is_empty()).then_some((until, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_sign_outs_are_read_back_and_anything_else_is_not() {
        assert_eq!(parse(b"1700000000 abc"), Some((1_700_000_000, "abc")));
        assert_eq!(parse(b"1700000000 a b"), Some((1_700_000_000, "a b")));
        assert_eq!(parse(b"1700000000 "), None);
        assert_eq!(parse(b"soon abc"), None);
        assert_eq!(parse(b"abc"), None);
        assert_eq!(parse(&[0xff, b' ', b'a']), None);
    }
}
