//! Rate limits and concurrency caps, kept in this process: what each
//! counts under ([`Scope`] and a key), the limits themselves (GCRA through
//! `governor`, [`RateLimit`]; counts of what is in flight, [`Cap`]), and
//! what a refusal tells the client ([`Refused`]). Pure bookkeeping: no I/O,
//! no Pingora; the request phases decide when to ask.
//!
//! A limit's state outlives the config that made it: a reload hands an
//! unchanged limit the state of its predecessor ([`RateLimit::adopt`]), and
//! in-flight counts live in [`Gauges`], which every config shares.
//!
//! The bottom room: uses no other.

use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DashMapStateStore;
use governor::Quota;

/// What a limit counts under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Per client IP, before anything else (auth included) is done.
    Guard,
    ClientIp,
    /// Per visitor identity (issuer and subject).
    Identity,
    Route,
    Environment,
    Cluster,
    /// Per sidecar (its tunnel: all its connections to this edge).
    Tunnel,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::Guard,
        Scope::ClientIp,
        Scope::Identity,
        Scope::Route,
        Scope::Environment,
        Scope::Cluster,
        Scope::Tunnel,
    ];

    /// The name in YAML, logs and `RateLimit-Policy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guard => "guard",
            Self::ClientIp => "client_ip",
            Self::Identity => "identity",
            Self::Route => "route",
            Self::Environment => "environment",
            Self::Cluster => "cluster",
            Self::Tunnel => "tunnel",
        }
    }
}

/// The per-process seed keys are hashed with: keys are never compared
/// across processes (Redis keys are built from the values themselves).
fn seed() -> &'static foldhash::fast::RandomState {
    static SEED: OnceLock<foldhash::fast::RandomState> = OnceLock::new();
    SEED.get_or_init(Default::default)
}

/// The key a thing counts under: 64 bits of a keyed hash of its value.
pub fn key(value: impl Hash) -> u64 {
    seed().hash_one(value)
}

/// A client address as a key: IPv4 addresses one by one, IPv6 by their
/// /64 (one subscriber's prefix: a client holding one has 2^64 addresses
/// to rotate through).
pub fn ip_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => key(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => key(v4),
            None => key(v6.segments()[..4].to_vec()),
        },
    }
}

/// A rate: `rate` requests per `period`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub rate: NonZeroU32,
    /// Whole seconds, at least one (the `RateLimit` fields count in
    /// seconds).
    pub period: Duration,
    pub burst: NonZeroU32,
}

impl Rate {
    fn quota(&self) -> Quota {
        let interval = self.period / self.rate.get();
        Quota::with_period(interval.max(Duration::from_nanos(1)))
            .expect("a non-zero interval")
            .allow_burst(self.burst)
    }
}

type Keyed =
    governor::RateLimiter<u64, DashMapStateStore<u64, foldhash::fast::RandomState>, DefaultClock>;

/// A rate limit on one scope: GCRA, one state per key.
#[derive(Clone)]
pub struct RateLimit {
    pub scope: Scope,
    pub rate: Rate,
    pub dry_run: bool,
    /// What the limit is attached to, when it is one thing's own (a
    /// cluster's or a route's): two limits with the same scope and rate
    /// but different owners never share state.
    pub owner: Option<Arc<str>>,
    state: Arc<Keyed>,
    /// `RateLimit-Policy`, written once (a refusal copies it).
    policy: String,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("scope", &self.scope)
            .field("rate", &self.rate)
            .field("dry_run", &self.dry_run)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// Why a limit refused a request, and what the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub scope: Scope,
    /// A concurrency cap (not a rate).
    pub concurrency: bool,
    /// When a retry can succeed.
    pub retry_after: Duration,
    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-10).
    pub policy: String,
    pub dry_run: bool,
}

impl Refused {
    /// `Retry-After` in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }

    /// `RateLimit`: nothing left until `t` seconds from now.
    pub fn state(&self) -> String {
        format!(
            "\"{}\";r=0;t={}",
            self.scope.as_str(),
            self.retry_after_secs()
        )
    }
}

/// `RateLimit-Policy`: `"<scope>";q=<rate>;w=<period seconds>`.
fn policy(scope: Scope, rate: &Rate) -> String {
    let mut policy = format!(
        "\"{}\";q={};w={}",
        scope.as_str(),
        rate.rate,
        rate.period.as_secs().max(1)
    );
    if rate.burst != rate.rate {
        // Not a draft parameter: clients ignore what they do not know.
        let _ = write!(policy, ";burst={}", rate.burst);
    }
    policy
}

impl RateLimit {
    pub fn new(scope: Scope, rate: Rate, dry_run: bool, owner: Option<Arc<str>>) -> Self {
        let state = Keyed::dashmap_with_hasher(rate.quota(), Default::default());
        Self {
            policy: policy(scope, &rate),
            scope,
            rate,
            dry_run,
            owner,
            state: Arc::new(state),
        }
    }

    /// Takes over `old`'s counts when it is the same limit (scope, rate and
    /// owner): a config reload does not hand every client a fresh burst.
    pub fn adopt(&mut self, old: &RateLimit) {
        if self.scope == old.scope && self.rate == old.rate && self.owner == old.owner {
            self.state = old.state.clone();
        }
    }

    /// Counts one request under `key`; `Err` if it is over the limit (a
    /// dry-run limit's refusal says so and is the caller's to let pass).
    pub fn check(&self, key: u64) -> Result<(), Refused> {
        match self.state.check_key(&key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                Err(self.refusal(not_until.wait_time_from(DefaultClock::default().now())))
            }
        }
    }

    /// This limit's refusal, when a retry can succeed after `retry_after`
    /// (decided here or, for shared limits, by Redis).
    pub fn refusal(&self, retry_after: Duration) -> Refused {
        Refused {
            scope: self.scope,
            concurrency: false,
            retry_after,
            policy: self.policy.clone(),
            dry_run: self.dry_run,
        }
    }

    /// Forgets keys whose state is that of a fresh key (bounds memory to
    /// the clients seen within about one period).
    pub fn forget_idle(&self) {
        self.state.retain_recent();
        self.state.shrink_to_fit();
    }

    /// Keys with state.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }
}

/// A cap on how many requests of one key may be in flight at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub scope: Scope,
    pub max: u32,
    pub dry_run: bool,
}

impl Cap {
    fn refused(&self) -> Refused {
        Refused {
            scope: self.scope,
            concurrency: true,
            retry_after: Duration::from_secs(1),
            policy: format!(
                "\"{}\";q={};qu=\"concurrent-requests\"",
                self.scope.as_str(),
                self.max
            ),
            dry_run: self.dry_run,
        }
    }
}

/// What is in flight per key, one map per scope and use (requests,
/// connections, upgrades), shared by every config so that counts survive
/// reloads.
#[derive(Debug)]
pub struct Gauges {
    maps: [DashMap<u64, u32, foldhash::fast::RandomState>; Scope::ALL.len() * USES],
    /// Requests refused, per scope (a limit in force).
    pub refused: [AtomicU64; Scope::ALL.len()],
    /// Requests a dry-run limit would have refused, per scope.
    pub would_refuse: [AtomicU64; Scope::ALL.len()],
}

/// What a gauge counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Use {
    Requests,
    Connections,
    Upgrades,
}

const USES: usize = 3;

impl Default for Gauges {
    fn default() -> Self {
        Self {
            maps: std::array::from_fn(|_| DashMap::default()),
            refused: Default::default(),
            would_refuse: Default::default(),
        }
    }
}

impl Gauges {
    fn map(&self, scope: Scope, what: Use) -> &DashMap<u64, u32, foldhash::fast::RandomState> {
        &self.maps[scope as usize * USES + what as usize]
    }

    /// Counts one more under `cap` and `key` while the [`Permit`] lives;
    /// `Err` if that passes the cap. A dry-run cap counts it anyway: its
    /// refusal comes with the permit, for the caller to keep.
    pub fn acquire(
        self: &Arc<Self>,
        cap: &Cap,
        what: Use,
        key: u64,
    ) -> Result<Permit, (Refused, Option<Permit>)> {
        let map = self.map(cap.scope, what);
        let mut count = map.entry(key).or_insert(0);
        if *count >= cap.max && !cap.dry_run {
            drop(count);
            map.remove_if(&key, |_, n| *n == 0);
            return Err((cap.refused(), None));
        }
        *count += 1;
        let over = *count > cap.max;
        drop(count);
        let permit = Permit {
            gauges: self.clone(),
            scope: cap.scope,
            what,
            key,
        };
        if over {
            return Err((cap.refused(), Some(permit)));
        }
        Ok(permit)
    }

    /// Counts a refusal (or, from a dry-run limit, a would-be refusal).
    pub fn count_refusal(&self, refused: &Refused) {
        let counter = if refused.dry_run {
            &self.would_refuse
        } else {
            &self.refused
        };
        counter[refused.scope as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// What is counted under `scope`, `what` and `key` now.
    pub fn count(&self, scope: Scope, what: Use, key: u64) -> u32 {
        self.map(scope, what).get(&key).map(|n| *n).unwrap_or(0)
    }

    /// Keys with something in flight, over all gauges.
    pub fn keys(&self) -> usize {
        self.maps.iter().map(DashMap::len).sum()
    }
}

/// One request (or connection) counted; uncounted when dropped.
#[derive(Debug)]
pub struct Permit {
    gauges: Arc<Gauges>,
    scope: Scope,
    what: Use,
    key: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let map = self.gauges.map(self.scope, self.what);
        if let Some(mut n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
        map.remove_if(&self.key, |_, n| *n == 0);
    }
}

/// Hands each of `new`'s limits the state of the same limit in `old` (same
/// scope and owner; see [`RateLimit::adopt`]): a config reload keeps the
/// counts of the limits it does not change.
pub fn adopt<'a>(
    new: impl Iterator<Item = &'a mut RateLimit>,
    old: impl Iterator<Item = &'a RateLimit>,
) {
    let old: std::collections::HashMap<_, _> =
        old.map(|r| ((r.scope, r.owner.clone()), r)).collect();
    for rate in new {
        if let Some(previous) = old.get(&(rate.scope, rate.owner.clone())) {
            rate.adopt(previous);
        }
    }
}

/// A rate and a cap for one scope, either or both.
#[derive(Debug, Clone, Default)]
pub struct Limit {
    pub rate: Option<RateLimit>,
    pub cap: Option<Cap>,
}

/// Every limit a config sets: defaults per scope, each cluster's and each
/// route's own.
#[derive(Debug, Clone, Default)]
pub struct LimitSet {
    /// Per client IP, before everything else.
    pub guard: Option<RateLimit>,
    /// The default for each scope (indexed by `Scope as usize`; the guard's
    /// slot is unused).
    pub defaults: [Limit; Scope::ALL.len()],
    /// Open connections per client IP.
    pub connections: Option<Cap>,
    /// Upgraded connections (WebSockets) in flight per tunnel.
    pub upgrades: Option<Cap>,
    /// `clusters[].limits`, by cluster name (routes carry their own).
    pub clusters: std::collections::HashMap<String, Limit>,
}

impl LimitSet {
    pub fn default_for(&self, scope: Scope) -> &Limit {
        &self.defaults[scope as usize]
    }

    /// Every rate limit of the set.
    pub fn rates_mut(&mut self) -> impl Iterator<Item = &mut RateLimit> {
        self.guard
            .iter_mut()
            .chain(self.defaults.iter_mut().filter_map(|l| l.rate.as_mut()))
            .chain(self.clusters.values_mut().filter_map(|l| l.rate.as_mut()))
    }

    pub fn rates(&self) -> impl Iterator<Item = &RateLimit> {
        self.guard
            .iter()
            .chain(self.defaults.iter().filter_map(|l| l.rate.as_ref()))
            .chain(self.clusters.values().filter_map(|l| l.rate.as_ref()))
    }

    /// Whether anything beyond the guard applies to a request: a scope's
    /// default, a cluster's own limits, a cap on upgrades (a route's own
    /// limits are the route's to say).
    pub fn any_after_guard(&self) -> bool {
        self.upgrades.is_some()
            || !self.clusters.is_empty()
            || (self.defaults.iter()).any(|l| l.rate.is_some() || l.cap.is_some())
    }

    /// Forgets idle keys of every rate limit (run now and then).
    pub fn forget_idle(&self) {
        for rate in self.rates() {
            rate.forget_idle();
        }
    }

    /// Keys with state, over all rate limits.
    pub fn keys(&self) -> usize {
        self.rates().map(RateLimit::len).sum()
    }
}

#[cfg(test)]
mod tests;
