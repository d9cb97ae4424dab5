//! What the sidecar serves: the targets it may dial, the routes it
//! registers with the edge, and the custom-domain rules it claims. From
//! the YAML (fixed) or from the Kubernetes API (agent mode, changing).

use std::sync::Arc;

use tokio::sync::watch;
use tunnel_proto::{HostRule, Route};

use crate::config::Allowlist;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// The only places this sidecar connects to.
    pub targets: Allowlist,
    /// The routes the edge gets, in order (a subset of the targets).
    pub routes: Vec<Route>,
    pub host_rules: Vec<HostRule>,
}

impl Catalog {
    /// The YAML's targets, each a route.
    pub fn fixed(targets: &Allowlist) -> Self {
        Self {
            routes: targets.targets().iter().map(|t| t.route()).collect(),
            targets: targets.clone(),
            host_rules: Vec::new(),
        }
    }
}

/// The catalog as it changes; `None` until known (agent mode, before the
/// first list from the API).
pub type Catalogs = watch::Receiver<Option<Arc<Catalog>>>;
