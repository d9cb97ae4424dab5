//! `limits:`, `clusters[].limits` and `routes[].limits` → a [`LimitSet`].
//!
//! One block shape everywhere: `rate` requests per `period` (whole
//! seconds; default `1s`) with up to `burst` at once (default `rate`),
//! `in_flight` requests at once, `dry_run`. Two keys only where they mean
//! something: `connections` (open connections per client IP) and
//! `upgrades` (WebSockets per tunnel). A block replaces the default it
//! stands for whole; `cluster: {}` turns the per-cluster defaults off.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::limits::{Cap, Limit, LimitSet, Rate, RateLimit, Scope};

/// The per-cluster defaults (the background requirements): 1,000 requests
/// a minute and 100 in flight at once.
pub const DEFAULT_CLUSTER_RATE: u32 = 1000;
pub const DEFAULT_CLUSTER_PERIOD: Duration = Duration::from_secs(60);
pub const DEFAULT_CLUSTER_IN_FLIGHT: u32 = 100;

pub mod raw {
    use super::*;

    /// `limits:`.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Limits {
        pub guard: Option<Block>,
        pub client_ip: Option<Block>,
        pub identity: Option<Block>,
        pub route: Option<Block>,
        pub environment: Option<Block>,
        pub cluster: Option<Block>,
        pub tunnel: Option<Block>,
    }

    /// One limit.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Block {
        pub rate: Option<u32>,
        pub period: Option<String>,
        pub burst: Option<u32>,
        pub in_flight: Option<u32>,
        pub connections: Option<u32>,
        pub upgrades: Option<u32>,
        #[serde(default)]
        pub dry_run: bool,
    }
}

/// Validates `limits:` and `clusters[].limits`; route limits come one by
/// one through [`route_limit`].
pub fn validate(
    limits: &raw::Limits,
    clusters: &[(String, Option<raw::Block>)],
    problems: &mut Vec<String>,
) -> LimitSet {
    let mut set = LimitSet::default();
    if let Some(guard) = &limits.guard {
        refuse_keys(
            guard,
            "limits.guard",
            &["in_flight", "connections", "upgrades"],
            problems,
        );
        set.guard = rate(guard, Scope::Guard, "limits.guard", None, problems);
        if set.guard.is_none() && guard.rate.is_none() {
            problems.push("limits.guard: needs a rate (e.g. rate: 100, period: 1s)".into());
        }
    }
    for (scope, block) in [
        (Scope::ClientIp, &limits.client_ip),
        (Scope::Identity, &limits.identity),
        (Scope::Route, &limits.route),
        (Scope::Environment, &limits.environment),
        (Scope::Cluster, &limits.cluster),
        (Scope::Tunnel, &limits.tunnel),
    ] {
        let path = format!("limits.{}", scope.as_str());
        let limit = match block {
            Some(block) => {
                let mut not_here = vec![];
                if scope != Scope::ClientIp {
                    not_here.push("connections");
                }
                if scope != Scope::Tunnel {
                    not_here.push("upgrades");
                }
                refuse_keys(block, &path, &not_here, problems);
                if let Some(n) = block.connections {
                    set.connections = cap(n, Scope::ClientIp, block.dry_run, &path, problems);
                }
                if let Some(n) = block.upgrades {
                    set.upgrades = cap(n, Scope::Tunnel, block.dry_run, &path, problems);
                }
                limit(block, scope, &path, None, problems)
            }
            None if scope == Scope::Cluster => default_cluster_limit(None),
            None => Limit::default(),
        };
        set.defaults[scope as usize] = limit;
    }
    for (i, (name, block)) in clusters.iter().enumerate() {
        let Some(block) = block else { continue };
        let path = format!("clusters[{i}].limits");
        refuse_keys(block, &path, &["connections", "upgrades"], problems);
        let limit = limit(
            block,
            Scope::Cluster,
            &path,
            Some(name.as_str().into()),
            problems,
        );
        set.clusters.insert(name.clone(), limit);
    }
    set
}

/// The per-cluster defaults, for one cluster (`owner`) or all.
pub fn default_cluster_limit(owner: Option<Arc<str>>) -> Limit {
    let rate = NonZeroU32::new(DEFAULT_CLUSTER_RATE).expect("non-zero");
    Limit {
        rate: Some(RateLimit::new(
            Scope::Cluster,
            Rate {
                rate,
                period: DEFAULT_CLUSTER_PERIOD,
                burst: rate,
            },
            false,
            owner,
        )),
        cap: Some(Cap {
            scope: Scope::Cluster,
            max: DEFAULT_CLUSTER_IN_FLIGHT,
            dry_run: false,
        }),
    }
}

/// `routes[i].limits`; `owner` names the route (its host and path) so that
/// its state follows it across reloads.
pub fn route_limit(
    block: &raw::Block,
    path: &str,
    owner: String,
    problems: &mut Vec<String>,
) -> Limit {
    refuse_keys(block, path, &["connections", "upgrades"], problems);
    limit(block, Scope::Route, path, Some(owner.into()), problems)
}

fn limit(
    block: &raw::Block,
    scope: Scope,
    path: &str,
    owner: Option<Arc<str>>,
    problems: &mut Vec<String>,
) -> Limit {
    Limit {
        rate: rate(block, scope, path, owner, problems),
        cap: block.in_flight.and_then(|n| {
            cap(
                n,
                scope,
                block.dry_run,
                &format!("{path}.in_flight"),
                problems,
            )
        }),
    }
}

fn rate(
    block: &raw::Block,
    scope: Scope,
    path: &str,
    owner: Option<Arc<str>>,
    problems: &mut Vec<String>,
) -> Option<RateLimit> {
    let Some(rate) = block.rate else {
        for (key, given) in [
            ("period", block.period.is_some()),
            ("burst", block.burst.is_some()),
        ] {
            if given {
                problems.push(format!("{path}.{key}: only with a rate"));
            }
        }
        return None;
    };
    let Some(rate) = NonZeroU32::new(rate) else {
        problems.push(format!(
            "{path}.rate: must be at least 1 (leave it out for no rate limit)"
        ));
        return None;
    };
    let period = yaml_config::duration(
        &block.period,
        &format!("{path}.period"),
        Duration::from_secs(1),
        problems,
    );
    if period.subsec_nanos() != 0 || period.is_zero() {
        problems.push(format!(
            "{path}.period: whole seconds (1s, 10s, 1m, 1h): clients are told it in seconds"
        ));
        return None;
    }
    let burst = match block.burst.map(NonZeroU32::new) {
        None => rate,
        Some(Some(burst)) => burst,
        Some(None) => {
            problems.push(format!("{path}.burst: must be at least 1"));
            return None;
        }
    };
    Some(RateLimit::new(
        scope,
        Rate {
            rate,
            period,
            burst,
        },
        block.dry_run,
        owner,
    ))
}

fn cap(
    max: u32,
    scope: Scope,
    dry_run: bool,
    path: &str,
    problems: &mut Vec<String>,
) -> Option<Cap> {
    if max == 0 {
        problems.push(format!(
            "{path}: must be at least 1 (leave it out for no cap)"
        ));
        return None;
    }
    Some(Cap {
        scope,
        max,
        dry_run,
    })
}

fn refuse_keys(block: &raw::Block, path: &str, keys: &[&str], problems: &mut Vec<String>) {
    for key in keys {
        let given = match *key {
            "in_flight" => block.in_flight.is_some(),
            "connections" => block.connections.is_some(),
            "upgrades" => block.upgrades.is_some(),
            _ => false,
        };
        if given {
            let hint = match *key {
                "connections" => {
                    " (open connections are counted per client IP: limits.client_ip.connections)"
                }
                "upgrades" => " (WebSockets are counted per tunnel: limits.tunnel.upgrades)",
                _ => "",
            };
            problems.push(format!("{path}.{key}: not a limit of this scope{hint}"));
        }
    }
}
