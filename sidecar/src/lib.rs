//! The sidecar: dials out to the edge and connects tunnel streams to the
//! services it is allowed to reach. Nothing here listens for visitors.
//!
//! # Layout
//! - [`config`]: YAML → validated config, including the target allowlist.
//! - [`catalog`]: what the sidecar serves (targets, routes, host rules);
//!   [`kubernetes`] discovers it in agent mode.
//! - [`session`]: one tunnel session (control stream, heartbeats, drain).
//! - [`tls`]: TLS to the edge: verification, pinning, client certificates, errors.
//! - [`stream`]: one proxied connection (dial target, pipe bytes).
//! - [`tcp`]: raw TCP over a WebSocket: the visitor's `access tcp` and its
//!   far end here.
//! - [`proxy`]: reaching the edge through an HTTP proxy (`CONNECT`).
//! - [`replicas`]: the edge's addresses, from its URLs and their names.
//! - [`backoff`]: reconnect delays.
//! - [`inject`], [`webhook`]: the admission webhook that injects the
//!   sidecar into pods.
//! - [`tokens`]: visitors' tokens kept for `sidecar access`.
//!
//! [`Sidecar::run`] keeps `connections` sessions up with every replica of
//! the edge ([`replicas`]), each reconnecting on its own, until shutdown.

pub mod admin;
pub mod backoff;
pub mod catalog;
pub mod config;
pub mod inject;
pub mod kubernetes;
pub mod proxy;
pub mod replicas;
pub mod session;
pub mod stream;
pub mod tcp;
pub mod tls;
pub mod tokens;
pub mod webhook;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use config::Edge;
pub use config::SidecarConfig;
use replicas::Replica;
use session::SessionEnd;
use stream::Stats;

/// What the sidecar looks like from outside: for printing and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Sessions the edge currently accepts.
    pub connected: usize,
    /// Public URLs of the registered routes (from the edge).
    pub urls: Vec<String>,
    pub environment: String,
    /// The last failure, as the user should read it.
    pub last_error: Option<String>,
    /// Sessions that ended in a failure (the edge lost, refused, …).
    pub failures: u64,
    /// Replicas of the edge this sidecar keeps sessions with.
    pub replicas: usize,
}

pub struct Sidecar {
    config: Arc<SidecarConfig>,
    status: watch::Sender<Status>,
    /// Every session's stream counters added up, for metrics.
    totals: Arc<Stats>,
    /// The replicas an edge told of last.
    told: watch::Sender<Told>,
    /// What the sessions register and may dial.
    catalog: watch::Sender<Option<Arc<catalog::Catalog>>>,
}

/// Replica URLs an edge told of, and the known edge whose session heard
/// them (its scheme is theirs).
#[derive(Debug, Clone, Default)]
struct Told {
    by: usize,
    urls: Vec<String>,
}

impl Sidecar {
    pub fn new(config: SidecarConfig) -> Self {
        // In agent mode, nothing until the API has been listed.
        let fixed = (config.kubernetes.is_none())
            .then(|| Arc::new(catalog::Catalog::fixed(&config.targets)));
        Self {
            config: Arc::new(config),
            status: watch::Sender::new(Status::default()),
            totals: Arc::default(),
            told: watch::Sender::default(),
            catalog: watch::Sender::new(fixed),
        }
    }

    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Every session's stream counters added up.
    pub fn totals(&self) -> Arc<Stats> {
        self.totals.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains: `connections`
    /// sessions with every replica of the edge, the replicas looked up
    /// again every `resolve_interval` and whenever the edge tells of a
    /// change. A replica that is no longer found has its sessions drained,
    /// as on shutdown.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut sessions = JoinSet::new();
        if let Some(settings) = &self.config.kubernetes {
            let edge_host = self.config.edges[0].host().unwrap_or_default();
            let discovery = kubernetes::discover(
                settings.clone(),
                edge_host,
                self.catalog.clone(),
                shutdown.clone(),
            );
            let status = self.status.clone();
            sessions.spawn(async move {
                if let Err(e) = discovery.await {
                    warn!(error = %e, "no routes: discovery stopped");
                    status.send_modify(|s| s.last_error = Some(e));
                }
            });
        }
        let mut kept: HashMap<Replica, CancellationToken> = HashMap::new();
        let mut known = Known::new(&self.config);
        let mut told = self.told.subscribe();
        loop {
            let active = known.active(&told.borrow_and_update());
            let previous = kept.keys().copied().collect();
            let edges: Vec<_> = active.iter().map(|&i| (i, &*known.edges[i])).collect();
            let now = known.distinct(replicas::resolve(&edges, &previous).await);
            kept.retain(|replica, stop| {
                let stays = now.contains(replica);
                if !stays {
                    info!(edge = %known.edges[replica.edge].url, address = ?replica.addr, "edge replica gone (no longer resolves or told of); draining its sessions");
                    stop.cancel();
                }
                stays
            });
            for replica in now {
                if kept.contains_key(&replica) {
                    continue;
                }
                let stop = shutdown.child_token();
                for index in 0..self.config.connections {
                    let edge = known.edges[replica.edge].clone();
                    // The configured gRPC edges may fall back to a WebSocket.
                    let fallback = (self.config.fallback.as_ref())
                        .filter(|_| replica.edge < known.configured && !edge.websocket())
                        .map(|f| (Arc::new(f.edge.clone()), f.after));
                    let keeper = Keeper {
                        index,
                        replica,
                        edge,
                        fallback,
                        config: self.config.clone(),
                        status: self.status.clone(),
                        totals: self.totals.clone(),
                        told: self.told.clone(),
                        catalog: self.catalog.subscribe(),
                        stop: stop.clone(),
                    };
                    sessions.spawn(keeper.run());
                }
                kept.insert(replica, stop);
            }
            self.status.send_if_modified(|s| {
                let changed = s.replicas != kept.len();
                s.replicas = kept.len();
                changed
            });
            while sessions.try_join_next().is_some() {}
            tokio::select! {
                _ = tokio::time::sleep(self.config.resolve_interval) => {}
                Ok(()) = told.changed() => {}
                _ = shutdown.cancelled() => break,
            }
        }
        while sessions.join_next().await.is_some() {}
    }
}

/// The edges this sidecar knows: the configured ones, then each URL an
/// edge told of, never removed (a replica's index stays its own).
struct Known {
    edges: Vec<Arc<Edge>>,
    configured: usize,
    learn: Option<config::Learn>,
    /// Told URLs refused (said once).
    refused: HashSet<String>,
}

impl Known {
    fn new(config: &SidecarConfig) -> Self {
        Self {
            edges: config.edges.iter().cloned().map(Arc::new).collect(),
            configured: config.edges.len(),
            learn: config.learn_replicas.clone(),
            refused: HashSet::new(),
        }
    }

    /// The edges to keep sessions with: the configured ones and, with
    /// `learn_replicas`, those told of last.
    fn active(&mut self, told: &Told) -> Vec<usize> {
        let mut active: Vec<usize> = (0..self.configured).collect();
        let Some(learn) = &self.learn else {
            return active;
        };
        for url in &told.urls {
            let index = match self.edges.iter().position(|e| e.url == *url) {
                Some(i) => i,
                None if self.refused.contains(url) => continue,
                None => match learn.edge(url, &self.edges[told.by]) {
                    Ok(edge) => {
                        info!(edge = %url, told_by = %self.edges[told.by].url, "the edge told of a replica");
                        self.edges.push(Arc::new(edge));
                        self.edges.len() - 1
                    }
                    Err(reason) => {
                        warn!(edge = %url, told_by = %self.edges[told.by].url, %reason, "not dialing a replica the edge told of");
                        self.refused.insert(url.clone());
                        continue;
                    }
                },
            };
            if !active.contains(&index) {
                active.push(index);
            }
        }
        active
    }

    /// Drops told replicas at an address a configured edge reaches already
    /// (the same replica by another name).
    fn distinct(&self, mut found: Vec<Replica>) -> Vec<Replica> {
        let configured: HashSet<_> = (found.iter())
            .filter(|r| r.edge < self.configured)
            .filter_map(|r| r.addr)
            .collect();
        found.retain(|r| {
            r.edge < self.configured || r.addr.is_none_or(|a| !configured.contains(&a))
        });
        found
    }
}

/// Keeps one session up with one replica, reconnecting with backoff.
struct Keeper {
    index: u32,
    replica: Replica,
    edge: Arc<Edge>,
    /// `fallback`: the WebSocket edge, and the failures in a row after
    /// which the keeper switches transports (either way).
    fallback: Option<(Arc<Edge>, u32)>,
    config: Arc<SidecarConfig>,
    status: watch::Sender<Status>,
    totals: Arc<Stats>,
    told: watch::Sender<Told>,
    catalog: catalog::Catalogs,
    stop: CancellationToken,
}

impl Keeper {
    async fn run(self) {
        let mut backoff =
            backoff::Backoff::new(self.config.reconnect_min, self.config.reconnect_max);
        let mut on_fallback = false;
        let mut failed_in_a_row = 0;
        // Sessions the edge asked to drain: they serve what is in flight
        // (and whatever the leaving replica still routes to them) while
        // their successor is already up.
        let mut draining = JoinSet::new();
        while !self.stop.is_cancelled() {
            let started = tokio::time::Instant::now();
            let edge = match &self.fallback {
                Some((fallback, _)) if on_fallback => fallback,
                _ => &self.edge,
            };
            // A fallback edge is dialed by its own name (another port).
            let address = self.replica.addr.filter(|_| !on_fallback);
            let (session, drain_asked) = self.session(edge, address);
            let mut session = Box::pin(session);
            let result = tokio::select! {
                result = &mut session => result,
                Ok(()) = drain_asked => {
                    draining.spawn(session);
                    Ok(SessionEnd::Drained)
                }
            };
            while draining.try_join_next().is_some() {}
            if started.elapsed() >= backoff::HEALTHY_PERIOD {
                backoff.reset();
                failed_in_a_row = 0;
            }
            let delay = match result {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::Drained) => {
                    backoff.reset();
                    backoff.next_delay() / 4
                }
                Err(e) => {
                    let mut delay = backoff.next_delay();
                    // A refusal says the transport works.
                    if !matches!(e, session::SessionError::Rejected(_)) {
                        failed_in_a_row += 1;
                    }
                    if let Some((fallback, after)) = &self.fallback {
                        if failed_in_a_row >= *after {
                            let (from, to) = match on_fallback {
                                false => (&self.edge.url, &fallback.url),
                                true => (&fallback.url, &self.edge.url),
                            };
                            info!(session = self.index, %from, %to, failures = failed_in_a_row, "switching transports after failures in a row");
                            on_fallback = !on_fallback;
                            failed_in_a_row = 0;
                            backoff.reset();
                            delay = backoff.next_delay() / 4;
                        }
                    }
                    let (index, edge) = (self.index, &edge.url);
                    if matches!(e, session::SessionError::Tls(_)) {
                        warn!(session = index, %edge, error = %e, retry_in = ?delay, "cannot reach the edge securely; check the edge URL and tls settings");
                    } else if e.is_rejection() {
                        warn!(session = index, %edge, error = %e, retry_in = ?delay, "edge rejected this sidecar; check token and environment");
                    } else {
                        warn!(session = index, %edge, error = %e, retry_in = ?delay, "tunnel down; reconnecting");
                    }
                    self.status.send_modify(|s| {
                        s.last_error = Some(e.to_string());
                        s.failures += 1;
                    });
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.cancelled() => break,
            }
        }
        while draining.join_next().await.is_some() {}
    }

    /// One session's future (counted in `connected` from its welcome to
    /// its end), and the edge's request that it drain.
    fn session(
        &self,
        edge: &Arc<Edge>,
        address: Option<std::net::SocketAddr>,
    ) -> (
        impl std::future::Future<Output = Result<SessionEnd, session::SessionError>> + Send + 'static,
        oneshot::Receiver<()>,
    ) {
        let (drain_tx, drain_rx) = oneshot::channel();
        let (index, replica, edge) = (self.index, self.replica, edge.clone());
        let (config, totals, stop, status, told, catalog) = (
            self.config.clone(),
            self.totals.clone(),
            self.stop.clone(),
            self.status.clone(),
            self.told.clone(),
            self.catalog.clone(),
        );
        let session = async move {
            let mut welcomed = false;
            let edge_url = edge.url.clone();
            let on_welcome = |welcome: &tunnel_proto::Welcome| {
                welcomed = true;
                info!(session = index, id = %welcome.session_id, environment = %welcome.environment, edge = ?address, url = %edge_url, "tunnel up");
                status.send_modify(|s| {
                    s.connected += 1;
                    s.urls = welcome.urls.clone();
                    s.environment = welcome.environment.clone();
                    s.last_error = None;
                });
            };
            // Told a replica set: the latest telling wins (replicas agree,
            // through Redis or their configs).
            let on_replicas = |urls: &[String]| {
                told.send_if_modified(|t| {
                    let changed = t.urls != urls;
                    if changed {
                        *t = Told {
                            by: replica.edge,
                            urls: urls.to_vec(),
                        };
                    }
                    changed
                });
            };
            let on_urls = |urls: &[String]| status.send_modify(|s| s.urls = urls.to_vec());
            let result = session::run(
                &config,
                &edge,
                address,
                &totals,
                &stop,
                catalog,
                on_welcome,
                on_urls,
                on_replicas,
                drain_tx,
            )
            .await;
            if welcomed {
                status.send_modify(|s| s.connected -= 1);
            }
            result
        };
        (session, drain_rx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::config::{Allowlist, Secret};

    fn told(by: usize, urls: &[&str]) -> Told {
        Told {
            by,
            urls: urls.iter().map(|u| u.to_string()).collect(),
        }
    }

    fn config_with(edges: &[&str], learn: bool) -> SidecarConfig {
        let mut config = SidecarConfig::parse(
            "edge: http://127.0.0.1:1\ntoken: t\ntargets: []\n",
            "s.yaml",
        )
        .unwrap();
        config.edges = edges.iter().map(|&e| Edge::plaintext(e)).collect();
        config.learn_replicas = learn.then(Default::default);
        config
    }

    /// Told URLs join the configured edges (each once, keeping its index
    /// when told again); ones that would downgrade or leave the machine in
    /// clear are refused; without `learn_replicas` nothing is added.
    #[test]
    fn told_replicas_are_added_once_and_checked() {
        let config = config_with(&["http://127.0.0.1:7000"], true);
        let mut known = Known::new(&config);
        let urls = [
            "http://127.0.0.1:7001",
            "http://127.0.0.1:7000",
            "https://127.0.0.1:7002",
            "http://10.0.0.9:7000",
            "not a url",
        ];
        assert_eq!(known.active(&told(0, &urls)), [0, 1]);
        assert_eq!(known.edges.len(), 2);
        assert_eq!(known.refused.len(), 3, "{:?}", known.refused);
        // Told again, in another order: the same indexes.
        assert_eq!(known.active(&told(1, &["http://127.0.0.1:7001"])), [0, 1]);
        // No longer told of: only the configured edge.
        assert_eq!(known.active(&told(0, &[])), [0]);
        assert_eq!(known.active(&told(0, &["http://127.0.0.1:7001"])), [0, 1]);

        let mut deaf = Known::new(&config_with(&["http://127.0.0.1:7000"], false));
        assert_eq!(deaf.active(&told(0, &urls)), [0]);
    }

    #[test]
    fn a_told_replica_at_a_configured_address_is_that_one() {
        let known = Known::new(&config_with(&["http://localhost:7000"], true));
        let at = |edge, a: &str| Replica {
            edge,
            addr: a.parse().ok(),
        };
        let found = vec![
            at(0, "127.0.0.1:7000"),
            at(1, "127.0.0.1:7000"),
            at(1, "127.0.0.2:7000"),
            at(2, "unresolved"),
        ];
        assert_eq!(
            known.distinct(found),
            [
                at(0, "127.0.0.1:7000"),
                at(1, "127.0.0.2:7000"),
                at(2, "unresolved")
            ]
        );
    }

    /// The reconnect schedule on the sidecar's own clock, paused: each retry
    /// waits `min·2^n` capped at `max`, jittered into its upper half.
    #[tokio::test(start_paused = true)]
    async fn failed_sessions_are_retried_with_exponential_backoff_and_jitter() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(8));
        let sidecar = Sidecar::new(SidecarConfig {
            // A failure that needs no I/O, so the paused clock moves only
            // by the delays the sidecar sleeps.
            edges: vec![crate::config::Edge::plaintext("not a URL")],
            resolve_interval: crate::config::DEFAULT_RESOLVE_INTERVAL,
            learn_replicas: None,
            token: Secret::new("token"),
            environment: "demo".into(),
            access: String::new(),
            owner: String::new(),
            name: "test".into(),
            connections: 1,
            connect_timeout: Duration::from_secs(2),
            reconnect_min: min,
            reconnect_max: max,
            admin: None,
            proxy: None,
            fallback: None,
            targets: Allowlist::default(),
            kubernetes: None,
        });
        let mut status = sidecar.status();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { sidecar.run(shutdown).await }
        });
        let mut failures = Vec::new();
        while failures.len() < 7 {
            status.changed().await.expect("the sidecar runs");
            let status = status.borrow();
            if status.failures > failures.len() as u64 {
                assert!(status.last_error.is_some());
                failures.push(Instant::now());
            }
        }
        for (n, pair) in failures.windows(2).enumerate() {
            let full = (min * 2u32.pow(n as u32)).min(max);
            let waited = pair[1] - pair[0];
            assert!(
                waited >= full / 2 && waited <= full,
                "retry {} after {waited:?}, not within [{:?}, {full:?}]",
                n + 1,
                full / 2
            );
        }
        shutdown.cancel();
        run.await.unwrap();
    }
}
