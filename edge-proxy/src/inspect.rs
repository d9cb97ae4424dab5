//! What the admin listener shows and does ([`crate::admin::Api`]): the
//! metrics, gathered at scrape time from where they live; the tunnels; the
//! routes with where each came from; the config in force; a drain of one
//! tunnel.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use serde_json::{json, Value};

use crate::admin::{Access, Api, Health};
use crate::config::token::{bearer, TokenHash};
use crate::config::EdgeConfig;
use crate::http::failure::{FailureCounts, ALL_KINDS};
use crate::limits::{Gauges, Scope};
use crate::metrics::Metrics;
use crate::tunnel::registry::TunnelRegistry;
use telemetry::admin::{counter, gauge};

pub struct Inspector {
    pub config: Arc<ArcSwap<EdgeConfig>>,
    pub sources: Sources,
}

impl Api for Inspector {
    fn access(&self, authorization: Option<&str>) -> Access {
        let config = self.config.load();
        if config.admin_tokens.is_empty() {
            return Access::Off;
        }
        // Hashes compared: what leaks by timing is of the hash, not the token.
        match authorization.and_then(bearer).map(TokenHash::of) {
            Some(hash) if config.admin_tokens.contains(&hash) => Access::Granted,
            _ => Access::Denied,
        }
    }

    fn metrics(&self) -> String {
        self.sources.render()
    }

    fn tunnels(&self) -> Value {
        let mut sessions = self.sources.registry.all();
        sessions.sort_by(|a, b| (&a.environment, a.since).cmp(&(&b.environment, b.since)));
        let tunnels: Vec<Value> = sessions
            .iter()
            .map(|s| {
                let stats = *s.last_stats.lock().unwrap();
                json!({
                    "id": s.id,
                    "cluster": s.cluster,
                    "environment": s.environment,
                    "sidecar": s.sidecar_name,
                    "sidecar_version": s.sidecar_version,
                    "connected_since": s.since.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    "draining": !s.is_usable(),
                    "requests_in_flight": s.requests_in_flight(),
                    "idle_streams": s.idle_count(),
                    "streams_taken": s.streams_taken.load(Ordering::Relaxed),
                    "sidecar_streams_active": stats.streams_active,
                    "bytes_to_services": stats.bytes_to_targets,
                    "bytes_from_services": stats.bytes_from_targets,
                    "services": s.registered().iter().map(|(service, port)| format!("{service}:{port}")).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "tunnels": tunnels })
    }

    fn routes(&self) -> Value {
        let config = self.config.load();
        let mut routes: Vec<Value> = config
            .routes
            .rules()
            .iter()
            .chain(self.sources.registry.claimed().rules())
            .map(|r| {
                json!({
                    "source": if r.claimed { "claimed" } else { "yaml" },
                    "name": r.name.as_deref(),
                    "host": r.host.to_string(),
                    "path": r.path,
                    "exact_path": r.exact_path,
                    "environment": r.target.environment,
                    "service": r.target.service,
                    "port": r.target.port,
                })
            })
            .collect();
        let mut registered: Vec<(String, String, u16, String)> = Vec::new();
        for s in self.sources.registry.all() {
            for (service, port) in s.registered() {
                let preview = config
                    .preview_domains
                    .first()
                    .map(|domain| format!("{service}-{port}-{}.{domain}", s.environment));
                registered.push((
                    s.environment.clone(),
                    service,
                    port,
                    preview.unwrap_or_default(),
                ));
            }
        }
        registered.sort();
        registered.dedup(); // one row for all the sessions of a sidecar
        routes.extend(
            registered
                .into_iter()
                .map(|(environment, service, port, host)| {
                    json!({
                        "source": "sidecar",
                        "host": host,
                        "environment": environment,
                        "service": service,
                        "port": port,
                    })
                }),
        );
        json!({ "routes": routes })
    }

    fn config(&self) -> Value {
        let config = self.config.load();
        let metrics = &self.sources.metrics;
        json!({
            "version": config.version,
            "reloads_applied": metrics.reloads_applied.load(Ordering::Relaxed),
            "reloads_refused": metrics.reloads_refused.load(Ordering::Relaxed),
            "routes": config.routes.len(),
            "clusters": config.clusters.iter().map(|c| &c.name).collect::<Vec<_>>(),
        })
    }

    fn drain(&self, id: &str) -> bool {
        match self.sources.registry.session(id) {
            Some(session) => {
                session.drain("drained by an operator (admin API)");
                true
            }
            None => false,
        }
    }
}

/// Everything `/metrics` shows, gathered at scrape time.
#[derive(Clone)]
pub struct Sources {
    pub metrics: Arc<Metrics>,
    pub registry: Arc<TunnelRegistry>,
    pub failures: Arc<FailureCounts>,
    pub gauges: Arc<Gauges>,
    pub shared: Arc<crate::shared::InForce>,
    pub in_flight: Arc<AtomicUsize>,
    /// What `/readyz` says: not ready once the edge drains.
    pub health: Arc<Health>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sources")
    }
}

impl Sources {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        telemetry::admin::exposition(self.clone())
    }
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.metrics.encode_routes(&mut encoder)?;
        self.metrics.encode_ports(&mut encoder)?;
        gauge(
            &mut encoder,
            "edge_requests_in_flight",
            "Requests (and upgraded connections) in progress",
            [(vec![], self.in_flight.load(Ordering::Relaxed) as i64)],
        )?;
        gauge(
            &mut encoder,
            "edge_requests_waiting_for_tunnel",
            "Requests waiting for their environment's sidecar to connect (tunnel.session_wait)",
            [(vec![], self.registry.waiting() as i64)],
        )?;
        counter(
            &mut encoder,
            "edge_refusals",
            "Responses the edge wrote itself, by error code (docs/errors.md)",
            ALL_KINDS
                .iter()
                .map(|k| (vec![("code", k.code().to_owned())], self.failures.get(*k))),
        )?;
        counter(
            &mut encoder,
            "edge_limit_refusals",
            "Requests refused by a rate limit or cap, by scope",
            Scope::ALL.iter().map(|s| {
                let n = self.gauges.refused[*s as usize].load(Ordering::Relaxed);
                (vec![("scope", s.as_str().to_owned())], n)
            }),
        )?;
        counter(
            &mut encoder,
            "edge_limit_dry_run_refusals",
            "Requests a dry-run limit would have refused, by scope",
            Scope::ALL.iter().map(|s| {
                let n = self.gauges.would_refuse[*s as usize].load(Ordering::Relaxed);
                (vec![("scope", s.as_str().to_owned())], n)
            }),
        )?;

        // Tunnels, per environment.
        let mut by_environment: std::collections::BTreeMap<(String, String), [i64; 4]> =
            Default::default();
        for s in self.registry.all() {
            let row = by_environment
                .entry((s.environment.clone(), s.cluster.clone()))
                .or_default();
            row[0] += 1;
            row[1] += i64::from(!s.is_usable());
            row[2] += s.requests_in_flight() as i64;
            row[3] += s.idle_count() as i64;
        }
        let tunnel_labels = |(environment, cluster): &(String, String)| {
            vec![
                ("environment", environment.clone()),
                ("cluster", cluster.clone()),
            ]
        };
        for (i, name, help) in [
            (0, "edge_tunnel_sessions", "Tunnel sessions connected"),
            (
                1,
                "edge_tunnel_sessions_draining",
                "Tunnel sessions whose sidecar is leaving",
            ),
            (
                2,
                "edge_tunnel_requests_in_flight",
                "Requests in progress through the tunnels",
            ),
            (
                3,
                "edge_tunnel_idle_streams",
                "Data streams opened ahead by the sidecars, waiting for a request",
            ),
        ] {
            gauge(
                &mut encoder,
                name,
                help,
                by_environment
                    .iter()
                    .map(|(k, row)| (tunnel_labels(k), row[i])),
            )?;
        }

        counter(
            &mut encoder,
            "edge_config_reloads",
            "Config reloads, applied or refused (the last good config kept)",
            [
                (
                    vec![("outcome", "applied".to_owned())],
                    self.metrics.reloads_applied.load(Ordering::Relaxed),
                ),
                (
                    vec![("outcome", "refused".to_owned())],
                    self.metrics.reloads_refused.load(Ordering::Relaxed),
                ),
            ],
        )?;
        if let Some(shared) = self.shared.load_full() {
            gauge(
                &mut encoder,
                "edge_redis_up",
                "Redis answered the last call (1) or not (0)",
                [(vec![], i64::from(shared.healthy()))],
            )?;
            counter(
                &mut encoder,
                "edge_redis_failures",
                "Redis calls that failed or ran over their budget",
                [(vec![], shared.failures.load(Ordering::Relaxed))],
            )?;
        }
        gauge(
            &mut encoder,
            "edge_draining",
            "The edge is shutting down (1) or serving (0)",
            [(vec![], i64::from(!self.health.ready()))],
        )?;
        gauge(
            &mut encoder,
            "edge_build_info",
            "The edge's version",
            [(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1)],
        )?;
        Ok(())
    }
}
