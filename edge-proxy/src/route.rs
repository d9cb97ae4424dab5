//! `Host` → the tunnel session and target that serve it.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use pingora_http::RequestHeader;

use crate::errors::Failure;
use crate::preview::PreviewUrl;
use crate::registry::{Session, TunnelRegistry};

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: PreviewUrl,
    pub session: Arc<Session>,
}

impl Target {
    /// Key of the upstream connection pool: connections are shared by
    /// requests to the same target, never across targets.
    pub fn pool_key(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.url.hash(&mut h);
        h.finish()
    }
}

/// The request's host: the `Host` header, or the authority (HTTP/2).
pub fn host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

pub fn resolve(
    req: &RequestHeader,
    domains: &[String],
    registry: &TunnelRegistry,
) -> Result<Target, Failure> {
    let url = PreviewUrl::parse(host(req).unwrap_or(""), domains)?;
    let session = registry.route(&url)?;
    Ok(Target { url, session })
}
