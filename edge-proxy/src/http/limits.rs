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
//! With `redis:`, rates are decided by Redis for all replicas (`shared`),
//! by this replica when Redis is away (`on_failure: open`).

use std::net::IpAddr;
use std::sync::Arc;

use tracing::info;

use super::context::RequestCtx;
use super::failure::{ErrorKind, Failure, Refusal};
use super::route::Target;
use crate::config::EdgeConfig;
use crate::limits::{ip_key, key, Cap, Gauges, Limit, Permit, RateLimit, Refused, Scope, Use};
use crate::shared::{Decision, InForce};

/// The pre-auth guard: one rate per client IP.
pub fn guard(ctx: &RequestCtx, config: &EdgeConfig, gauges: &Gauges) -> Result<(), Failure> {
    let (Some(guard), Some(ip)) = (&config.limits.guard, ctx.client.ip) else {
        return Ok(());
    };
    verdict(guard.check(ip_key(ip)), gauges, ctx)
}

/// The limits of a routed request whose visitor is known (or known to be
/// anonymous). With `shared` (Redis), rates are counted across replicas;
/// caps stay per replica.
pub async fn admit(
    ctx: &mut RequestCtx,
    config: &EdgeConfig,
    gauges: &Arc<Gauges>,
    shared: &InForce,
) -> Result<(), Failure> {
    let Some(target) = &ctx.target else {
        return Ok(());
    };
    let limits = &config.limits;
    if target.route_limits.is_none() && !limits.any_after_guard() {
        return Ok(());
    }
    // Only a config with `redis:` has shared state in force.
    let shared = config.redis.as_ref().and_then(|_| shared.load_full());
    let shared = shared.as_deref();
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
    let scopes: [(Scope, &Limit); 6] = [
        (Scope::Route, route),
        (Scope::Environment, limits.default_for(Scope::Environment)),
        (Scope::Cluster, cluster_limit),
        (Scope::Tunnel, limits.default_for(Scope::Tunnel)),
        (Scope::Identity, limits.default_for(Scope::Identity)),
        (Scope::ClientIp, limits.default_for(Scope::ClientIp)),
    ];
    // Keys only for the scopes with a limit: most have none.
    let keyed = scopes.map(|(scope, limit)| {
        let limited = limit.rate.is_some() || limit.cap.is_some();
        (
            scope,
            limit,
            limited.then(|| scope_key(scope, ctx, target)).flatten(),
        )
    });
    for (scope, limit, key) in keyed {
        let (Some(rate), Some(key)) = (&limit.rate, key) else {
            continue;
        };
        let Some(shared) = shared else {
            verdict(rate.check(key), gauges, ctx)?;
            continue;
        };
        match shared.check(rate, &shared_value(scope, ctx, target)).await {
            Decision::Admitted => {}
            Decision::Refused(refused) => verdict(Err(refused), gauges, ctx)?,
            Decision::Unavailable if shared.fail_closed => {
                return Err(Failure::new(ErrorKind::LimitsUnavailable));
            }
            Decision::Unavailable => verdict(rate.check(key), gauges, ctx)?,
        }
    }
    let mut permits = Vec::new();
    for (_, limit, key) in keyed {
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

/// What a request counts under in this replica, for a scope (`None`: the
/// scope does not apply, an anonymous visitor's identity say).
fn scope_key(scope: Scope, ctx: &RequestCtx, target: &Target) -> Option<u64> {
    Some(match scope {
        Scope::Route => target.route_key,
        Scope::Environment => key(("environment", &target.service.environment)),
        Scope::Cluster => key(("cluster", &target.session.cluster)),
        Scope::Tunnel => tunnel_key(target),
        Scope::Identity => {
            let identity = ctx.identity.as_ref()?;
            key(("identity", &identity.issuer, &identity.subject))
        }
        Scope::ClientIp | Scope::Guard => ip_key(ctx.client.ip?),
    })
}

/// What a request counts under in Redis, for a scope: the thing itself
/// (every replica must name it alike), not this process's hash of it.
fn shared_value(scope: Scope, ctx: &RequestCtx, target: &Target) -> String {
    let session = &target.session;
    match scope {
        Scope::Route => match &target.route_id {
            Some(id) => id.to_string(),
            None => target.service.to_string(),
        },
        Scope::Environment => session.environment.clone(),
        Scope::Cluster => session.cluster.clone(),
        Scope::Tunnel => format!("{}/{}", session.environment, session.sidecar_name),
        Scope::Identity => ctx
            .identity
            .as_ref()
            .map(|i| format!("{}\0{}", i.issuer, i.subject))
            .unwrap_or_default(),
        Scope::ClientIp | Scope::Guard => match ctx.client.ip {
            Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
            Some(ip) => ip.to_canonical().to_string(),
            None => String::new(),
        },
    }
}

/// A tunnel is one sidecar: all its connections (sessions) to this edge.
fn tunnel_key(target: &Target) -> u64 {
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
