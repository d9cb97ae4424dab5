//! Hot reload: the config file is re-read when its content (or that of a
//! certificate or key it names) changes (polled,
//! which also sees Kubernetes ConfigMap symlink swaps) and on SIGHUP. A new
//! config that does not validate is refused with every reason logged; the
//! last good one keeps running. [`Reloader`] swaps it into the running
//! edge: config, certificates, what each token grants, the Redis
//! connection of shared state.
//!
//! Above `config`, `tls` and `tunnel`, which it updates; below `server`.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::signal::unix::Signal;
use tracing::error;

use crate::config::EdgeConfig;
use crate::shared;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::{info, warn};

use crate::tls::{CertStore, SniResolver, TunnelTlsState};
use crate::tunnel::registry::{Authorizations, TunnelRegistry};

/// How often the file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Watches `path` until the task is dropped. `hangup` is a SIGHUP stream,
/// installed by the caller before it announces itself.
pub async fn watch(path: PathBuf, reloader: Reloader, mut hangup: Signal) {
    let mut last = fingerprint(&path, &reloader.watched_files());
    loop {
        let trigger = tokio::select! {
            _ = hangup.recv() => "SIGHUP",
            _ = tokio::time::sleep(POLL_INTERVAL) => {
                if fingerprint(&path, &reloader.watched_files()) == last {
                    continue;
                }
                "file changed"
            }
        };
        last = fingerprint(&path, &reloader.watched_files());
        match EdgeConfig::load(&path) {
            Ok(config) => reloader.apply(config, trigger),
            Err(e) => {
                reloader.refused();
                error!(trigger, error = %e, "config reload refused; keeping the last good config")
            }
        }
    }
}

/// A hash of the config file and the certificate files it names (missing
/// files hash as absent, so their return is noticed too).
fn fingerprint(path: &Path, others: &[PathBuf]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for file in std::iter::once(path).chain(others.iter().map(PathBuf::as_path)) {
        std::fs::read(file).ok().hash(&mut h);
    }
    h.finish()
}

/// Applies a new config to a running edge.
#[derive(Clone)]
pub struct Reloader {
    config: Arc<ArcSwap<EdgeConfig>>,
    registry: Arc<TunnelRegistry>,
    certificates: Arc<SniResolver>,
    tunnel_tls: Arc<TunnelTlsState>,
    shared: Arc<shared::InForce>,
    local: shared::Local,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Reloader {
    pub fn new(
        config: Arc<ArcSwap<EdgeConfig>>,
        registry: Arc<TunnelRegistry>,
        certificates: Arc<SniResolver>,
        tunnel_tls: Arc<TunnelTlsState>,
        shared: Arc<shared::InForce>,
        local: shared::Local,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            config,
            registry,
            certificates,
            tunnel_tls,
            shared,
            local,
            metrics,
        }
    }

    /// Swaps `new` in atomically: requests already routed keep the settings
    /// they started with. Listen addresses (`tcp_ports`' too), the keep-alive
    /// pool size and HTTP/2's idle timeout only change on restart (a warning
    /// says so).
    /// Sessions whose token no longer grants their environment are closed.
    pub fn apply(&self, mut new: EdgeConfig, trigger: &str) {
        let old = self.config.load();
        new.adopt_limits(&old);
        if old.http_addr != new.http_addr
            || old.tunnel_addr != new.tunnel_addr
            || old.admin_addr != new.admin_addr
        {
            warn!("listen addresses changed in the config; they take effect on restart");
        }
        if old.upstream.keepalive_pool_size != new.upstream.keepalive_pool_size {
            warn!("upstream.keepalive_pool_size changed; it takes effect on restart");
        }
        if old.visitors.keepalive_timeout != new.visitors.keepalive_timeout {
            // Pingora takes HTTP/2's idle timeout once, with the server options.
            warn!("visitors.keepalive_timeout changed; HTTP/1.1 connections use it now, HTTP/2 connections after a restart");
        }
        if old.tunnel.tls.is_some() != new.tunnel.tls.is_some() {
            warn!("tunnel.tls turned on or off in the config; it takes effect on restart");
        }
        if old.traces != new.traces {
            warn!("traces changed in the config; they take effect on restart");
        }
        if old.https_addr != new.https_addr {
            warn!("listen.https changed in the config; it takes effect on restart");
        }
        let listeners = |c: &EdgeConfig| -> Vec<_> {
            c.tcp_ports
                .iter()
                .map(|p| (p.name.clone(), p.listen))
                .collect()
        };
        if listeners(&old) != listeners(&new) {
            warn!("tcp_ports listeners changed in the config; they take effect on restart (targets and allow lists of the ports kept apply now)");
        }
        for warning in &new.warnings {
            warn!("{warning}");
        }
        self.registry.replicas().configure(&new.tunnel);
        if old.redis != new.redis {
            // Counts start afresh in the new Redis (or in memory), and the
            // replicas are learned from it.
            self.registry.replicas().learned(Vec::new());
            self.shared
                .store(shared::for_settings(new.redis.as_ref(), &self.local));
        }
        let routes = new.routes.len();
        self.certificates.replace(cert_store(&new));
        apply_tunnel_tls(&new, &self.tunnel_tls);
        self.registry
            .set_authorizations(Authorizations::from_config(&new));
        self.config.store(Arc::new(new));
        let revoked = self.registry.revoke_unauthorized();
        self.metrics.reloads_applied.fetch_add(1, Ordering::Relaxed);
        info!(trigger, routes, revoked, "config reloaded");
    }

    /// Counts a new config that failed to load (the last good one stays).
    pub fn refused(&self) {
        self.metrics.reloads_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The files whose changes trigger a reload besides the config itself.
    pub fn watched_files(&self) -> Vec<std::path::PathBuf> {
        self.config.load().watched_files()
    }
}

/// The tunnel listener's certificates and the clusters' client CAs.
pub fn apply_tunnel_tls(config: &EdgeConfig, state: &TunnelTlsState) {
    if let Some(tls) = &config.tunnel.tls {
        state
            .certificates
            .replace(CertStore::new(&tls.certificates, true));
    }
    state
        .client_auth
        .replace(config.clusters.iter().filter_map(|c| c.client_ca.as_ref()));
}

/// The visitor certificates a config names.
pub fn cert_store(config: &EdgeConfig) -> CertStore {
    match &config.tls {
        Some(tls) => CertStore::new(&tls.certificates, tls.fallback_to_default),
        None => CertStore::default(),
    }
}
