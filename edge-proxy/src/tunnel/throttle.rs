//! Failed sidecar authentications, throttled per source.
//!
//! A wrong token costs the edge a TLS handshake, an HTTP/2 stream, a hash
//! and an answer. Unthrottled, one client on one connection makes
//! thousands of attempts a second, and each used to be answered at once
//! and logged. Per source (an IPv4 address, an IPv6 /64), in the manner of
//! sshd's `MaxAuthTries` and fail2ban:
//!
//! - the first [`FREE_FAILURES`] failures are answered at once; the first
//!   is logged with its reason, which is what an operator needs to fix a
//!   misconfigured sidecar;
//! - after that, each answer waits, from [`FIRST_DELAY`] doubling up to
//!   [`MAX_DELAY`]: an honest sidecar backs off longer than that anyway;
//! - at [`LOCKOUT_AFTER`] failures the source is locked out for
//!   [`LOCKOUT`]: the connection that failed is closed, and new ones are
//!   closed as they are accepted, before any TLS;
//! - failures are forgiven one per [`FORGIVE_EVERY`], so a sidecar that
//!   retries with its usual backoff (a token just revoked, say) is delayed
//!   at worst and never locked out.
//!
//! Everything else is counted and told in one summary line at most every
//! [`SUMMARY_EVERY`]. Successes are not recorded: a good token from a
//! source that also failed is simply served (until it is locked out), and
//! the hot path (one data stream per proxied connection) takes no lock.
//! At most [`MAX_SOURCES`] sources are tracked; beyond that, failures are
//! counted and answered without delay.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

/// Failures a source may have before its answers are delayed.
pub const FREE_FAILURES: u32 = 5;
/// The first delayed answer's wait; it doubles with each failure.
pub const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest wait before an answer.
pub const MAX_DELAY: Duration = Duration::from_secs(4);
/// Failures that lock a source out.
pub const LOCKOUT_AFTER: u32 = 20;
/// How long a lockout lasts.
pub const LOCKOUT: Duration = Duration::from_secs(60);
/// One failure is forgiven per this long.
pub const FORGIVE_EVERY: Duration = Duration::from_secs(10);
/// Most sources tracked at once (about 64 bytes each).
pub const MAX_SOURCES: usize = 65_536;
/// At most one summary line per this long.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Where attempts come from: an IPv4 address, or an IPv6 /64 (what one
/// host usually gets to choose its addresses from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Source(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => ip.fmt(f),
            IpAddr::V6(ip) => write!(f, "{ip}/64"),
        }
    }
}

/// What to do with a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Wait this long before answering.
    pub delay: Duration,
    /// Close the connection: the source is locked out.
    pub close: bool,
}

#[derive(Debug)]
struct Record {
    /// Failures not yet forgiven.
    failures: u32,
    /// Forgiveness is counted from here.
    since: Instant,
    locked_until: Option<Instant>,
}

impl Record {
    fn forgive(&mut self, now: Instant) {
        let periods = now.duration_since(self.since).as_secs_f64() / FORGIVE_EVERY.as_secs_f64();
        let forgiven = (periods as u32).min(self.failures);
        self.failures -= forgiven;
        self.since = if self.failures == 0 {
            now
        } else {
            self.since + FORGIVE_EVERY * forgiven
        };
        if self.locked_until.is_some_and(|until| now >= until) {
            self.locked_until = None;
        }
    }

    fn forgotten(&self) -> bool {
        self.failures == 0 && self.locked_until.is_none()
    }
}

/// Counts since the edge started; see [`AuthThrottle::totals`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Failed authentications.
    pub failed: u64,
    /// Of those, answered after a wait.
    pub delayed: u64,
    /// Connections closed because their source was locked out.
    pub refused: u64,
    /// Lockouts begun.
    pub lockouts: u64,
}

#[derive(Debug, Default)]
pub struct AuthThrottle {
    sources: Mutex<HashMap<Source, Record>>,
    /// Sources locked out now or recently: lets [`Self::refuses`] skip the
    /// lock while no one is.
    locked: AtomicUsize,
    failed: AtomicU64,
    delayed: AtomicU64,
    refused: AtomicU64,
    lockouts: AtomicU64,
}

impl AuthThrottle {
    /// Records a failed authentication from `ip` (`reason` is what the
    /// sidecar is told) and says what to do with it.
    pub fn failed(&self, ip: IpAddr, reason: &str, now: Instant) -> Verdict {
        let source = Source::from(ip);
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
            self.forget_forgiven(&mut sources, now);
            if sources.len() >= MAX_SOURCES {
                return Verdict {
                    delay: Duration::ZERO,
                    close: false,
                };
            }
        }
        let record = sources.entry(source).or_insert(Record {
            failures: 0,
            since: now,
            locked_until: None,
        });
        record.forgive(now);
        if record.locked_until.is_some() {
            // Already locked out: a request that was on its way.
            return Verdict {
                delay: Duration::ZERO,
                close: true,
            };
        }
        record.failures += 1;
        let failures = record.failures;
        if failures == 1 {
            warn!(%source, reason, "sidecar rejected (further failures from this source are summarized)");
        }
        if failures >= LOCKOUT_AFTER {
            record.locked_until = Some(now + LOCKOUT);
            self.locked.fetch_add(1, Ordering::Relaxed);
            self.lockouts.fetch_add(1, Ordering::Relaxed);
            warn!(%source, failures, lockout = ?LOCKOUT, "sidecar authentication: source locked out");
            return Verdict {
                delay: Duration::ZERO,
                close: true,
            };
        }
        let delay = match failures.checked_sub(FREE_FAILURES + 1) {
            None => Duration::ZERO,
            Some(doublings) => FIRST_DELAY
                .saturating_mul(1 << doublings.min(16))
                .min(MAX_DELAY),
        };
        if !delay.is_zero() {
            self.delayed.fetch_add(1, Ordering::Relaxed);
        }
        Verdict {
            delay,
            close: false,
        }
    }

    /// Whether a new connection from `ip` is refused (and counts it).
    pub fn refuses(&self, ip: IpAddr, now: Instant) -> bool {
        if self.locked.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let Some(record) = sources.get_mut(&Source::from(ip)) else {
            return false;
        };
        let was_locked = record.locked_until.is_some();
        record.forgive(now);
        if was_locked && record.locked_until.is_none() {
            self.locked.fetch_sub(1, Ordering::Relaxed);
        }
        let locked = record.locked_until.is_some();
        if locked {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        locked
    }

    pub fn totals(&self) -> Totals {
        Totals {
            failed: self.failed.load(Ordering::Relaxed),
            delayed: self.delayed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            lockouts: self.lockouts.load(Ordering::Relaxed),
        }
    }

    /// Forgets what is forgiven and returns how many sources are tracked
    /// and how many are locked out now.
    fn sweep(&self, now: Instant) -> (usize, usize) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let locked = self.forget_forgiven(&mut sources, now);
        (sources.len(), locked)
    }

    /// Drops the records of sources whose failures are all forgiven and
    /// whose lockout ended; recounts and returns the sources locked out.
    fn forget_forgiven(&self, sources: &mut HashMap<Source, Record>, now: Instant) -> usize {
        sources.retain(|_, r| {
            r.forgive(now);
            !r.forgotten()
        });
        let locked = sources
            .values()
            .filter(|r| r.locked_until.is_some())
            .count();
        self.locked.store(locked, Ordering::Relaxed);
        locked
    }

    /// Every [`SUMMARY_EVERY`]: forgets forgiven sources and logs one line
    /// if anything failed or was refused since the last one. Runs until
    /// dropped.
    pub async fn summarize(&self) {
        let mut last = self.totals();
        let mut tick = tokio::time::interval(SUMMARY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let (sources, locked_out) = self.sweep(Instant::now());
            let now = self.totals();
            if now == last {
                continue;
            }
            let failed = now.failed - last.failed;
            let delayed = now.delayed - last.delayed;
            let refused = now.refused - last.refused;
            let lockouts = now.lockouts - last.lockouts;
            last = now;
            warn!(
                failed,
                delayed,
                refused,
                lockouts,
                sources,
                locked_out,
                total_failed = now.failed,
                "sidecar authentication failures in the last {SUMMARY_EVERY:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn free_failures_then_doubling_delays_then_a_lockout() {
        let throttle = AuthThrottle::default();
        let t = Instant::now();
        let verdicts: Vec<Verdict> = (0..LOCKOUT_AFTER)
            .map(|_| throttle.failed(ip("192.0.2.1"), "wrong token", t))
            .collect();
        let delays: Vec<Duration> = verdicts.iter().map(|v| v.delay).collect();
        let ms = Duration::from_millis;
        assert_eq!(delays[..5], [Duration::ZERO; 5]);
        assert_eq!(
            delays[5..10],
            [ms(250), ms(500), ms(1000), ms(2000), ms(4000)]
        );
        assert!(delays[10..19].iter().all(|d| *d == MAX_DELAY));
        assert!(verdicts[..19].iter().all(|v| !v.close));
        assert!(verdicts[19].close, "the 20th failure locks the source out");
        assert_eq!(
            throttle.totals(),
            Totals {
                failed: 20,
                delayed: 14,
                refused: 0,
                lockouts: 1
            }
        );
    }

    #[test]
    fn a_locked_out_source_is_refused_until_the_lockout_ends() {
        let throttle = AuthThrottle::default();
        let t = Instant::now();
        assert!(!throttle.refuses(ip("192.0.2.1"), t));
        for _ in 0..LOCKOUT_AFTER {
            throttle.failed(ip("192.0.2.1"), "wrong token", t);
        }
        assert!(throttle.refuses(ip("192.0.2.1"), t));
        assert!(throttle.refuses(ip("192.0.2.1"), t + LOCKOUT - Duration::from_secs(1)));
        assert!(!throttle.refuses(ip("192.0.2.2"), t), "another address");
        assert!(!throttle.refuses(ip("192.0.2.1"), t + LOCKOUT));
        assert_eq!(throttle.totals().refused, 2);
        assert_eq!(
            throttle.locked.load(Ordering::Relaxed),
            0,
            "the fast path is open again"
        );
    }

    #[test]
    fn a_sidecar_retrying_with_backoff_is_never_locked_out() {
        // A sidecar whose token was revoked: two connections, each backing
        // off 1, 2, 4 … 30 s, for an hour.
        let throttle = AuthThrottle::default();
        let start = Instant::now();
        let mut attempts = vec![];
        let mut at = Duration::ZERO;
        let mut backoff = Duration::from_secs(1);
        while at < Duration::from_secs(3600) {
            attempts.extend([at, at]);
            at += backoff;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        for at in attempts {
            let verdict = throttle.failed(ip("198.51.100.7"), "revoked", start + at);
            assert!(!verdict.close, "locked out at {at:?}");
            assert!(verdict.delay <= MAX_DELAY);
        }
    }

    #[test]
    fn failures_are_forgiven_over_time() {
        let throttle = AuthThrottle::default();
        let t = Instant::now();
        for _ in 0..FREE_FAILURES + 1 {
            throttle.failed(ip("192.0.2.1"), "wrong token", t);
        }
        // Six failures; after two forgiveness periods, four remain, so the
        // next one is the fifth: free again.
        let later = t + FORGIVE_EVERY * 2;
        assert_eq!(
            throttle.failed(ip("192.0.2.1"), "x", later).delay,
            Duration::ZERO
        );
        assert_eq!(
            throttle.sweep(later + FORGIVE_EVERY * 5),
            (0, 0),
            "forgotten"
        );
    }

    #[test]
    fn an_ipv6_host_cannot_escape_by_changing_addresses_in_its_64() {
        let throttle = AuthThrottle::default();
        let t = Instant::now();
        for i in 0..LOCKOUT_AFTER {
            throttle.failed(format!("2001:db8:1:2::{i:x}").parse().unwrap(), "x", t);
        }
        assert!(throttle.refuses(ip("2001:db8:1:2:ffff::1"), t));
        assert!(!throttle.refuses(ip("2001:db8:1:3::1"), t));
        assert!(
            throttle.refuses(ip("::ffff:192.0.2.9"), t) == throttle.refuses(ip("192.0.2.9"), t)
        );
        assert_eq!(
            Source::from(ip("2001:db8:1:2::5")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn tracked_sources_are_bounded() {
        let throttle = AuthThrottle::default();
        let t = Instant::now();
        for i in 0..MAX_SOURCES as u32 {
            throttle.failed(IpAddr::V4((0x0a00_0000 + i).into()), "x", t);
        }
        // Full: a new source is counted, answered without delay, not kept.
        for _ in 0..FREE_FAILURES + 3 {
            let v = throttle.failed(ip("192.0.2.1"), "x", t);
            assert_eq!(v.delay, Duration::ZERO);
        }
        assert_eq!(throttle.sources.lock().unwrap().len(), MAX_SOURCES);
        // Once the old ones are forgiven, room again.
        let later = t + FORGIVE_EVERY * 2;
        throttle.failed(ip("192.0.2.1"), "x", later);
        assert_eq!(throttle.sources.lock().unwrap().len(), 1);
    }
}
