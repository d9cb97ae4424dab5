//! Reconnect delays: exponential, capped, with jitter, reset after a
//! healthy period so a flapping edge is not hammered and a long-lived
//! tunnel reconnects fast after one blip.

use std::time::Duration;

/// A session that lived this long counts as healthy: the next failure
/// starts backing off from the minimum again.
pub const HEALTHY_PERIOD: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next delay: `min·2^attempt` capped at `max`, then a uniform
    /// random point in its upper half ("equal jitter"), so sidecars that
    /// lost the same edge do not come back in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = exp / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let exp = Duration::from_secs(1u64 << i).min(Duration::from_secs(60));
            assert!(
                *d >= exp / 2 && *d <= exp,
                "attempt {i}: {d:?} not in [{:?}, {exp:?}]",
                exp / 2
            );
        }
        assert!(delays[9] >= Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut b = Backoff::new(Duration::from_secs(8), Duration::from_secs(60));
            seen.insert(b.next_delay().as_millis());
        }
        assert!(seen.len() > 5, "{seen:?}");
    }
}
