//! Rate limits counted once for every replica.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Decision, SharedState};
use crate::limits::RateLimit;

/// GCRA on Redis's clock. KEYS[1]: the key; ARGV[1]: the emission
/// interval and ARGV[2] the burst tolerance (interval × burst), both in
/// microseconds. Returns {1, 0} when admitted, {0, µs to wait} when not.
pub(super) const GCRA: &str = r"
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

impl SharedState {
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
        let interval = limit.rate.period.as_micros() as u64 / u64::from(limit.rate.rate.get());
        let tolerance = interval.max(1) * u64::from(limit.rate.burst.get());
        let mut connection = self.connection.clone();
        let mut invocation = self.gcra.key(self.key(limit, value));
        invocation.arg(interval.max(1)).arg(tolerance);
        let answer = self
            .call(invocation.invoke_async::<(u8, u64)>(&mut connection))
            .await;
        match answer {
            Some((1, _)) => Decision::Admitted,
            Some((_, wait_us)) => Decision::Refused(limit.refusal(Duration::from_micros(wait_us))),
            None => Decision::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{Rate, Scope};
    use crate::shared::tests_support::{local, settings};
    use crate::shared::RETRY_AFTER_FAILURE;
    use std::num::NonZeroU32;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

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
            SharedState::connect(&settings(), &local()).unwrap(),
            SharedState::connect(&settings(), &local()).unwrap(),
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
        let shared = SharedState::connect(&settings(), &local()).unwrap();
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
