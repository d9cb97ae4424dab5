//! A request's limits, in two steps: the guard first (per client IP,
//! before any other work, so that a flood costs no JWT or cookie work),
//! then, once the request is routed and its visitor known, the rates and
//! caps of its route, environment, cluster, tunnel, identity and client IP.
//! Caps hold a permit in the context for as long as the request lives (an
//! upgraded connection: until it closes).
//!
//! A refusal is a 429 naming its scope, with `Retry-After`,
//! `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10).
//! A dry-run limit's refusal is logged and counted, and the request goes on.

use std::sync::Arc;

use tracing::info;

use super::context::RequestCtx;
use super::failure::{ErrorKind, Failure, Refusal};
use crate::config::EdgeConfig;
use crate::limits::{ip_key, key, Cap, Gauges, Limit, Permit, RateLimit, Refused, Scope, Use};

/// The pre-auth guard: one rate per client IP.
pub fn guard(ctx: &RequestCtx, config: &EdgeConfig, gauges: &Gauges) -> Result<(), Failure> {
    let (Some(guard), Some(ip)) = (&config.limits.guard, ctx.client.ip) else {
        return Ok(());
    };
    verdict(guard.check(ip_key(ip)), gauges, ctx)
}

/// The limits of a routed request whose visitor is known (or known to be
/// anonymous).
pub fn admit(
    ctx: &mut RequestCtx,
    config: &EdgeConfig,
    gauges: &Arc<Gauges>,
) -> Result<(), Failure> {
    let Some(target) = &ctx.target else {
        return Ok(());
    };
    let limits = &config.limits;
    let cluster = &target.session.cluster;
    let route = target
        .route_limits
        .as_deref()
        .unwrap_or(limits.default_for(Scope::Route));
    let cluster_limit = match limits.clusters.is_empty() {
        true => limits.default_for(Scope::Cluster),
        false => limits
            .clusters
            .get(cluster)
            .unwrap_or(limits.default_for(Scope::Cluster)),
    };
    let keyed: [(&Limit, Option<u64>); 6] = [
        (route, Some(target.route_key)),
        (
            limits.default_for(Scope::Environment),
            Some(key(("environment", &target.service.environment))),
        ),
        (cluster_limit, Some(key(("cluster", cluster)))),
        (limits.default_for(Scope::Tunnel), Some(tunnel_key(target))),
        (
            limits.default_for(Scope::Identity),
            ctx.identity
                .as_ref()
                .map(|i| key(("identity", &i.issuer, &i.subject))),
        ),
        (
            limits.default_for(Scope::ClientIp),
            ctx.client.ip.map(ip_key),
        ),
    ];
    for (limit, key) in keyed {
        if let (Some(rate), Some(key)) = (&limit.rate, key) {
            verdict(rate.check(key), gauges, ctx)?;
        }
    }
    let mut permits = Vec::new();
    for (limit, key) in keyed {
        if let (Some(cap), Some(key)) = (&limit.cap, key) {
            permits.extend(hold(gauges, cap, Use::Requests, key, ctx)?);
        }
    }
    if let (Some(cap), true) = (&limits.upgrades, ctx.upgrade) {
        permits.extend(hold(gauges, cap, Use::Upgrades, tunnel_key(target), ctx)?);
    }
    ctx.permits = permits;
    Ok(())
}

/// A tunnel is one sidecar: all its connections (sessions) to this edge.
fn tunnel_key(target: &super::route::Target) -> u64 {
    let session = &target.session;
    key(("tunnel", &session.environment, &session.sidecar_name))
}

/// Takes a permit of `cap`; a dry-run cap's refusal keeps its permit (the
/// request is counted like any other).
fn hold(
    gauges: &Arc<Gauges>,
    cap: &Cap,
    what: Use,
    key: u64,
    ctx: &RequestCtx,
) -> Result<Option<Permit>, Failure> {
    match gauges.acquire(cap, what, key) {
        Ok(permit) => Ok(Some(permit)),
        Err((refused, permit)) => verdict(Err(refused), gauges, ctx).map(|()| permit),
    }
}

/// A limit's answer as the request's fate: on, or refused (a dry run's
/// refusal only logged and counted).
fn verdict(result: Result<(), Refused>, gauges: &Gauges, ctx: &RequestCtx) -> Result<(), Failure> {
    let Err(refused) = result else {
        return Ok(());
    };
    gauges.count_refusal(&refused);
    if refused.dry_run {
        info!(
            request_id = %ctx.id,
            limit = refused.scope.as_str(),
            policy = %refused.policy,
            "a dry-run limit would refuse this request"
        );
        return Ok(());
    }
    Err(failure(refused))
}

/// The 429 for a refusal.
pub fn failure(refused: Refused) -> Failure {
    let whose = match refused.scope {
        Scope::Guard | Scope::ClientIp => "from this address",
        Scope::Identity => "from this identity",
        Scope::Route => "to this route",
        Scope::Environment => "to this environment",
        Scope::Cluster => "to this cluster",
        Scope::Tunnel => "through this tunnel",
    };
    let (kind, message) = if refused.concurrency {
        (
            ErrorKind::ConcurrencyLimited,
            format!("too many requests in progress {whose}: retry when one has finished"),
        )
    } else {
        (
            ErrorKind::RateLimited,
            format!(
                "too many requests {whose}: retry in {} s",
                refused.retry_after_secs()
            ),
        )
    };
    let mut failure = Failure::with(kind, message);
    failure.refusal = Some(Box::new(Refusal {
        retry_after: refused.retry_after_secs(),
        state: refused.state(),
        policy: refused.policy,
    }));
    failure
}

/// The rate limits of a whole config, for the housekeeping that forgets
/// idle keys.
pub fn rates(config: &EdgeConfig) -> impl Iterator<Item = &RateLimit> {
    config.limits.rates().chain(config.routes.rate_limits())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refusals_name_their_scope_and_kind() {
        let refused = Refused {
            scope: Scope::Cluster,
            concurrency: false,
            retry_after: Duration::from_millis(2500),
            policy: "\"cluster\";q=1000;w=60".into(),
            dry_run: false,
        };
        let f = failure(refused.clone());
        assert_eq!(f.kind, ErrorKind::RateLimited);
        assert_eq!(f.message, "too many requests to this cluster: retry in 3 s");
        let r = f.refusal.unwrap();
        assert_eq!(
            (r.retry_after, r.state.as_str()),
            (3, "\"cluster\";r=0;t=3")
        );

        let f = failure(Refused {
            scope: Scope::ClientIp,
            concurrency: true,
            ..refused
        });
        assert_eq!(f.kind, ErrorKind::ConcurrencyLimited);
        assert!(f.message.contains("from this address"), "{}", f.message);
    }
}
