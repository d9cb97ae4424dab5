//! Sidecar configuration: YAML as written, validated into the runtime form.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tunnel_proto::{Route, UpstreamProtocol, UpstreamTls};
use yaml_config::ServiceProtocol;

pub use crate::tls::{edge_transport, EdgeTlsOptions, EdgeTransport};

/// Tunnel sessions (TCP connections) kept to the edge by default.
pub const DEFAULT_CONNECTIONS: u32 = 2;
/// How long dialing a target may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First reconnect delay after a failure.
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_secs(1);
/// Longest reconnect delay.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(60);
/// How often the edge's host names are looked up again for replicas.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(15);

/// A secret whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

mod raw {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SidecarFile {
        pub edge: Edges,
        /// How often the edge's host names are looked up again.
        pub resolve_interval: Option<String>,
        /// Keep sessions with the replicas the edge tells of too.
        pub learn_replicas: Option<bool>,
        pub token: Option<String>,
        pub token_file: Option<String>,
        /// Name of an environment variable holding the token.
        pub token_env: Option<String>,
        /// Allow `http://` to an edge that is not on loopback.
        #[serde(default)]
        pub insecure_plaintext: bool,
        /// `http://[user:password@]host:port` of an HTTP proxy to reach
        /// the edge through (else `HTTPS_PROXY`).
        pub proxy: Option<String>,
        /// The tunnel over a WebSocket when gRPC fails.
        pub fallback: Option<Fallback>,
        pub tls: Option<crate::tls::EdgeTlsOptions>,
        pub environment: Option<String>,
        /// A stricter access level for this environment than the edge
        /// gives it: `authenticated`, `shared` or `personal`.
        pub access: Option<String>,
        /// With `access: personal`: the owner's subject or email.
        pub owner: Option<String>,
        pub name: Option<String>,
        pub connections: Option<u32>,
        pub connect_timeout: Option<String>,
        #[serde(default)]
        pub reconnect: Reconnect,
        #[serde(default)]
        pub targets: Vec<Target>,
        /// `IP:port` of the admin listener (probes, metrics).
        pub admin: Option<String>,
        /// Agent mode: targets and routes from the Kubernetes API.
        pub kubernetes: Option<Kubernetes>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Kubernetes {
        pub namespace: Option<String>,
        pub ingress_class: Option<String>,
        pub publish_address: Option<String>,
    }

    /// One URL, or the replicas' URLs.
    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    pub enum Edges {
        One(String),
        Many(Vec<String>),
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Fallback {
        pub url: String,
        pub after: Option<u32>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Reconnect {
        pub min: Option<String>,
        pub max: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Target {
        pub service: String,
        pub port: u16,
        pub address: String,
        /// Default: `http1`.
        pub protocol: Option<ServiceProtocol>,
        pub tls: Option<TargetTls>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TargetTls {
        pub server_name: Option<String>,
        /// PEM file of the roots that signed the service's certificate.
        pub ca: Option<String>,
        /// The old name of `ca`, kept to say where it went.
        pub ca_file: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        pub insecure_skip_verify: bool,
    }
}

#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The edge's tunnel listener: one URL, or one per replica. Every
    /// address a URL's host name resolves to is a replica of its own.
    pub edges: Vec<Edge>,
    /// How often host names in `edges` are looked up again.
    pub resolve_interval: Duration,
    /// How to dial the replicas the edge tells of; `None`: only `edges`.
    pub learn_replicas: Option<Learn>,
    pub token: Secret,
    /// Empty: the environment the token allows.
    pub environment: String,
    /// The access level asked of the edge (empty: the edge's).
    pub access: String,
    /// With `access: personal`: the owner (empty: none).
    pub owner: String,
    pub name: String,
    pub connections: u32,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub targets: Allowlist,
    /// Agent mode (`kubernetes:`): the namespace's Services are the
    /// allowlist, Ingresses and annotated Services the routes.
    pub kubernetes: Option<crate::kubernetes::Settings>,
    /// `admin`: where `/healthz`, `/readyz` and `/metrics` are served.
    pub admin: Option<std::net::SocketAddr>,
    /// The HTTP proxy the edge is reached through, if any.
    pub proxy: Option<crate::proxy::Proxy>,
    /// Where to go when the gRPC transport keeps failing.
    pub fallback: Option<Fallback>,
}

/// A `wss://` or `ws://` URL: the tunnel over a WebSocket.
fn is_websocket_url(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or_default();
    scheme.eq_ignore_ascii_case("wss") || scheme.eq_ignore_ascii_case("ws")
}

/// `fallback`: after `after` failed sessions in a row with a (gRPC) edge,
/// the sidecar tries the tunnel over a WebSocket at `edge`, and back after
/// as many failures there.
#[derive(Debug, Clone)]
pub struct Fallback {
    pub edge: Edge,
    pub after: u32,
}

/// Failed sessions in a row before the sidecar tries the other transport.
pub const DEFAULT_FALLBACK_AFTER: u32 = 3;

/// `learn_replicas: true`: replicas the edge tells of are dialed with the
/// same `tls` section (each URL's own host is the name checked) and
/// `insecure_plaintext` as the configured ones.
#[derive(Debug, Clone, Default)]
pub struct Learn {
    pub tls: EdgeTlsOptions,
    pub insecure_plaintext: bool,
}

impl Learn {
    /// A URL the edge at `by` told of, as an edge to dial: checked as the
    /// configured ones are, and with `by`'s scheme, so a TLS edge cannot
    /// steer the token onto plaintext.
    pub fn edge(&self, url: &str, by: &Edge) -> Result<Edge, String> {
        let scheme = |u: &str| u.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if scheme(url) != scheme(&by.url) {
            return Err(format!(
                "{url:?} is not {}",
                by.url.split("://").next().unwrap_or("")
            ));
        }
        let transport = edge_transport(url, self.tls.clone(), self.insecure_plaintext)
            .map_err(|problems| problems.join("; "))?;
        Ok(Edge {
            url: url.to_string(),
            transport,
        })
    }
}

/// An edge URL and how to speak to it.
#[derive(Debug, Clone)]
pub struct Edge {
    /// `https://host:port` (or `http://`) of the edge's tunnel listener, or
    /// `wss://host[:port]` (or `ws://`) of its visitor port, for the tunnel
    /// over a WebSocket.
    pub url: String,
    /// TLS to the edge (the URL's host is the name checked), or plaintext.
    pub transport: EdgeTransport,
}

impl Edge {
    /// The tunnel over a WebSocket (`wss://`, `ws://`) rather than gRPC.
    pub fn websocket(&self) -> bool {
        is_websocket_url(&self.url)
    }

    /// The URL's host (an IPv6 address without brackets).
    pub fn host(&self) -> Option<String> {
        let uri: http::Uri = self.url.parse().ok()?;
        Some(uri.host()?.trim_matches(['[', ']']).to_string())
    }

    /// A plaintext edge (loopback, tests).
    pub fn plaintext(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            transport: EdgeTransport::Plaintext { warn: false },
        }
    }
}

/// A service this sidecar may reach, as visitors name it, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub service: String,
    pub port: u16,
    /// `host:port` the sidecar dials.
    pub address: String,
    /// How the edge speaks to the service (the sidecar only moves bytes).
    pub protocol: UpstreamProtocol,
    /// With [`UpstreamProtocol::Tls`]: how the edge checks the certificate.
    pub tls: Option<UpstreamTls>,
}

impl Target {
    /// A plain HTTP/1.1 service.
    pub fn new(service: impl Into<String>, port: u16, address: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            port,
            address: address.into(),
            protocol: UpstreamProtocol::Http1,
            tls: None,
        }
    }

    /// The route registered with the edge.
    pub fn route(&self) -> Route {
        Route {
            service: self.service.clone(),
            port: self.port.into(),
            protocol: self.protocol as i32,
            tls: self.tls.clone(),
        }
    }
}

impl From<(String, u16, String)> for Target {
    fn from((service, port, address): (String, u16, String)) -> Self {
        Target::new(service, port, address)
    }
}

/// The only places this sidecar connects to: `(service, port)` → address.
/// Whatever the edge asks, nothing else is dialed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Allowlist {
    targets: Vec<Target>,
    index: HashMap<(String, u16), usize>,
}

impl Allowlist {
    pub fn new(targets: impl IntoIterator<Item = impl Into<Target>>) -> Self {
        let mut list = Self::default();
        for target in targets {
            let target = target.into();
            list.index
                .insert((target.service.clone(), target.port), list.targets.len());
            list.targets.push(target);
        }
        list
    }

    pub fn resolve(&self, service: &str, port: u32) -> Option<&str> {
        let port = u16::try_from(port).ok()?;
        let i = *self.index.get(&(service.to_string(), port))?;
        Some(&self.targets[i].address)
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }
}

pub use yaml_config::ConfigError;
use yaml_config::{duration, is_label};

impl SidecarConfig {
    /// Loads and validates a file; relative paths in it (`token_file`,
    /// `targets[].tls.ca`, the `tls` section's files) are relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let base = yaml_config::config_dir(path);
        yaml_config::load(path, |raw| validate(raw, &base))
    }

    /// Parses and validates YAML text; `file` names it in errors (and its
    /// folder anchors relative paths).
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let base = yaml_config::config_dir(Path::new(file));
        yaml_config::parse(text, file, |raw| validate(raw, &base))
    }
}

fn validate(raw: raw::SidecarFile, base: &Path) -> Result<SidecarConfig, Vec<String>> {
    let mut problems = Vec::new();
    let mut tls = raw.tls.unwrap_or_default();
    for file in [&mut tls.ca, &mut tls.client_cert, &mut tls.client_key]
        .into_iter()
        .flatten()
    {
        *file = base.join(&*file).to_string_lossy().into_owned();
    }
    let edges = validate_edges(raw.edge, &tls, raw.insecure_plaintext, &mut problems);
    let fallback = raw.fallback.and_then(|f| {
        let after = f.after.unwrap_or(DEFAULT_FALLBACK_AFTER);
        if !(1..=100).contains(&after) {
            problems.push(format!("fallback.after: {after} is out of range 1..=100"));
        }
        if !is_websocket_url(&f.url) {
            problems.push(format!(
                "fallback.url: {:?} must be the edge's WebSocket URL, wss://edge.example.com (its HTTPS port)",
                f.url
            ));
            return None;
        }
        let plaintext = raw.insecure_plaintext && f.url.starts_with("ws://");
        match edge_transport(&f.url, tls.clone(), plaintext) {
            Ok(transport) => Some(Fallback {
                edge: Edge { url: f.url, transport },
                after,
            }),
            Err(e) => {
                problems.extend(e.into_iter().map(|m| m.replacen("edge: ", "fallback.url: ", 1)));
                None
            }
        }
    });
    let proxy = crate::proxy::Proxy::chosen(raw.proxy.as_deref(), "proxy").unwrap_or_else(|e| {
        problems.push(e);
        None
    });
    let learn_replicas = raw.learn_replicas.unwrap_or(true).then(|| Learn {
        tls: tls.clone(),
        insecure_plaintext: raw.insecure_plaintext,
    });
    let token = match (raw.token, raw.token_file, raw.token_env) {
        (Some(t), None, None) => Some(t),
        (None, Some(f), None) => match std::fs::read_to_string(base.join(&f)) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                problems.push(format!(
                    "token_file: cannot read {}: {e}",
                    base.join(&f).display()
                ));
                None
            }
        },
        (None, None, Some(var)) => match std::env::var(&var) {
            Ok(t) => Some(t.trim().to_string()),
            Err(_) => {
                problems.push(format!(
                    "token_env: the environment variable {var:?} is not set (or not UTF-8)"
                ));
                None
            }
        },
        (None, None, None) => {
            problems.push("token: required (or token_file, or token_env)".into());
            None
        }
        _ => {
            problems.push("token, token_file, token_env: set one of them, not several".into());
            None
        }
    };
    if matches!(&token, Some(t) if t.is_empty()) {
        problems.push("token: must not be empty".into());
    }
    let connections = raw.connections.unwrap_or(DEFAULT_CONNECTIONS);
    if !(1..=64).contains(&connections) {
        problems.push(format!("connections: {connections} is out of range 1..=64"));
    }
    let mut seen = HashMap::new();
    for (i, t) in raw.targets.iter().enumerate() {
        if !is_label(&t.service) {
            problems.push(format!(
                "targets[{i}].service: {:?} is not a valid service name (lowercase letters, digits, '-')",
                t.service
            ));
        }
        if t.port == 0 {
            problems.push(format!("targets[{i}].port: must be 1-65535"));
        }
        if !t
            .address
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            problems.push(format!(
                "targets[{i}].address: {:?} is not host:port (e.g. web.default.svc:8080)",
                t.address
            ));
        }
        if let Some(j) = seen.insert((t.service.clone(), t.port), i) {
            problems.push(format!(
                "targets[{i}]: {}:{} is already listed at targets[{j}]",
                t.service, t.port
            ));
        }
    }
    let targets: Vec<Target> = raw
        .targets
        .into_iter()
        .enumerate()
        .map(|(i, t)| validate_target(i, t, base, &mut problems))
        .collect();
    let resolve_interval = duration(
        &raw.resolve_interval,
        "resolve_interval",
        DEFAULT_RESOLVE_INTERVAL,
        &mut problems,
    );
    if resolve_interval < Duration::from_secs(1) {
        problems.push("resolve_interval: at least 1s".into());
    }
    let connect_timeout = duration(
        &raw.connect_timeout,
        "connect_timeout",
        DEFAULT_CONNECT_TIMEOUT,
        &mut problems,
    );
    let reconnect_min = duration(
        &raw.reconnect.min,
        "reconnect.min",
        DEFAULT_RECONNECT_MIN,
        &mut problems,
    );
    let reconnect_max = duration(
        &raw.reconnect.max,
        "reconnect.max",
        DEFAULT_RECONNECT_MAX,
        &mut problems,
    );
    if let Some(env) = &raw.environment {
        if !is_label(env) || env.contains('-') {
            problems.push(format!(
                "environment: {env:?} is not a valid environment name"
            ));
        }
    }
    match raw.access.as_deref() {
        None | Some("authenticated" | "shared" | "personal") => {}
        Some(other) => problems.push(format!(
            "access: {other:?} is not a level a sidecar may ask for (authenticated, shared or personal)"
        )),
    }
    if raw.owner.is_some() && raw.access.as_deref() != Some("personal") {
        problems.push("owner: only with access: personal".into());
    }
    if raw.kubernetes.is_some() && !targets.is_empty() {
        problems.push(
            "targets: not with kubernetes: (the namespace's Services are the allowlist)".into(),
        );
    }
    let kubernetes = raw.kubernetes.map(|k| {
        if let Some(ns) = &k.namespace {
            if !is_label(ns) {
                problems.push(format!("kubernetes.namespace: {ns:?} is not a namespace name"));
            }
        }
        let ingress_class = k.ingress_class.unwrap_or_else(|| "preview".into());
        if ingress_class.is_empty() || ingress_class.len() > 253 {
            problems.push(format!("kubernetes.ingress_class: {ingress_class:?} is not a class name"));
        }
        if let Some(address) = &k.publish_address {
            if address.parse::<std::net::IpAddr>().is_err() && !yaml_config::is_hostname(address) {
                problems.push(format!(
                    "kubernetes.publish_address: {address:?} is neither an IP address nor a host name"
                ));
            }
        }
        crate::kubernetes::Settings {
            namespace: k.namespace,
            ingress_class,
            publish_address: k.publish_address,
        }
    });
    let admin = raw.admin.as_deref().and_then(|a| match a.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push(format!("admin: {a:?} is not an IP:port address"));
            None
        }
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(SidecarConfig {
        edges,
        resolve_interval,
        learn_replicas,
        token: Secret::new(token.expect("checked")),
        environment: raw.environment.unwrap_or_default(),
        access: raw.access.unwrap_or_default(),
        owner: raw.owner.unwrap_or_default(),
        name: raw.name.unwrap_or_else(default_name),
        connections,
        connect_timeout,
        reconnect_min,
        reconnect_max,
        admin,
        proxy,
        fallback,
        targets: Allowlist::new(targets),
        kubernetes,
    })
}

/// `edge`: one URL or a list of them, each checked with the `tls` section
/// (the name in each URL's certificate is its own host).
fn validate_edges(
    edge: raw::Edges,
    tls: &EdgeTlsOptions,
    insecure_plaintext: bool,
    problems: &mut Vec<String>,
) -> Vec<Edge> {
    let (urls, listed) = match edge {
        raw::Edges::One(url) => (vec![url], false),
        raw::Edges::Many(urls) => (urls, true),
    };
    if urls.is_empty() {
        problems.push("edge: list at least one URL".into());
    }
    let mut edges = Vec::new();
    for (i, url) in urls.into_iter().enumerate() {
        if edges.iter().any(|e: &Edge| e.url == url) {
            problems.push(format!("edge[{i}]: {url:?} is listed twice"));
            continue;
        }
        match edge_transport(&url, tls.clone(), insecure_plaintext) {
            Ok(transport) => edges.push(Edge { url, transport }),
            // Each message names `edge:`; in a list, say which one.
            Err(e) if listed => problems.extend(
                e.into_iter()
                    .map(|m| m.replacen("edge: ", &format!("edge[{i}]: "), 1)),
            ),
            Err(e) => problems.extend(e),
        }
    }
    edges
}

/// The protocol and TLS settings of `targets[i]` (its name and address are
/// checked by the caller).
fn validate_target(i: usize, t: raw::Target, base: &Path, problems: &mut Vec<String>) -> Target {
    let protocol = wire_protocol(t.protocol.unwrap_or(ServiceProtocol::Http1));
    let tls = match (protocol, t.tls) {
        (UpstreamProtocol::Tls, tls) => {
            let tls = tls.unwrap_or(raw::TargetTls {
                server_name: None,
                ca: None,
                ca_file: None,
                insecure_skip_verify: false,
            });
            if tls.ca_file.is_some() {
                problems.push(format!(
                    "targets[{i}].tls.ca_file: renamed to `ca`, as in the edge's routes[].upstream.tls"
                ));
            }
            let host = t.address.rsplit_once(':').map(|(h, _)| h).unwrap_or("");
            let ca_pem = match &tls.ca {
                None => Default::default(),
                Some(f) => std::fs::read(base.join(f)).unwrap_or_else(|e| {
                    problems.push(format!(
                        "targets[{i}].tls.ca: cannot read {}: {e}",
                        base.join(f).display()
                    ));
                    Vec::new()
                }),
            };
            Some(UpstreamTls {
                server_name: tls.server_name.unwrap_or_else(|| host.to_string()),
                ca_pem: ca_pem.into(),
                insecure_skip_verify: tls.insecure_skip_verify,
            })
        }
        (_, Some(_)) => {
            problems.push(format!(
                "targets[{i}].tls: only allowed with `protocol: tls`"
            ));
            None
        }
        (_, None) => None,
    };
    Target {
        service: t.service,
        port: t.port,
        address: t.address,
        protocol,
        tls,
    }
}

/// The protocol as the tunnel's registration carries it.
pub fn wire_protocol(protocol: ServiceProtocol) -> UpstreamProtocol {
    match protocol {
        ServiceProtocol::Http1 => UpstreamProtocol::Http1,
        ServiceProtocol::H2c => UpstreamProtocol::H2c,
        ServiceProtocol::Tls => UpstreamProtocol::Tls,
        ServiceProtocol::Tcp => UpstreamProtocol::Tcp,
    }
}

pub fn default_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "sidecar".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "edge: http://127.0.0.1:7000\ntoken: t0k3n\nenvironment: demo\ntargets:\n  - service: hello\n    port: 8080\n    address: 127.0.0.1:9000\n";

    #[test]
    fn loads_and_resolves_only_listed_targets() {
        let c = SidecarConfig::parse(GOOD, "s.yaml").unwrap();
        assert_eq!(c.targets.resolve("hello", 8080), Some("127.0.0.1:9000"));
        assert_eq!(c.targets.resolve("hello", 8081), None);
        assert_eq!(c.targets.resolve("kubernetes", 443), None);
        assert_eq!(c.targets.resolve("hello", 70000), None);
        assert_eq!(format!("{:?}", c.token), "***");
        assert_eq!(c.connections, DEFAULT_CONNECTIONS);
        assert_eq!(c.targets.targets()[0].protocol, UpstreamProtocol::Http1);
    }

    #[test]
    fn protocols_and_tls_settings() {
        let text = GOOD.replace(
            "    address: 127.0.0.1:9000\n",
            "    address: api.svc:9000\n    protocol: tls\n    tls: { insecure_skip_verify: true }\n  - { service: grpc, port: 50051, address: 127.0.0.1:50051, protocol: h2c }\n",
        );
        let c = SidecarConfig::parse(&text, "s.yaml").unwrap();
        let [tls, h2c] = c.targets.targets() else {
            panic!("two targets")
        };
        assert_eq!(tls.protocol, UpstreamProtocol::Tls);
        let settings = tls.tls.as_ref().unwrap();
        assert_eq!(settings.server_name, "api.svc");
        assert!(settings.insecure_skip_verify);
        assert_eq!(h2c.route().protocol, UpstreamProtocol::H2c as i32);

        let bad = GOOD.replace(
            "    address: 127.0.0.1:9000\n",
            "    address: 127.0.0.1:9000\n    protocol: http1\n  - { service: b, port: 1, address: b:1, tls: {} }\n  - { service: c, port: 1, address: c:1, protocol: tls, tls: { ca: /nonexistent.pem } }\n",
        );
        let err = SidecarConfig::parse(&bad, "s.yaml")
            .unwrap_err()
            .to_string();
        for needle in ["targets[1].tls", "targets[2].tls.ca"] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
        assert!(!err.contains("targets[0]"), "{err}");
    }

    #[test]
    fn the_old_ca_file_spelling_names_the_new_one() {
        let old = GOOD.replace(
            "    address: 127.0.0.1:9000\n",
            "    address: 127.0.0.1:9000\n    protocol: tls\n    tls: { ca_file: ca.pem }\n",
        );
        let err = SidecarConfig::parse(&old, "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("targets[0].tls.ca_file: renamed to `ca`"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_protocol_names_the_allowed_ones_and_its_line() {
        let bad = GOOD.replace(
            "    address: 127.0.0.1:9000\n",
            "    address: 127.0.0.1:9000\n    protocol: h3\n",
        );
        let err = SidecarConfig::parse(&bad, "s.yaml")
            .unwrap_err()
            .to_string();
        for needle in [
            "s.yaml:",
            "unknown variant `h3`, expected one of http1, h2c, tls",
            "line 8 column 15",
        ] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
    }

    #[test]
    fn relative_paths_start_at_the_config_file_not_the_working_directory() {
        let dir = std::env::temp_dir().join(format!("sidecar-config-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("secrets")).unwrap();
        std::fs::write(dir.join("secrets/token"), "from-a-file\n").unwrap();
        std::fs::write(dir.join("ca.pem"), "PEM").unwrap();
        let yaml = "edge: http://127.0.0.1:7000\ntoken_file: secrets/token\ntargets:\n  - { service: api, port: 443, address: api:443, protocol: tls, tls: { ca: ca.pem } }\n";
        let file = dir.join("sidecar.yaml");
        std::fs::write(&file, yaml).unwrap();
        // The tests run in the crate's folder, where neither file is.
        assert!(!Path::new("secrets/token").exists());
        for c in [
            SidecarConfig::load(&file).unwrap(),
            SidecarConfig::parse(yaml, file.to_str().unwrap()).unwrap(),
        ] {
            assert_eq!(c.token.expose(), "from-a-file");
            let tls = c.targets.targets()[0].tls.as_ref().unwrap();
            assert_eq!(&tls.ca_pem[..], b"PEM");
        }
        // A missing file is named where it was looked for.
        std::fs::remove_file(dir.join("secrets/token")).unwrap();
        let err = SidecarConfig::load(&file).unwrap_err().to_string();
        let looked_at = dir.join("secrets/token");
        assert!(
            err.contains(&format!("token_file: cannot read {}", looked_at.display())),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `wss://` and `ws://` edges are the WebSocket transport, under the
    /// same plaintext rules; TLS to a `wss://` edge offers HTTP/1.1 (the
    /// upgrade), to an `https://` one HTTP/2. `fallback` takes only a
    /// WebSocket URL and a sane count; `proxy` only an http:// URL.
    #[test]
    fn websocket_edges_fallback_and_proxy() {
        let ws = SidecarConfig::parse(&GOOD.replace("http://", "ws://"), "s.yaml").unwrap();
        assert!(ws.edges[0].websocket());
        assert!(matches!(
            ws.edges[0].transport,
            EdgeTransport::Plaintext { warn: false }
        ));
        let alpn =
            |text: &str| match &SidecarConfig::parse(text, "s.yaml").unwrap().edges[0].transport {
                EdgeTransport::Tls(tls) => tls.config.alpn_protocols.clone(),
                plain => panic!("{plain:?}"),
            };
        let pinned = "tls:\n  pin_sha256: [\"0000000000000000000000000000000000000000000000000000000000000000\"]\n";
        let wss = GOOD.replace("http://127.0.0.1:7000", "wss://edge.example.com") + pinned;
        assert_eq!(alpn(&wss), vec![b"http/1.1".to_vec()]);
        let https = GOOD.replace("http://127.0.0.1:7000", "https://edge.example.com:7000") + pinned;
        assert_eq!(alpn(&https), vec![b"h2".to_vec()]);
        let remote_ws = GOOD.replace("http://127.0.0.1:7000", "ws://edge.example.com");
        let err = SidecarConfig::parse(&remote_ws, "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("insecure_plaintext"), "{err}");

        let fallback = format!("{GOOD}fallback:\n  url: ws://127.0.0.1:8080\n");
        let f = SidecarConfig::parse(&fallback, "s.yaml")
            .unwrap()
            .fallback
            .unwrap();
        assert_eq!(
            (f.edge.url.as_str(), f.after),
            ("ws://127.0.0.1:8080", DEFAULT_FALLBACK_AFTER)
        );
        let grpc = format!("{GOOD}fallback:\n  url: http://127.0.0.1:8080\n  after: 0\n");
        let err = SidecarConfig::parse(&grpc, "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fallback.url") && err.contains("wss://"),
            "{err}"
        );
        assert!(err.contains("fallback.after"), "{err}");

        let proxy = format!("{GOOD}proxy: http://u:p@proxy.corp:3128\n");
        let p = SidecarConfig::parse(&proxy, "s.yaml")
            .unwrap()
            .proxy
            .unwrap();
        assert_eq!(p.address, "proxy.corp:3128");
        let bad = format!("{GOOD}proxy: socks5://proxy.corp:1080\n");
        let err = SidecarConfig::parse(&bad, "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("proxy:") && err.contains("http://"), "{err}");
    }

    #[test]
    fn errors_name_file_and_field() {
        let err = SidecarConfig::parse(&GOOD.replace("token:", "tokn:"), "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("s.yaml:") && err.contains("tokn"), "{err}");
        let err = SidecarConfig::parse(&GOOD.replace("127.0.0.1:9000", "nowhere"), "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("targets[0].address"), "{err}");
    }

    #[test]
    fn plaintext_only_to_loopback_unless_insecure() {
        assert!(matches!(
            SidecarConfig::parse(GOOD, "s.yaml").unwrap().edges[0].transport,
            EdgeTransport::Plaintext { warn: false }
        ));
        let remote = GOOD.replace("http://127.0.0.1:7000", "http://edge.example.com:7000");
        let err = SidecarConfig::parse(&remote, "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("edge:") && err.contains("insecure_plaintext"),
            "{err}"
        );
        let insecure = format!("{remote}insecure_plaintext: true\n");
        assert!(matches!(
            SidecarConfig::parse(&insecure, "s.yaml").unwrap().edges[0].transport,
            EdgeTransport::Plaintext { warn: true }
        ));
        let tls_on_http = format!("{GOOD}tls: {{ ca: ca.pem }}\n");
        let old = GOOD.replace("http://127.0.0.1:7000", "https://edge.example.com:7000")
            + "tls: { ca_file: ca.pem }\n";
        let err = SidecarConfig::parse(&old, "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.ca_file: renamed to `ca`"), "{err}");
        let err = SidecarConfig::parse(&tls_on_http, "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls: set, but edge"), "{err}");
    }

    #[test]
    fn tls_settings_are_checked_with_their_paths() {
        let text = GOOD.replace("http://127.0.0.1:7000", "https://edge.example.com:7000")
            + "tls:\n  ca: /nonexistent/ca.pem\n  pin_sha256: [abc]\n  client_cert: c.pem\n";
        let err = SidecarConfig::parse(&text, "s.yaml")
            .unwrap_err()
            .to_string();
        for needle in [
            "tls.ca: ",
            "tls.pin_sha256[0]",
            "tls.client_cert, tls.client_key",
        ] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
        // Pins alone need no CA.
        let pinned = GOOD.replace("http://127.0.0.1:7000", "https://10.0.0.1:7000")
            + &format!("tls:\n  pin_sha256: [\"{}\"]\n", "ab".repeat(32));
        let c = SidecarConfig::parse(&pinned, "s.yaml").unwrap();
        assert!(matches!(c.edges[0].transport, EdgeTransport::Tls(_)));
        assert!(!format!("{c:?}").contains("t0k3n"));
    }

    #[test]
    fn token_from_an_environment_variable() {
        let text = GOOD.replace("token: t0k3n", "token_env: SIDECAR_TEST_TOKEN_VAR");
        let err = SidecarConfig::parse(&text, "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("token_env") && err.contains("SIDECAR_TEST_TOKEN_VAR"),
            "{err}"
        );
        // Only this test reads this variable.
        std::env::set_var("SIDECAR_TEST_TOKEN_VAR", "from-env\n");
        let c = SidecarConfig::parse(&text, "s.yaml").unwrap();
        assert_eq!(c.token.expose(), "from-env");
        let both = format!("{text}token: x\n");
        assert!(SidecarConfig::parse(&both, "s.yaml").is_err());
    }

    #[test]
    fn edge_replicas_as_a_list_each_checked_with_its_index() {
        let list = GOOD.replace(
            "edge: http://127.0.0.1:7000",
            "edge:\n  - http://127.0.0.1:7000\n  - http://127.0.0.1:7001",
        );
        let c = SidecarConfig::parse(&list, "s.yaml").unwrap();
        let urls: Vec<_> = c.edges.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(urls, ["http://127.0.0.1:7000", "http://127.0.0.1:7001"]);
        assert_eq!(c.resolve_interval, DEFAULT_RESOLVE_INTERVAL);

        let bad = GOOD.replace(
            "edge: http://127.0.0.1:7000",
            "edge: [http://127.0.0.1:7000, http://edge.example.com:7000, http://127.0.0.1:7000, ftp://x]",
        );
        let err = SidecarConfig::parse(&bad, "s.yaml")
            .unwrap_err()
            .to_string();
        for needle in [
            "edge[1]: \"http://edge.example.com:7000\" is plaintext",
            "edge[2]: \"http://127.0.0.1:7000\" is listed twice",
            "edge[3]: \"ftp://x\" must be a URL",
        ] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
        let empty = GOOD.replace("edge: http://127.0.0.1:7000", "edge: []");
        let err = SidecarConfig::parse(&empty, "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("edge: list at least one URL"), "{err}");
        let quick = format!("{GOOD}resolve_interval: 10ms\n");
        let err = SidecarConfig::parse(&quick, "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("resolve_interval: at least 1s"), "{err}");
    }
}
