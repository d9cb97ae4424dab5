//! Request → the service, session and settings that serve it: custom-domain
//! rules first (file order), then preview URLs.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use header_policy::Policy;
use pingora_http::RequestHeader;
use wasm_host::FilterPool;

use crate::auth::Access;
use crate::limits::Limit;

use super::failure::{ErrorKind, Failure};
use crate::config::EdgeConfig;
use crate::routing::preview::ServiceRef;
use crate::routing::rules::normalize_path;
use crate::routing::upstream::Protocol;
use crate::tunnel::registry::{Lease, TunnelRegistry};

/// Where a request goes, with the settings in force when it arrived (a
/// config reload never changes a request mid-flight).
#[derive(Debug)]
pub struct Target {
    pub service: ServiceRef,
    /// The session, with this request counted on it while the target lives.
    pub session: Lease,
    /// Path the service sees, when a rule rewrites it.
    pub upstream_path: Option<String>,
    pub open_stream_timeout: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Read timeout for upgraded connections and gRPC calls.
    pub stream_idle_timeout: Duration,
    /// How the edge speaks to the service.
    pub protocol: Protocol,
    /// The rule's name, for the header policy's `when.route`.
    pub route_name: Option<Arc<str>>,
    /// The header policy in force (`None`: nothing to do).
    pub policy: Option<Arc<Policy>>,
    /// The route's wasm filter, if it has one.
    pub wasm: Option<Arc<FilterPool>>,
    /// Who may use it (`None`: no `auth:`, everyone).
    pub access: Option<Arc<Access>>,
    /// What per-route limits count it under: the rule's key, or for a
    /// preview URL, its service's.
    pub route_key: u64,
    /// The rule's own limits (`None`: `limits.route`).
    pub route_limits: Option<Arc<Limit>>,
    /// The rule's host and path, naming it in shared limits (`None`: a
    /// preview URL, named by its service).
    pub route_id: Option<Arc<str>>,
    /// Request bodies larger than this are refused (`None`: any size).
    pub max_body_size: Option<u64>,
}

impl Target {
    /// The route as metrics and logs name it: its rule's name, else its
    /// host and path; a preview URL's `service-port` (written, not copied).
    pub fn route_display(&self) -> impl std::fmt::Display + '_ {
        struct Label<'a>(&'a Target);
        impl std::fmt::Display for Label<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.0.rule_label() {
                    Some(label) => f.write_str(label),
                    None => write!(f, "{}-{}", self.0.service.service, self.0.service.port),
                }
            }
        }
        Label(self)
    }

    /// [`Self::route_display`] as text, borrowed for a rule's route.
    pub fn route_label(&self) -> std::borrow::Cow<'_, str> {
        match self.rule_label() {
            Some(label) => label.into(),
            None => self.route_display().to_string().into(),
        }
    }

    /// A rule's name, else its host and path; `None` for a preview URL.
    fn rule_label(&self) -> Option<&str> {
        self.route_name.as_deref().or(self.route_id.as_deref())
    }

    /// Key of the upstream connection pool: connections are shared by
    /// requests to the same service spoken to the same way, never across
    /// services or protocol settings (a rule may override a registration),
    /// nor across tunnel sessions: a stream belongs to one, so a draining
    /// session's pooled streams are never picked again, and a reused stream
    /// stays on the worker thread that serves its session.
    pub fn pool_key(&self) -> u64 {
        // foldhash: a fast hash is enough for a key local to this process
        // (SipHash cost about 1% of the edge's instructions per request).
        let mut h = foldhash::fast::FixedState::default().build_hasher();
        self.service.hash(&mut h);
        self.protocol.hash(&mut h);
        self.session.id.hash(&mut h);
        h.finish()
    }
}

/// A refusal for want of a tunnel, told apart when, as Redis knows,
/// another replica of the edge holds one (the sidecar reaches only some
/// replicas: the operator's problem to see, not the visitor's to guess).
pub async fn tunnel_elsewhere(failure: Failure, shared: &crate::shared::InForce) -> Failure {
    let (Some(environment), Some(shared)) = (failure.environment.as_deref(), shared.load_full())
    else {
        return failure;
    };
    match shared.holders(environment).await {
        Some(holders) if !holders.is_empty() => {
            tracing::debug!(%environment, ?holders, "tunnel held by other replicas");
            Failure::with(
                ErrorKind::TunnelUnavailable,
                "the service's tunnel is connected to other replicas of the edge, not to this one",
            )
        }
        _ => failure,
    }
}

/// [`resolve`], waiting up to `tunnel.session_wait` for a tunnel when the
/// request's environment has none here: its sidecar restarting, or this
/// replica just started and its sidecars on their way (a rolling restart).
pub async fn resolve_waiting(
    host: &str,
    req: &RequestHeader,
    config: &EdgeConfig,
    registry: &TunnelRegistry,
) -> Result<Target, Failure> {
    let wait = config.tunnel.session_wait;
    match resolve(host, req, config, registry) {
        Err(failure) if failure.environment.is_some() && !wait.is_zero() => {
            let deadline = tokio::time::Instant::now() + wait;
            let _counted = registry.wait_for_session();
            loop {
                let arrived = registry.session_arrived();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                match resolve(host, req, config, registry) {
                    Err(failure) if failure.environment.is_some() => {
                        if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                            return Err(failure);
                        }
                    }
                    routed => return routed,
                }
            }
        }
        routed => routed,
    }
}

/// Routes a request for `host` (normalized) and `req`'s path: the first
/// custom-domain rule that matches, else the preview URL the host names; then
/// a live session that serves the service.
pub fn resolve(
    host: &str,
    req: &RequestHeader,
    config: &EdgeConfig,
    registry: &TunnelRegistry,
) -> Result<Target, Failure> {
    let sent = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let refused = |message: &str| Failure::with(ErrorKind::BadRequest, message);
    // Routed and forwarded without dot segments (the service sees the
    // path the rule matched, never `/api/../admin` as `/../admin`).
    let normal = normalize_path(sent).map_err(|_| refused("the path climbs above the root"))?;
    let path = &*normal.path;
    let upstream = &config.upstream;
    // The YAML's rules first, then those sidecars claimed (Ingresses).
    let claimed;
    let rule = match config.routes.resolve(host, path) {
        Some(rule) => Some(rule),
        None => {
            claimed = registry.claimed();
            claimed.resolve(host, path)
        }
    };
    let (service, upstream_path, connect_timeout, read_timeout) = match rule {
        Some(rule) => {
            if rule.strip_prefix && normal.encoded_separators {
                // `%2e%2e` or `%2f` under a stripped prefix: the service
                // may decode them into a path outside the prefix.
                return Err(refused(
                    "encoded dots or slashes in a path under a stripped prefix",
                ));
            }
            let rewritten = rule.upstream_path(path);
            (
                rule.target.clone(),
                (rewritten != sent).then(|| rewritten.into_owned()),
                rule.connect_timeout.unwrap_or(upstream.connect_timeout),
                rule.read_timeout.unwrap_or(upstream.read_timeout),
            )
        }
        None => (
            ServiceRef::from_normalized_host(host, &config.preview_domains)?,
            (path != sent).then(|| path.to_owned()),
            upstream.connect_timeout,
            upstream.read_timeout,
        ),
    };
    let session = registry.route(&service)?;
    let protocol = rule
        .and_then(|r| r.protocol.clone())
        .or_else(|| session.protocol(&service.service, service.port))
        .unwrap_or_default();
    let (route_name, policy, wasm, route_key, route_limits, route_id) = match rule {
        Some(rule) => (
            rule.name.clone(),
            match rule.claimed {
                true => config.header_policy.clone(),
                false => rule.policy.clone(),
            },
            rule.wasm.clone(),
            rule.limit_key,
            rule.limits.clone(),
            Some(rule.limit_id.clone()),
        ),
        None => (
            None,
            config.header_policy.clone(),
            None,
            crate::limits::key(&service),
            None,
            None,
        ),
    };
    // The most specific rule wins: the route's, the environment's, the
    // cluster's, the domain's, the default; made stricter if the sidecar
    // asked.
    let access = config.auth.as_ref().map(|auth| {
        let rule = rule
            .and_then(|r| r.access.clone())
            .or_else(|| auth.environments.get(&service.environment).cloned())
            .or_else(|| auth.clusters.get(&session.cluster).cloned())
            .or_else(|| auth.domain_rule(host).cloned())
            .unwrap_or_else(|| auth.default.clone());
        match session.requested.level {
            Some(level) => rule.at_least(level),
            None => rule,
        }
    });
    Ok(Target {
        max_body_size: rule
            .and_then(|r| r.max_body_size)
            .or(config.visitors.max_body_size),
        access,
        route_key,
        route_limits,
        route_id,
        route_name,
        policy,
        wasm,
        protocol,
        stream_idle_timeout: upstream.stream_idle_timeout,
        service,
        session,
        upstream_path,
        open_stream_timeout: config.tunnel.open_stream_timeout,
        connect_timeout,
        read_timeout,
        idle_timeout: upstream.idle_timeout,
    })
}
