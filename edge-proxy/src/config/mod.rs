//! Edge configuration: the YAML as written (`raw`), validated into the
//! runtime form (`EdgeConfig`). Validation reports every problem with its
//! YAML path, not just the first. Sidecar token hashes ([`token`]).
//!
//! May use `routing` (the values rules and targets are made of) and `tls`
//! (certificates are loaded, and refused, at validation).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use serde::Deserialize;
use sha2::Digest;

use crate::routing::preview::ServiceRef;
use crate::routing::rules::{HostPattern, RouteRule, RouteTable};
use crate::routing::upstream::{Protocol, TlsUpstream};
use token::TokenHash;

pub mod auth;
pub mod limits;
pub mod ports;
pub mod token;
mod wasm;

/// Idle data streams each sidecar session keeps open by default.
pub const DEFAULT_IDLE_STREAMS: u32 = tunnel_transport::settings::DEFAULT_IDLE_STREAMS;
/// Heartbeat period the edge asks sidecars for; three missed end a session.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = tunnel_transport::settings::HEARTBEAT_INTERVAL;
/// How long a visitor may take to send a whole request head (and a new
/// connection its first one).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request head's size cap: as HTTP/2's default header list size.
pub const DEFAULT_MAX_HEAD_SIZE: u64 = 64 * 1024;
/// Header fields one request may carry.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// A request target's length cap.
pub const DEFAULT_MAX_URI_LENGTH: u64 = 8 * 1024;
/// Streams one HTTP/2 connection may have open at once.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams an HTTP/2 client may reset before they were answered, per
/// connection (h2's default is 20).
pub const DEFAULT_H2_MAX_PENDING_RESETS: usize = 100;
/// How long a visitor's idle keep-alive connection stays open.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// How long a visitor may take nothing of a response before it is closed.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a request waits for a data stream when a session's pool is empty.
pub const DEFAULT_OPEN_STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a shutdown waits for the requests in flight.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a request waits for its environment's sidecar to reconnect.
pub const DEFAULT_SESSION_WAIT: Duration = Duration::from_secs(5);
/// How long the sidecar may take to connect to the target.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the edge waits for the upstream to send (part of) a response.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle upstream connection stays in the pool.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a WebSocket or gRPC stream may stay silent.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Idle upstream connections kept, over all targets.
pub const DEFAULT_KEEPALIVE_POOL_SIZE: usize = 1024;

/// The YAML exactly as users write it.
pub mod raw {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct EdgeFile {
        pub listen: Listen,
        pub preview: Preview,
        #[serde(default)]
        pub clusters: Vec<Cluster>,
        #[serde(default)]
        pub routes: Vec<Route>,
        pub tls: Option<Tls>,
        #[serde(default)]
        pub forwarding: Forwarding,
        #[serde(default)]
        pub tunnel: Tunnel,
        #[serde(default)]
        pub upstream: Upstream,
        #[serde(default)]
        pub visitors: Visitors,
        pub header_policy: Option<header_policy::RawPolicy>,
        pub auth: Option<super::auth::raw::Auth>,
        #[serde(default)]
        pub limits: super::limits::raw::Limits,
        pub redis: Option<Redis>,
        pub admin: Option<Admin>,
        /// How long a shutdown waits for requests in flight.
        pub shutdown_grace: Option<String>,
        pub traces: Option<Traces>,
        #[serde(default)]
        pub tcp_ports: Vec<super::ports::raw::TcpPort>,
    }

    /// `traces:`: spans exported over OTLP.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Traces {
        /// The collector's OTLP/gRPC endpoint.
        pub otlp_endpoint: String,
        pub service_name: Option<String>,
    }

    /// `admin:`: the admin API on `listen.admin`.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Admin {
        /// SHA-256 of the bearer token(s) the API accepts.
        pub token_sha256: OneOrMany,
    }

    /// `redis:`: state shared by several edge replicas.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Redis {
        /// `redis://[user@]host:port/db`, `rediss://…` (TLS) or
        /// `unix:///path/to/socket`.
        pub url: String,
        /// A file holding the password (a Kubernetes Secret), rather than
        /// the URL.
        pub password_file: Option<String>,
        /// How long a request may wait for Redis.
        pub budget: Option<String>,
        pub on_failure: Option<OnFailure>,
        pub key_prefix: Option<String>,
        /// This replica's name in Redis (default: the host name and the
        /// process id).
        pub replica: Option<String>,
    }

    /// What limits do while Redis cannot be reached.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum OnFailure {
        /// Decide in this replica's memory.
        Open,
        /// Refuse the requests limits apply to (503).
        Closed,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Listen {
        pub http: String,
        pub https: Option<String>,
        pub tunnel: String,
        /// Health for probes (`/healthz`, `/readyz`): keep it off the
        /// internet.
        pub admin: Option<String>,
        /// The old place of `visitors.h2c`, kept to say where it went.
        pub h2c: Option<serde::de::IgnoredAny>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Visitors {
        /// Accept HTTP/2 with prior knowledge on `listen.http`.
        #[serde(default)]
        pub h2c: bool,
        /// The visitor listeners sit behind a load balancer that sends
        /// the PROXY protocol (v1 or v2).
        #[serde(default)]
        pub proxy_protocol: bool,
        pub header_timeout: Option<String>,
        pub keepalive_timeout: Option<String>,
        pub send_timeout: Option<String>,
        pub max_head_size: Option<yaml_config::Size>,
        pub max_headers: Option<usize>,
        pub max_uri_length: Option<yaml_config::Size>,
        pub max_body_size: Option<yaml_config::Size>,
        pub http2: Option<Http2>,
    }

    /// `visitors.http2`: what one HTTP/2 connection may ask of the edge.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Http2 {
        pub max_concurrent_streams: Option<u32>,
        /// Streams a client may reset before the edge has answered them
        /// (rapid reset), per connection, before it is closed.
        pub max_pending_resets: Option<usize>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Tls {
        pub certificates: Vec<Certificate>,
        pub unknown_names: Option<UnknownNames>,
        pub redirect_http: Option<bool>,
        pub plain_paths: Option<Vec<String>>,
        pub redirect_port: Option<u16>,
        #[serde(default)]
        pub hsts: Vec<Hsts>,
    }

    /// What the TLS handshake does for a name no certificate covers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum UnknownNames {
        /// Answer with the first certificate.
        Default,
        /// Fail the handshake.
        Refuse,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Forwarding {
        #[serde(default)]
        pub trusted_proxies: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Hsts {
        pub host: String,
        pub max_age: Option<String>,
        #[serde(default)]
        pub include_subdomains: bool,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Certificate {
        pub cert: String,
        pub key: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Preview {
        pub domains: Vec<String>,
        /// Base of the URLs printed to sidecars, e.g. `https://{host}`;
        /// default `http://{host}:<listen.http port>`.
        pub public_url: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Cluster {
        pub name: String,
        /// One hash, or several while a token rotates.
        pub token_sha256: Option<OneOrMany>,
        /// A file of hashes, one per line (a mounted Secret), read again
        /// when it changes; with `token_sha256` or instead of it.
        pub token_sha256_file: Option<String>,
        pub environments: Vec<String>,
        /// The custom domains this cluster's sidecars may claim for their
        /// routes (Ingress hosts): each name and every name under it.
        #[serde(default)]
        pub domains: Vec<String>,
        /// The organization that owns the cluster (the `shared` access
        /// level admits its members).
        pub organization: Option<String>,
        /// PEM file of the CA that signs this cluster's sidecar client
        /// certificates (mutual TLS on the tunnel).
        pub client_ca: Option<String>,
        /// This cluster's own limits, instead of `limits.cluster`.
        pub limits: Option<super::limits::raw::Block>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    pub enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    impl OneOrMany {
        pub fn into_vec(self) -> Vec<String> {
            match self {
                OneOrMany::One(s) => vec![s],
                OneOrMany::Many(v) => v,
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Route {
        pub name: Option<String>,
        pub host: String,
        pub path: Option<String>,
        #[serde(default)]
        pub strip_prefix: bool,
        /// `environment/service:port`
        pub target: String,
        #[serde(default)]
        pub timeouts: RouteTimeouts,
        pub upstream: Option<RouteUpstream>,
        pub header_policy: Option<header_policy::RawPolicy>,
        pub wasm_filter: Option<RouteWasm>,
        /// Who may use the route (with `auth:`).
        pub access: Option<super::auth::raw::Access>,
        /// This route's own limits, instead of `limits.route`.
        pub limits: Option<super::limits::raw::Block>,
        /// Request bodies through this route, instead of
        /// `visitors.max_body_size`.
        pub max_body_size: Option<yaml_config::Size>,
    }

    /// A proxy-wasm filter for a route's requests.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RouteWasm {
        /// The `.wasm` file, relative to the config file's directory.
        pub module: String,
        /// The plugin configuration: a string as written, anything else
        /// as JSON.
        pub configuration: Option<serde_json::Value>,
        /// `plugin_root_id`, for modules that serve several root contexts.
        pub root_id: Option<String>,
        /// Run instead of the header policy, not after it.
        #[serde(default)]
        pub replaces_policy: bool,
        /// Memory one instance may grow to, in MiB.
        pub memory_limit_mib: Option<u32>,
        /// Time one callback may run.
        pub call_timeout: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RouteUpstream {
        pub protocol: ServiceProtocol,
        pub tls: Option<RouteTls>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RouteTls {
        pub server_name: Option<String>,
        /// PEM file of roots to trust instead of the system's.
        pub ca: Option<String>,
        #[serde(default)]
        pub insecure_skip_verify: bool,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RouteTimeouts {
        pub connect: Option<String>,
        pub read: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Tunnel {
        pub tls: Option<TunnelTls>,
        /// Serve the tunnel without TLS on a non-loopback address.
        #[serde(default)]
        pub plaintext: bool,
        pub idle_streams: Option<u32>,
        pub open_stream_timeout: Option<String>,
        pub heartbeat_interval: Option<String>,
        pub session_wait: Option<String>,
        /// This replica's tunnel URL as sidecars reach it (told to them,
        /// and through Redis to the other replicas).
        pub advertise: Option<String>,
        /// The other replicas' tunnel URLs, told to sidecars.
        #[serde(default)]
        pub replicas: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TunnelTls {
        pub certificates: Vec<Certificate>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Upstream {
        pub connect_timeout: Option<String>,
        pub read_timeout: Option<String>,
        pub idle_timeout: Option<String>,
        pub stream_idle_timeout: Option<String>,
        pub keepalive_pool_size: Option<usize>,
    }
}

/// How long a request may wait for Redis by default.
pub const DEFAULT_REDIS_BUDGET: Duration = Duration::from_millis(5);

/// `redis:`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// With the password from `password_file`, if any (never logged).
    pub url: String,
    pub budget: Duration,
    pub fail_closed: bool,
    pub key_prefix: String,
    /// This replica's name, when the config gives one.
    pub replica: Option<String>,
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// How long a shutdown waits for requests in flight (WebSockets and
    /// gRPC streams are then closed cleanly).
    pub shutdown_grace: Duration,
    /// `traces:`: request spans exported over OTLP (read at start).
    pub traces: Option<TraceSettings>,
    pub http_addr: SocketAddr,
    pub https_addr: Option<SocketAddr>,
    /// `listen.admin`: health for probes.
    pub admin_addr: Option<SocketAddr>,
    pub tls: Option<TlsSettings>,
    /// Things worth a warning that do not stop the config (expired certificates).
    pub warnings: Vec<String>,
    pub tunnel_addr: SocketAddr,
    pub preview_domains: Vec<String>,
    pub public_url: Option<String>,
    pub clusters: Vec<Cluster>,
    /// Custom-domain rules, tried before preview URLs.
    pub routes: RouteTable,
    /// `tcp_ports:`: raw TCP ports, each carried to one service.
    pub tcp_ports: Vec<ports::TcpPort>,
    /// Rate limits and concurrency caps (routes carry their own).
    pub limits: crate::limits::LimitSet,
    /// `header_policy:`, for requests no route names (`None`: nothing to
    /// do); routes carry it followed by their own.
    pub header_policy: Option<Arc<header_policy::Policy>>,
    /// Visitor authentication (`None`: every request is public).
    pub auth: Option<Arc<auth::AuthSettings>>,
    /// Clients whose forwarding headers and request ids are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Visitor connections begin with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// State shared with the other replicas (a change is applied on
    /// reload).
    pub redis: Option<RedisSettings>,
    pub tunnel: TunnelSettings,
    pub upstream: UpstreamSettings,
    pub visitors: VisitorSettings,
    /// `admin.token_sha256`: who may use the admin API (empty: nobody).
    pub admin_tokens: Vec<TokenHash>,
    /// The first 16 hex digits of the SHA-256 of the YAML text.
    pub version: String,
}

/// Visitor TLS: loaded certificates and what to do for unknown names.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub certificates: Vec<crate::tls::LoadedCert>,
    /// Answer names no certificate covers with the first certificate.
    pub fallback_to_default: bool,
    /// Certificate and key files, watched for changes.
    pub files: Vec<std::path::PathBuf>,
    /// Answer plain-HTTP requests with a 308 to HTTPS.
    pub redirect_http: bool,
    /// Path prefixes that stay plain (ACME HTTP-01 challenges).
    pub plain_paths: Vec<String>,
    /// Port in redirect locations (default: the `listen.https` port).
    pub redirect_port: Option<u16>,
    pub hsts: Vec<HstsRule>,
}

/// `Strict-Transport-Security` for HTTPS responses to matching hosts.
#[derive(Debug, Clone)]
pub struct HstsRule {
    pub host: HostPattern,
    pub max_age: Duration,
    pub include_subdomains: bool,
}

/// Paths that stay plain HTTP by default: ACME HTTP-01 challenges.
pub const DEFAULT_PLAIN_PATHS: &[&str] = &["/.well-known/acme-challenge/"];
/// HSTS max-age when a rule sets none: one year.
pub const DEFAULT_HSTS_MAX_AGE: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    /// Every token hash this cluster's sidecars may use (several while a
    /// token rotates).
    pub tokens: Vec<TokenHash>,
    pub environments: Vec<String>,
    /// `domains:`: what host rules its sidecars may claim.
    pub domains: Vec<String>,
    /// With mutual TLS: the roots this cluster's client certificates chain to.
    pub client_ca: Option<crate::tls::ClientCa>,
    /// `token_sha256_file`, watched for changes.
    pub token_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone)]
pub struct TunnelSettings {
    /// TLS on the tunnel listener; `None` serves plaintext HTTP/2 (allowed
    /// on loopback, or with `tunnel.plaintext: true`).
    pub tls: Option<TunnelTls>,
    pub idle_streams: u32,
    pub open_stream_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// How long a request whose environment has no tunnel here waits for
    /// one (a sidecar reconnecting) before it is refused.
    pub session_wait: Duration,
    /// This replica's tunnel URL, as sidecars should dial it.
    pub advertise: Option<String>,
    /// Other replicas' tunnel URLs from the config.
    pub replicas: Vec<String>,
}

/// The tunnel listener's certificates (SNI, reloaded like the visitors').
#[derive(Debug, Clone)]
pub struct TunnelTls {
    pub certificates: Vec<crate::tls::LoadedCert>,
    /// Certificate and key files, watched for changes.
    pub files: Vec<std::path::PathBuf>,
}

/// Where request spans go (`traces:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    /// OTLP over gRPC: `http://collector:4317` (or `https://`).
    pub otlp_endpoint: String,
    /// The spans' `service.name`.
    pub service_name: String,
}

/// `url` as an `http://` or `https://` URL with a host, or `None`.
fn http_url(url: &str) -> Option<http::Uri> {
    let uri: http::Uri = url.parse().ok()?;
    (matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()).then_some(uri)
}

/// Checks a replica's tunnel URL as sidecars will dial it.
fn tunnel_url(url: &str, path: &str, problems: &mut Vec<String>) -> bool {
    let fine = http_url(url).is_some_and(|u| u.path_and_query().is_none_or(|p| p.as_str() == "/"));
    if !fine {
        problems.push(format!(
            "{path}: {url:?} is not a tunnel URL such as https://edge-0.example.com:7000"
        ));
    }
    fine
}

/// How the edge treats visitors' connections.
#[derive(Debug, Clone)]
pub struct VisitorSettings {
    /// HTTP/2 with prior knowledge on the plain listener.
    pub h2c: bool,
    /// A request head (and a new connection's first one) must arrive whole
    /// within this.
    pub header_timeout: Duration,
    /// An idle keep-alive connection closes after this.
    pub keepalive_timeout: Duration,
    /// A visitor that takes nothing of a response for this long is closed
    /// (its tunnel stream reset, the service's connection closed).
    pub send_timeout: Duration,
    /// A request head's bytes (HTTP/1.1) or header list (HTTP/2).
    pub max_head_size: usize,
    pub max_headers: usize,
    pub max_uri_length: usize,
    /// Request bodies, unless a route says otherwise (`None`: any size).
    pub max_body_size: Option<u64>,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_resets: usize,
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Read timeout of upgraded connections (WebSocket) and gRPC calls,
    /// which may stay quiet for long.
    pub stream_idle_timeout: Duration,
    pub keepalive_pool_size: usize,
}

use yaml_config::{duration, ServiceProtocol};
pub use yaml_config::{is_hostname, is_label, ConfigError};

impl EdgeConfig {
    /// Loads and validates a file; relative paths in it (certificates,
    /// keys, `routes[].upstream.tls.ca`) are relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }

    /// Parses and validates YAML text; `file` names it in errors (and its
    /// folder anchors relative paths).
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let base = yaml_config::config_dir(Path::new(file));
        let mut config = yaml_config::parse(text, file, |raw| validate(raw, &base))?;
        config.version = hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8]);
        Ok(config)
    }

    /// The environments each token may serve, keyed by token hash.
    pub fn environments_by_token(&self) -> HashMap<TokenHash, &Cluster> {
        self.clusters
            .iter()
            .flat_map(|c| c.tokens.iter().map(move |t| (t.clone(), c)))
            .collect()
    }

    /// Takes over the counts of `old`'s rate limits that this config keeps
    /// unchanged, before it replaces `old` (a reload does not hand every
    /// client a fresh burst).
    pub fn adopt_limits(&mut self, old: &EdgeConfig) {
        crate::limits::adopt(
            self.limits.rates_mut().chain(self.routes.rate_limits_mut()),
            old.limits.rates().chain(old.routes.rate_limits()),
        );
    }

    /// Files whose change reloads the config: visitor and tunnel
    /// certificates and keys, clusters' client CAs and token files.
    pub fn watched_files(&self) -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = self.tls.iter().flat_map(|t| t.files.clone()).collect();
        files.extend(self.tunnel.tls.iter().flat_map(|t| t.files.clone()));
        for c in &self.clusters {
            files.extend(c.client_ca.as_ref().map(|ca| ca.file.clone()));
            files.extend(c.token_file.clone());
        }
        files
    }
}

/// A cluster's `domains:`, checked: hostnames, none under a preview
/// domain (preview URLs belong to every cluster) or another cluster's.
fn cluster_domains(
    raw: &[String],
    path: &str,
    preview_domains: &[String],
    earlier: &[Cluster],
    problems: &mut Vec<String>,
) -> Vec<String> {
    let overlap = |a: &str, b: &str| within(a, b) || within(b, a);
    let mut domains = Vec::new();
    for (j, domain) in raw.iter().enumerate() {
        let at = format!("{path}.domains[{j}]");
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if !is_hostname(&domain) {
            problems.push(format!(
                "{at}: {domain:?} is not a hostname (a domain covers itself and every name under it: write team1.example.com, not *.team1.example.com)"
            ));
            continue;
        }
        if let Some(p) = preview_domains.iter().find(|p| overlap(p, &domain)) {
            problems.push(format!(
                "{at}: {domain:?} overlaps the preview domain {p:?}, whose names belong to every cluster"
            ));
        }
        for other in earlier {
            if let Some(d) = other.domains.iter().find(|d| overlap(d, &domain)) {
                problems.push(format!(
                    "{at}: {domain:?} overlaps {d:?} of cluster {:?}: a host may belong to one cluster only",
                    other.name
                ));
            }
        }
        domains.push(domain);
    }
    domains
}

/// Whether `host` is `domain` or a name under it.
pub fn within(host: &str, domain: &str) -> bool {
    host.strip_suffix(domain)
        .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
}

/// The token hashes listed under `field` (`clusters[i].token_sha256`,
/// `admin.token_sha256`), each with where it stands (`field[j]` when
/// there are several). At least one, each 64 hex digits; the value itself
/// is never repeated in a problem (a hash does not belong in logs).
fn token_hashes(
    hashes: Vec<(String, String)>,
    field: &str,
    problems: &mut Vec<String>,
) -> Vec<(String, TokenHash)> {
    if hashes.is_empty() {
        problems.push(format!(
            "{field}: list at least one token hash (hint: `edge-proxy hash-token`)"
        ));
    }
    let several = hashes.iter().filter(|(at, _)| at == field).count() > 1;
    hashes
        .iter()
        .enumerate()
        .filter_map(|(j, (at, hash))| {
            let at = if several && at == field {
                format!("{field}[{j}]")
            } else {
                at.clone()
            };
            match TokenHash::from_hex(hash) {
                Some(t) => Some((at, t)),
                None => {
                    problems.push(format!(
                        "{at}: expected 64 hex characters (hint: `edge-proxy hash-token` reads the token on stdin)"
                    ));
                    None
                }
            }
        })
        .collect()
}

fn validate(mut raw: raw::EdgeFile, base: &Path) -> Result<EdgeConfig, Vec<String>> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let http_addr = socket_addr(&raw.listen.http, "listen.http", &mut problems);
    let https_addr = raw
        .listen
        .https
        .as_ref()
        .and_then(|a| socket_addr(a, "listen.https", &mut problems));
    let tls = raw
        .tls
        .map(|t| validate_tls(t, base, &mut problems, &mut warnings));
    if raw.listen.https.is_some() && tls.as_ref().is_none_or(|t| t.certificates.is_empty()) {
        problems.push("listen.https: needs at least one entry in tls.certificates".into());
    }
    let tunnel_addr = socket_addr(&raw.listen.tunnel, "listen.tunnel", &mut problems);
    let admin_addr = raw
        .listen
        .admin
        .as_ref()
        .and_then(|a| socket_addr(a, "listen.admin", &mut problems));
    if raw.listen.h2c.is_some() {
        problems
            .push("listen.h2c: moved to visitors.h2c (every listen.* key is an address)".into());
    }

    if raw.preview.domains.is_empty() {
        problems.push("preview.domains: at least one preview domain is required".into());
    }
    let mut preview_domains = Vec::new();
    for (i, domain) in raw.preview.domains.iter().enumerate() {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if !is_hostname(&domain) {
            problems.push(format!(
                "preview.domains[{i}]: {domain:?} is not a hostname (expected e.g. preview.example.com)"
            ));
        }
        preview_domains.push(domain);
    }
    if let Some(url) = &raw.preview.public_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) || !url.contains("{host}") {
            problems.push(format!(
                "preview.public_url: {url:?} must start with http:// or https:// and contain {{host}}"
            ));
        }
    }

    let cluster_limits: Vec<_> = raw
        .clusters
        .iter_mut()
        .map(|c| (c.name.clone(), c.limits.take()))
        .collect();
    let limits = limits::validate(&raw.limits, &cluster_limits, &mut problems);
    let mut clusters = Vec::new();
    let mut seen_tokens = HashSet::new();
    let mut owner_of_env: HashMap<String, String> = HashMap::new();
    let mut org_of_env: HashMap<String, String> = HashMap::new();
    for (i, c) in raw.clusters.into_iter().enumerate() {
        if let Some(org) = &c.organization {
            for env in &c.environments {
                org_of_env.insert(env.clone(), org.clone());
            }
        }
        let path = format!("clusters[{i}]");
        if c.name.trim().is_empty() {
            problems.push(format!("{path}.name: must not be empty"));
        }
        let mut tokens = Vec::new();
        let mut hashes: Vec<(String, String)> = c
            .token_sha256
            .map(raw::OneOrMany::into_vec)
            .unwrap_or_default()
            .into_iter()
            .map(|h| (format!("{path}.token_sha256"), h))
            .collect();
        let token_file = c.token_sha256_file.as_ref().map(|file| base.join(file));
        if let Some(file) = &token_file {
            let field = format!("{path}.token_sha256_file");
            match std::fs::read_to_string(file) {
                Ok(text) => hashes.extend(
                    text.lines()
                        .enumerate()
                        .map(|(n, line)| (n, line.trim()))
                        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
                        .map(|(n, line)| {
                            (
                                format!("{field} ({}, line {})", file.display(), n + 1),
                                line.into(),
                            )
                        }),
                ),
                Err(e) => problems.push(format!("{field}: cannot read {}: {e}", file.display())),
            }
        }
        let field = format!("{path}.token_sha256");
        for (at, t) in token_hashes(hashes, &field, &mut problems) {
            if !seen_tokens.insert(t.clone()) {
                problems.push(format!(
                    "{at}: the same token is listed twice (here and in this or another cluster)"
                ));
            }
            tokens.push(t);
        }
        let client_ca = c.client_ca.as_ref().and_then(|file| {
            let file = base.join(file);
            crate::tls::ClientCa::load(&file)
                .map_err(|e| problems.push(format!("{path}.client_ca: {e}")))
                .ok()
        });
        if c.environments.is_empty() {
            problems.push(format!(
                "{path}.environments: list at least one environment"
            ));
        }
        for (j, env) in c.environments.iter().enumerate() {
            if !is_label(env) {
                problems.push(format!(
                    "{path}.environments[{j}]: {env:?} is not a valid environment name (lowercase letters, digits and '-', not starting or ending with '-')"
                ));
            } else if env.contains('-') {
                problems.push(format!(
                    "{path}.environments[{j}]: {env:?} must not contain '-' (it is the last label of preview URLs)"
                ));
            }
            if let Some(other) = owner_of_env.insert(env.clone(), c.name.clone()) {
                problems.push(format!(
                    "{path}.environments[{j}]: {env:?} is already owned by cluster {other:?}"
                ));
            }
        }
        let domains = cluster_domains(
            &c.domains,
            &path,
            &preview_domains,
            &clusters,
            &mut problems,
        );
        clusters.push(Cluster {
            name: c.name,
            tokens,
            environments: c.environments,
            domains,
            client_ca,
            token_file,
        });
    }

    let default_policy = raw
        .header_policy
        .as_ref()
        .map(|p| header_policy::compile(p, "header_policy", &mut problems))
        .unwrap_or_default();
    let auth = raw
        .auth
        .as_ref()
        .map(|a| auth::validate(a, &owner_of_env, org_of_env.clone(), base, &mut problems));
    let routes = validate_routes(
        raw.routes,
        &owner_of_env,
        &default_policy,
        auth.is_some(),
        base,
        &mut problems,
    );
    let tcp_ports = ports::validate(
        raw.tcp_ports,
        &owner_of_env,
        &[
            ("listen.http", http_addr),
            ("listen.https", https_addr),
            ("listen.tunnel", tunnel_addr),
            ("listen.admin", admin_addr),
        ],
        &mut problems,
    );
    let trusted_proxies = cidrs(
        &raw.forwarding.trusted_proxies,
        "forwarding.trusted_proxies",
        &mut problems,
    );

    let idle_streams = raw.tunnel.idle_streams.unwrap_or(DEFAULT_IDLE_STREAMS);
    if !(1..=1024).contains(&idle_streams) {
        problems.push(format!(
            "tunnel.idle_streams: {idle_streams} is out of range 1..=1024"
        ));
    }
    let tunnel_tls = raw.tunnel.tls.map(|t| {
        let (certificates, files) = load_certificates(
            &t.certificates,
            "tunnel.tls.certificates",
            base,
            &mut problems,
            &mut warnings,
        );
        if t.certificates.is_empty() {
            problems.push("tunnel.tls.certificates: list at least one certificate".into());
        }
        TunnelTls {
            certificates,
            files,
        }
    });
    if let Some(addr) = tunnel_addr {
        if tunnel_tls.is_none() && !raw.tunnel.plaintext && !addr.ip().is_loopback() {
            problems.push(format!(
                "listen.tunnel: {addr} is not a loopback address, and sidecar tokens and visitors' traffic would cross the network in clear: configure tunnel.tls.certificates, or set tunnel.plaintext: true (e.g. behind a load balancer that terminates TLS)"
            ));
        }
    }
    if tunnel_tls.is_some() && raw.tunnel.plaintext {
        problems.push("tunnel.plaintext: set together with tunnel.tls; choose one".into());
    }
    if tunnel_tls.is_none() && clusters.iter().any(|c| c.client_ca.is_some()) {
        problems.push("clusters[].client_ca: mutual TLS needs tunnel.tls".into());
    }
    let tunnel = TunnelSettings {
        tls: tunnel_tls,
        idle_streams,
        open_stream_timeout: duration(
            &raw.tunnel.open_stream_timeout,
            "tunnel.open_stream_timeout",
            DEFAULT_OPEN_STREAM_TIMEOUT,
            &mut problems,
        ),
        heartbeat_interval: duration(
            &raw.tunnel.heartbeat_interval,
            "tunnel.heartbeat_interval",
            DEFAULT_HEARTBEAT_INTERVAL,
            &mut problems,
        ),
        session_wait: yaml_config::duration_or_zero(
            &raw.tunnel.session_wait,
            "tunnel.session_wait",
            DEFAULT_SESSION_WAIT,
            &mut problems,
        ),
        advertise: raw
            .tunnel
            .advertise
            .clone()
            .filter(|url| tunnel_url(url, "tunnel.advertise", &mut problems)),
        replicas: (raw.tunnel.replicas.iter().enumerate())
            .filter(|(i, url)| tunnel_url(url, &format!("tunnel.replicas[{i}]"), &mut problems))
            .map(|(_, url)| url.clone())
            .collect(),
    };
    if tunnel.heartbeat_interval < Duration::from_millis(100) {
        problems.push("tunnel.heartbeat_interval: at least 100ms".into());
    }
    let h2 = raw.visitors.http2.take().unwrap_or_default();
    let visitors = VisitorSettings {
        h2c: raw.visitors.h2c,
        header_timeout: duration(
            &raw.visitors.header_timeout,
            "visitors.header_timeout",
            DEFAULT_HEADER_TIMEOUT,
            &mut problems,
        ),
        keepalive_timeout: duration(
            &raw.visitors.keepalive_timeout,
            "visitors.keepalive_timeout",
            DEFAULT_KEEPALIVE_TIMEOUT,
            &mut problems,
        ),
        send_timeout: duration(
            &raw.visitors.send_timeout,
            "visitors.send_timeout",
            DEFAULT_SEND_TIMEOUT,
            &mut problems,
        ),
        max_head_size: yaml_config::size(
            &raw.visitors.max_head_size,
            "visitors.max_head_size",
            DEFAULT_MAX_HEAD_SIZE,
            &mut problems,
        ) as usize,
        max_headers: raw.visitors.max_headers.unwrap_or(DEFAULT_MAX_HEADERS),
        max_uri_length: yaml_config::size(
            &raw.visitors.max_uri_length,
            "visitors.max_uri_length",
            DEFAULT_MAX_URI_LENGTH,
            &mut problems,
        ) as usize,
        max_body_size: raw.visitors.max_body_size.as_ref().map(|_| {
            yaml_config::size(
                &raw.visitors.max_body_size,
                "visitors.max_body_size",
                0,
                &mut problems,
            )
        }),
        h2_max_concurrent_streams: h2
            .max_concurrent_streams
            .unwrap_or(DEFAULT_H2_MAX_CONCURRENT_STREAMS),
        h2_max_pending_resets: h2
            .max_pending_resets
            .unwrap_or(DEFAULT_H2_MAX_PENDING_RESETS),
    };
    // Pingora parses at most 256 fields and 1 MiB of head.
    if !(1..=256).contains(&visitors.max_headers) {
        problems.push("visitors.max_headers: 1 to 256".into());
    }
    if !(1024..=1024 * 1024).contains(&visitors.max_head_size) {
        problems.push("visitors.max_head_size: 1KiB to 1MiB".into());
    }
    if !(256..=visitors.max_head_size).contains(&visitors.max_uri_length) {
        problems.push(
            "visitors.max_uri_length: at least 256 bytes, and no more than visitors.max_head_size"
                .into(),
        );
    }
    if visitors.h2_max_concurrent_streams == 0 {
        problems.push("visitors.http2.max_concurrent_streams: at least 1".into());
    }
    for (key, value) in [
        ("visitors.header_timeout", visitors.header_timeout),
        ("visitors.keepalive_timeout", visitors.keepalive_timeout),
        ("visitors.send_timeout", visitors.send_timeout),
    ] {
        if value < Duration::from_secs(1) {
            problems.push(format!("{key}: at least 1s"));
        }
    }
    let upstream = UpstreamSettings {
        connect_timeout: duration(
            &raw.upstream.connect_timeout,
            "upstream.connect_timeout",
            DEFAULT_CONNECT_TIMEOUT,
            &mut problems,
        ),
        read_timeout: duration(
            &raw.upstream.read_timeout,
            "upstream.read_timeout",
            DEFAULT_READ_TIMEOUT,
            &mut problems,
        ),
        idle_timeout: duration(
            &raw.upstream.idle_timeout,
            "upstream.idle_timeout",
            DEFAULT_UPSTREAM_IDLE_TIMEOUT,
            &mut problems,
        ),
        stream_idle_timeout: duration(
            &raw.upstream.stream_idle_timeout,
            "upstream.stream_idle_timeout",
            DEFAULT_STREAM_IDLE_TIMEOUT,
            &mut problems,
        ),
        keepalive_pool_size: raw
            .upstream
            .keepalive_pool_size
            .unwrap_or(DEFAULT_KEEPALIVE_POOL_SIZE),
    };

    let redis = raw
        .redis
        .as_ref()
        .and_then(|r| validate_redis(r, base, &mut problems));

    let admin_tokens = match raw.admin {
        Some(admin) => {
            if admin_addr.is_none() {
                problems.push("admin: needs listen.admin, where the admin API is served".into());
            }
            token_hashes(
                admin
                    .token_sha256
                    .into_vec()
                    .into_iter()
                    .map(|h| ("admin.token_sha256".to_string(), h))
                    .collect(),
                "admin.token_sha256",
                &mut problems,
            )
            .into_iter()
            .map(|(_, t)| t)
            .collect()
        }
        None => Vec::new(),
    };

    let shutdown_grace = duration(
        &raw.shutdown_grace,
        "shutdown_grace",
        DEFAULT_SHUTDOWN_GRACE,
        &mut problems,
    );
    let traces = raw.traces.map(|t| {
        if http_url(&t.otlp_endpoint).is_none() {
            problems.push(format!(
                "traces.otlp_endpoint: {:?} is not a URL such as http://otel-collector:4317",
                t.otlp_endpoint
            ));
        }
        TraceSettings {
            otlp_endpoint: t.otlp_endpoint,
            service_name: t.service_name.unwrap_or_else(|| "edge-proxy".into()),
        }
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(EdgeConfig {
        shutdown_grace,
        traces,
        admin_tokens,
        version: String::new(),
        http_addr: http_addr.expect("checked"),
        https_addr,
        admin_addr,
        tls,
        warnings,
        tunnel_addr: tunnel_addr.expect("checked"),
        preview_domains,
        public_url: raw.preview.public_url,
        clusters,
        limits,
        proxy_protocol: raw.visitors.proxy_protocol,
        redis,
        routes,
        tcp_ports,
        header_policy: in_force(default_policy),
        auth,
        trusted_proxies,
        tunnel,
        upstream,
        visitors,
    })
}

fn validate_tls(
    raw: raw::Tls,
    base: &Path,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> TlsSettings {
    let fallback_to_default = raw.unknown_names != Some(raw::UnknownNames::Refuse);
    let (certificates, files) = load_certificates(
        &raw.certificates,
        "tls.certificates",
        base,
        problems,
        warnings,
    );
    let plain_paths = raw
        .plain_paths
        .unwrap_or_else(|| DEFAULT_PLAIN_PATHS.iter().map(|p| p.to_string()).collect());
    for (i, p) in plain_paths.iter().enumerate() {
        if !p.starts_with('/') {
            problems.push(format!("tls.plain_paths[{i}]: {p:?} must start with '/'"));
        }
    }
    if raw.redirect_port == Some(0) {
        problems.push("tls.redirect_port: must be 1-65535".into());
    }
    let mut hsts = Vec::new();
    for (i, h) in raw.hsts.iter().enumerate() {
        let max_age = duration(
            &h.max_age,
            &format!("tls.hsts[{i}].max_age"),
            DEFAULT_HSTS_MAX_AGE,
            problems,
        );
        match parse_host_pattern(&h.host) {
            Some(host) => hsts.push(HstsRule { host, max_age, include_subdomains: h.include_subdomains }),
            None => problems.push(format!(
                "tls.hsts[{i}].host: {:?} is not a valid host pattern (expected app.example.com or *.example.com)",
                h.host
            )),
        }
    }
    TlsSettings {
        certificates,
        fallback_to_default,
        files,
        redirect_http: raw.redirect_http.unwrap_or(true),
        plain_paths,
        redirect_port: raw.redirect_port,
        hsts,
    }
}

/// Loads `certificates` (cert and key paths relative to `base`); returns
/// them and the files to watch. `at` is their YAML path.
fn load_certificates(
    raw: &[raw::Certificate],
    at: &str,
    base: &Path,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> (Vec<crate::tls::LoadedCert>, Vec<std::path::PathBuf>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut certificates = Vec::new();
    let mut files = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let (cert, key) = (base.join(&c.cert), base.join(&c.key));
        files.extend([cert.clone(), key.clone()]);
        match crate::tls::load(&cert, &key) {
            Ok(loaded) => {
                if loaded.not_after < now {
                    warnings.push(format!(
                        "{at}[{i}]: {} has expired; clients will refuse it",
                        cert.display()
                    ));
                }
                if loaded.names.is_empty() {
                    problems.push(format!("{at}[{i}]: {} names no DNS host", cert.display()));
                }
                certificates.push(loaded);
            }
            Err(e) => problems.push(format!("{at}[{i}]: {e}")),
        }
    }
    (certificates, files)
}

/// `app.example.com` or `*.example.com` (lowercased); `None` if invalid.
pub fn parse_host_pattern(text: &str) -> Option<HostPattern> {
    let host = text.trim().trim_end_matches('.').to_ascii_lowercase();
    match host.strip_prefix("*.") {
        Some(suffix) if is_hostname(suffix) && suffix.contains('.') => {
            Some(HostPattern::Wildcard(suffix.to_string()))
        }
        None if is_hostname(&host) => Some(HostPattern::Exact(host)),
        _ => None,
    }
}

/// A policy worth applying: `None` when it cannot change anything.
fn in_force(policy: header_policy::Policy) -> Option<Arc<header_policy::Policy>> {
    (!policy.is_noop()).then(|| Arc::new(policy))
}

fn validate_redis(
    raw: &raw::Redis,
    base: &Path,
    problems: &mut Vec<String>,
) -> Option<RedisSettings> {
    use redis::IntoConnectionInfo;
    let before = problems.len();
    let budget = duration(&raw.budget, "redis.budget", DEFAULT_REDIS_BUDGET, problems);
    if !(Duration::from_millis(1)..=Duration::from_secs(1)).contains(&budget) {
        problems.push("redis.budget: between 1ms and 1s".into());
    }
    let key_prefix = raw
        .key_prefix
        .clone()
        .unwrap_or_else(|| "preview-edge".into());
    if key_prefix.is_empty() || key_prefix.contains(char::is_whitespace) {
        problems.push("redis.key_prefix: a non-empty word".into());
    }
    let replica = raw.replica.as_ref().map(|r| r.trim().to_owned());
    if replica
        .as_ref()
        .is_some_and(|r| r.is_empty() || r.contains(char::is_whitespace))
    {
        problems.push("redis.replica: a non-empty word".into());
    }
    let mut url = raw.url.clone();
    if let Some(file) = &raw.password_file {
        match std::fs::read_to_string(base.join(file)) {
            Ok(password) => match url::Url::parse(&url) {
                Ok(mut parsed) if parsed.scheme().starts_with("redis") => {
                    let _ = parsed.set_password(Some(password.trim()));
                    url = parsed.to_string();
                }
                _ => problems
                    .push("redis.password_file: only with a redis:// or rediss:// url".into()),
            },
            Err(e) => problems.push(format!("redis.password_file: {file}: {e}")),
        }
    }
    // Checked as the client will read it; the URL is not repeated (it may
    // hold a password).
    if let Err(e) = url.as_str().into_connection_info() {
        problems.push(format!(
            "redis.url: not a Redis URL ({:?}): expected redis://host:6379, rediss://host:6380 or unix:///path",
            e.kind()
        ));
    }
    (problems.len() == before).then(|| RedisSettings {
        url,
        budget,
        fail_closed: raw.on_failure == Some(raw::OnFailure::Closed),
        key_prefix,
        replica,
    })
}

fn validate_routes(
    raw: Vec<raw::Route>,
    owner_of_env: &HashMap<String, String>,
    default_policy: &header_policy::Policy,
    auth_configured: bool,
    base: &Path,
    problems: &mut Vec<String>,
) -> RouteTable {
    let mut rules = Vec::new();
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut modules = wasm::Modules::default();
    for (i, r) in raw.into_iter().enumerate() {
        let path_of = |field: &str| format!("routes[{i}].{field}");
        let host_text = r.host.trim().trim_end_matches('.').to_ascii_lowercase();
        let host = parse_host_pattern(&r.host);
        if host.is_none() {
            problems.push(format!(
                "{}: {:?} is not a valid host pattern (expected app.example.com or *.example.com)",
                path_of("host"),
                r.host
            ));
        }
        let path = r.path.unwrap_or_else(|| "/".into());
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            problems.push(format!(
                "{}: {path:?} must be a path starting with '/'",
                path_of("path")
            ));
        }
        let target = target(&r.target, &path_of("target"), owner_of_env, problems);
        let connect_timeout = r.timeouts.connect.as_ref().map(|_| {
            duration(
                &r.timeouts.connect,
                &path_of("timeouts.connect"),
                DEFAULT_CONNECT_TIMEOUT,
                problems,
            )
        });
        let read_timeout = r.timeouts.read.as_ref().map(|_| {
            duration(
                &r.timeouts.read,
                &path_of("timeouts.read"),
                DEFAULT_READ_TIMEOUT,
                problems,
            )
        });
        if let Some(j) = seen.insert(
            (host_text.clone(), path.trim_end_matches('/').to_string()),
            i,
        ) {
            problems.push(format!(
                "routes[{i}]: never matches: routes[{j}] has the same host and path and comes first"
            ));
        }
        let protocol = r.upstream.and_then(|u| {
            validate_route_upstream(u, &path_of("upstream"), base, target.as_ref(), problems)
        });
        if let Some(name) = &r.name {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_graphic()) {
                problems.push(format!(
                    "{}: {name:?} must be printable ASCII without spaces",
                    path_of("name")
                ));
            } else if let Some(j) = names.insert(name.clone(), i) {
                problems.push(format!(
                    "{}: {name:?} is also routes[{j}]'s name",
                    path_of("name")
                ));
            }
        }
        let policy = match &r.header_policy {
            Some(own) => default_policy.then(&header_policy::compile(
                own,
                &path_of("header_policy"),
                problems,
            )),
            None => default_policy.clone(),
        };
        let wasm = r.wasm_filter.as_ref().and_then(|w| {
            let name = r.name.clone().unwrap_or_else(|| format!("routes[{i}]"));
            wasm::route_filter(
                w,
                name,
                &path_of("wasm_filter"),
                base,
                &mut modules,
                problems,
            )
        });
        let replaces_policy = r.wasm_filter.as_ref().is_some_and(|w| w.replaces_policy);
        let access = r.access.as_ref().map(|a| {
            if !auth_configured {
                problems.push(format!(
                    "{}: needs auth: (issuers) to check identities",
                    path_of("access")
                ));
            }
            Arc::new(auth::access(a, &path_of("access"), problems))
        });
        let limits = r.limits.as_ref().map(|block| {
            Arc::new(limits::route_limit(
                block,
                &path_of("limits"),
                format!("{host_text}{path}"),
                problems,
            ))
        });
        let limit_id: Arc<str> = format!("{host_text}{path}").into();
        let limit_key = crate::limits::key(&limit_id);
        let max_body_size = r
            .max_body_size
            .as_ref()
            .map(|_| yaml_config::size(&r.max_body_size, &path_of("max_body_size"), 0, problems));
        if let (Some(host), Some(target)) = (host, target) {
            rules.push(RouteRule {
                host,
                path,
                exact_path: false,
                claimed: false,
                strip_prefix: r.strip_prefix,
                target,
                connect_timeout,
                read_timeout,
                protocol,
                name: r.name.map(Arc::from),
                policy: in_force(policy).filter(|_| !replaces_policy),
                wasm,
                access,
                limits,
                max_body_size,
                limit_id,
                limit_key,
            });
        }
    }
    RouteTable::new(rules)
}

/// A rule's `upstream:` section → the protocol it forces.
fn validate_route_upstream(
    raw: raw::RouteUpstream,
    path: &str,
    base: &Path,
    target: Option<&ServiceRef>,
    problems: &mut Vec<String>,
) -> Option<Protocol> {
    let protocol = match (raw.protocol, raw.tls) {
        (ServiceProtocol::Http1, None) => Protocol::Http1,
        (ServiceProtocol::H2c, None) => Protocol::H2c,
        (ServiceProtocol::Tcp, None) => Protocol::Tcp,
        (ServiceProtocol::Tls, tls) => {
            let tls = tls.unwrap_or(raw::RouteTls {
                server_name: None,
                ca: None,
                insecure_skip_verify: false,
            });
            let ca = match &tls.ca {
                None => None,
                Some(file) => {
                    let file = base.join(file);
                    match std::fs::read(&file)
                        .map_err(|e| format!("cannot read {}: {e}", file.display()))
                        .and_then(|pem| crate::routing::upstream::parse_ca(&pem))
                    {
                        Ok(ca) => Some(ca),
                        Err(e) => {
                            problems.push(format!("{path}.tls.ca: {e}"));
                            return None;
                        }
                    }
                }
            };
            let server_name = tls
                .server_name
                .or_else(|| target.map(|t| t.service.clone()))?;
            Protocol::Tls(Arc::new(TlsUpstream::new(
                server_name,
                ca,
                !tls.insecure_skip_verify,
            )))
        }
        (_, Some(_)) => {
            problems.push(format!("{path}.tls: only allowed with `protocol: tls`"));
            return None;
        }
    };
    Some(protocol)
}

/// `environment/service:port` at `path`, whose environment a cluster
/// lists.
fn target(
    value: &str,
    path: &str,
    owner_of_env: &HashMap<String, String>,
    problems: &mut Vec<String>,
) -> Option<ServiceRef> {
    let target = parse_target(value);
    match &target {
        None => problems.push(format!(
            "{path}: {value:?} is not environment/service:port (e.g. prod/web:8080)"
        )),
        Some(t) if !owner_of_env.contains_key(&t.environment) => problems.push(format!(
            "{path}: environment {:?} is not listed in any clusters[].environments",
            t.environment
        )),
        _ => {}
    }
    target
}

/// IP addresses or CIDRs at `path`; each bad one named by its index.
fn cidrs(list: &[String], path: &str, problems: &mut Vec<String>) -> Vec<ipnet::IpNet> {
    let mut nets = Vec::new();
    for (i, cidr) in list.iter().enumerate() {
        let parsed = cidr
            .parse::<ipnet::IpNet>()
            .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => nets.push(net),
            Err(_) => problems.push(format!(
                "{path}[{i}]: {cidr:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"
            )),
        }
    }
    nets
}

/// `environment/service:port` → the service it names.
fn parse_target(s: &str) -> Option<ServiceRef> {
    let (environment, rest) = s.trim().split_once('/')?;
    let (service, port) = rest.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    (is_label(environment) && is_label(service)).then(|| ServiceRef {
        service: service.into(),
        port,
        environment: environment.into(),
    })
}

fn socket_addr(value: &str, path: &str, problems: &mut Vec<String>) -> Option<SocketAddr> {
    match value.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(format!(
                "{path}: {value:?} is not an address (expected IP:port, e.g. 0.0.0.0:8080)"
            ));
            None
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A certificate for test.preview.test and its key.
    const TEST_CERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/test-cert.pem");
    const TEST_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/test-key.pem");

    pub(in crate::config) const GOOD: &str = r#"
listen:
  http: 127.0.0.1:8080
  tunnel: 127.0.0.1:7000
preview:
  domains: [preview.localhost]
clusters:
  - name: demo
    token_sha256: "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
    environments: [demo]
tunnel:
  open_stream_timeout: 2s
"#;

    #[test]
    fn loads_a_good_file() {
        let c = EdgeConfig::parse(GOOD, "edge.yaml").unwrap();
        assert_eq!(c.preview_domains, vec!["preview.localhost"]);
        assert_eq!(c.tunnel.open_stream_timeout, Duration::from_secs(2));
        assert_eq!(c.upstream.read_timeout, DEFAULT_READ_TIMEOUT);
        assert_eq!(c.clusters[0].environments, vec!["demo"]);
    }

    #[test]
    fn replica_urls_are_checked_each_with_its_path() {
        let text = GOOD.replace(
            "  open_stream_timeout: 2s",
            "  advertise: https://edge-1.example.com:7000\n  replicas: [https://edge-0.example.com:7000]",
        );
        let c = EdgeConfig::parse(&text, "edge.yaml").unwrap();
        assert_eq!(
            c.tunnel.advertise.as_deref(),
            Some("https://edge-1.example.com:7000")
        );
        assert_eq!(c.tunnel.replicas, ["https://edge-0.example.com:7000"]);
        let text = GOOD.replace(
            "  open_stream_timeout: 2s",
            "  advertise: edge-1:7000\n  replicas: [https://edge-0:7000, ftp://x, https://e/path]",
        );
        let err = EdgeConfig::parse(&text, "edge.yaml")
            .unwrap_err()
            .to_string();
        for needle in [
            "tunnel.advertise: \"edge-1:7000\"",
            "tunnel.replicas[1]",
            "tunnel.replicas[2]",
        ] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
        assert!(!err.contains("tunnel.replicas[0]"), "{err}");
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let text = GOOD.replace("  open_stream_timeout: 2s", "  open_stream_timout: 2s");
        let err = EdgeConfig::parse(&text, "edge.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("edge.yaml:"), "{err}");
        assert!(err.contains("open_stream_timout"), "{err}");
        assert!(err.contains("line 12"), "{err}");
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let text = GOOD
            .replace("127.0.0.1:8080", "localhost")
            .replace("[demo]", "[Demo, a-b]")
            .replace("2s", "soon");
        let err = EdgeConfig::parse(&text, "edge.yaml")
            .unwrap_err()
            .to_string();
        for needle in [
            "listen.http",
            "clusters[0].environments[0]",
            "clusters[0].environments[1]",
            "tunnel.open_stream_timeout",
        ] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
    }

    /// `admin:` takes token hashes checked as the clusters' are, and needs
    /// the listener it is served on; the version is the text's digest.
    #[test]
    fn admin_tokens_are_checked_and_need_the_admin_listener() {
        let hash = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
        let with_listener = GOOD.replace(
            "  tunnel: 127.0.0.1:7000\n",
            "  tunnel: 127.0.0.1:7000\n  admin: 127.0.0.1:9901\n",
        );
        let good = format!("{with_listener}admin:\n  token_sha256: \"{hash}\"\n");
        let c = EdgeConfig::parse(&good, "edge.yaml").unwrap();
        assert_eq!(c.admin_tokens, vec![TokenHash::from_hex(hash).unwrap()]);
        assert_eq!(c.version.len(), 16);
        assert_ne!(
            c.version,
            EdgeConfig::parse(GOOD, "edge.yaml").unwrap().version
        );

        let bad = format!("{GOOD}admin:\n  token_sha256: [\"{hash}\", \"abc\"]\n");
        let err = EdgeConfig::parse(&bad, "edge.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin: needs listen.admin"), "{err}");
        assert!(
            err.contains("admin.token_sha256[1]: expected 64 hex") && err.contains("hash-token"),
            "{err}"
        );
        assert!(!err.contains("abc"), "the value is not repeated: {err}");
    }

    #[test]
    fn rejects_bad_token_hash_with_a_hint() {
        let text = GOOD.replace(
            "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b",
            "abc",
        );
        let err = EdgeConfig::parse(&text, "edge.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("clusters[0].token_sha256") && err.contains("hash-token"),
            "{err}"
        );
    }

    #[test]
    fn routes_are_validated_with_their_paths() {
        let text = format!(
            "{GOOD}routes:\n  - {{host: app.example.com, target: demo/web:8080}}\n  - {{host: '*.example', target: demo/web:80}}\n  - {{host: a.example.com, path: api, target: web}}\n  - {{host: b.example.com, target: nope/web:80, timeouts: {{read: soon}}}}\n  - {{host: app.example.com, path: /, target: demo/x:1}}\n"
        );
        let err = EdgeConfig::parse(&text, "edge.yaml")
            .unwrap_err()
            .to_string();
        for needle in [
            "routes[1].host",
            "routes[2].path",
            "routes[2].target",
            "routes[3].target: environment \"nope\"",
            "routes[3].timeouts.read",
            "routes[4]: never matches: routes[0]",
        ] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
        assert!(!err.contains("routes[0]."), "{err}");
    }

    #[test]
    fn header_policies_compose_default_then_route() {
        let c = EdgeConfig::parse(
            &format!(
                "{GOOD}header_policy:\n  request: [{{ set: {{ x-a: '1' }} }}]\nroutes:\n  - {{ name: own, host: a.example.com, target: demo/web:8080, header_policy: {{ request: [{{ set: {{ x-b: '2' }} }}] }} }}\n  - {{ host: b.example.com, target: demo/web:8080 }}\n"
            ),
            "edge.yaml",
        )
        .unwrap();
        let default = c.header_policy.clone().expect("a default that acts");
        let own = c.routes.resolve("a.example.com", "/").unwrap();
        let inherited = c.routes.resolve("b.example.com", "/").unwrap();
        assert_eq!(own.name.as_deref(), Some("own"));
        let mut headers = header_policy::HeaderList::new();
        own.policy
            .as_ref()
            .unwrap()
            .on_request(&Default::default(), &mut headers);
        assert_eq!(
            headers.fields().len(),
            2,
            "the default's rule, then the route's"
        );
        assert_eq!(inherited.policy.as_deref(), Some(&*default));
        // Without any policy, nothing is carried: requests skip the phase.
        let bare = EdgeConfig::parse(
            &format!("{GOOD}routes:\n  - {{ host: a.example.com, target: demo/web:8080 }}\n"),
            "edge.yaml",
        )
        .unwrap();
        assert!(bare.header_policy.is_none());
        assert!(bare
            .routes
            .resolve("a.example.com", "/")
            .unwrap()
            .policy
            .is_none());
    }

    #[test]
    fn routes_load_into_the_table() {
        let text = format!(
            "{GOOD}routes:\n  - host: '*.Example.com'\n    path: /api\n    strip_prefix: true\n    target: demo/web:8080\n    timeouts: {{ read: 5s }}\n"
        );
        let c = EdgeConfig::parse(&text, "edge.yaml").unwrap();
        let rule = c.routes.resolve("x.example.com", "/api/v1").unwrap();
        assert_eq!(rule.target.service, "web");
        assert_eq!(rule.read_timeout, Some(Duration::from_secs(5)));
        assert_eq!(rule.upstream_path("/api/v1"), "/v1");
    }

    #[test]
    fn route_upstream_protocols_are_validated() {
        let text = format!(
            "{GOOD}routes:\n  - {{host: a.example.com, target: demo/grpc:50051, upstream: {{protocol: h2c}}}}\n  - {{host: b.example.com, target: demo/web:443, upstream: {{protocol: tls, tls: {{server_name: web.internal, insecure_skip_verify: true}}}}}}\n"
        );
        let c = EdgeConfig::parse(&text, "edge.yaml").unwrap();
        let a = c.routes.resolve("a.example.com", "/").unwrap();
        assert!(matches!(a.protocol, Some(Protocol::H2c)));
        let b = c.routes.resolve("b.example.com", "/").unwrap();
        let Some(Protocol::Tls(tls)) = &b.protocol else {
            panic!("tls")
        };
        assert_eq!(tls.server_name, "web.internal");
        assert!(!tls.verify);

        let bad = format!(
            "{GOOD}routes:\n  - {{host: a.example.com, target: demo/x:1, upstream: {{protocol: http1}}}}\n  - {{host: b.example.com, target: demo/x:1, upstream: {{protocol: h2c, tls: {{}}}}}}\n  - {{host: c.example.com, target: demo/x:1, upstream: {{protocol: tls, tls: {{ca: missing.pem}}}}}}\n"
        );
        let err = EdgeConfig::parse(&bad, "edge.yaml")
            .unwrap_err()
            .to_string();
        for needle in ["routes[1].upstream.tls", "routes[2].upstream.tls.ca"] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
        assert!(!err.contains("routes[0]"), "{err}");
    }

    #[test]
    fn an_unknown_route_protocol_names_the_allowed_ones_and_its_line() {
        let bad = format!(
            "{GOOD}routes:\n  - {{host: a.example.com, target: demo/x:1, upstream: {{protocol: h3}}}}\n"
        );
        let err = EdgeConfig::parse(&bad, "edge.yaml")
            .unwrap_err()
            .to_string();
        for needle in [
            "edge.yaml:",
            "unknown variant `h3`, expected one of http1, h2c, tls",
            "line 14 column 66",
        ] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
    }

    #[test]
    fn listen_h2c_points_to_visitors_h2c() {
        for value in ["true", "false", "0.0.0.0:8081"] {
            let text = GOOD.replace(
                "  tunnel: 127.0.0.1:7000\n",
                &format!("  tunnel: 127.0.0.1:7000\n  h2c: {value}\n"),
            );
            let err = EdgeConfig::parse(&text, "edge.yaml")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("listen.h2c: moved to visitors.h2c"),
                "{value}: {err}"
            );
        }
        let text = format!("{GOOD}visitors:\n  h2c: true\n");
        assert!(EdgeConfig::parse(&text, "edge.yaml").unwrap().visitors.h2c);
    }

    #[test]
    fn unknown_names_is_default_or_refuse() {
        let tls = |value: &str| {
            format!("{GOOD}tls:\n  certificates: [{{ cert: {TEST_CERT}, key: {TEST_KEY} }}]\n  unknown_names: {value}\n")
        };
        let refusing = EdgeConfig::parse(&tls("refuse"), "edge.yaml").unwrap();
        assert!(!refusing.tls.unwrap().fallback_to_default);
        let answering = EdgeConfig::parse(&tls("default"), "edge.yaml").unwrap();
        assert!(answering.tls.unwrap().fallback_to_default);
        let err = EdgeConfig::parse(&tls("reject"), "edge.yaml")
            .unwrap_err()
            .to_string();
        for needle in [
            "unknown variant `reject`, expected one of default, refuse",
            "line 15 column 18",
        ] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
    }

    #[test]
    fn redirect_port_zero_is_refused() {
        let text = format!("{GOOD}tls:\n  certificates: [{{ cert: {TEST_CERT}, key: {TEST_KEY} }}]\n  redirect_port: 0\n");
        let err = EdgeConfig::parse(&text, "edge.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.redirect_port: must be 1-65535"), "{err}");
    }

    #[test]
    fn relative_paths_start_at_the_config_file_not_the_working_directory() {
        let dir = std::env::temp_dir().join(format!("edge-config-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        for (from, to) in [
            (TEST_CERT, "certs/cert.pem"),
            (TEST_KEY, "certs/key.pem"),
            (TEST_CERT, "ca.pem"),
        ] {
            std::fs::copy(from, dir.join(to)).unwrap();
        }
        let yaml = GOOD.replace("listen:\n", "listen:\n  https: 127.0.0.1:8443\n")
            + "tls:\n  certificates: [{ cert: certs/cert.pem, key: certs/key.pem }]\n"
            + "routes:\n  - { host: a.example.com, target: demo/web:443, upstream: { protocol: tls, tls: { ca: ca.pem } } }\n";
        let file = dir.join("edge.yaml");
        std::fs::write(&file, &yaml).unwrap();
        // The tests run in the crate's folder, where none of these files is.
        assert!(!Path::new("certs/cert.pem").exists() && !Path::new("ca.pem").exists());
        for c in [
            EdgeConfig::load(&file).unwrap(),
            EdgeConfig::parse(&yaml, file.to_str().unwrap()).unwrap(),
        ] {
            let tls = c.tls.unwrap();
            assert_eq!(tls.certificates[0].names, ["test.preview.test"]);
            assert_eq!(
                tls.files,
                [dir.join("certs/cert.pem"), dir.join("certs/key.pem")]
            );
            let rule = c.routes.resolve("a.example.com", "/").unwrap();
            assert!(matches!(rule.protocol, Some(Protocol::Tls(_))));
        }
        // A missing file is named where it was looked for.
        std::fs::remove_file(dir.join("ca.pem")).unwrap();
        let err = EdgeConfig::load(&file).unwrap_err().to_string();
        let looked_at = dir.join("ca.pem");
        assert!(
            err.contains(&format!(
                "routes[0].upstream.tls.ca: cannot read {}",
                looked_at.display()
            )),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn trusted_proxies_are_addresses_or_cidrs() {
        let ok =
            format!("{GOOD}forwarding:\n  trusted_proxies: [10.0.0.0/8, 192.168.1.1, '::1']\n");
        assert_eq!(
            EdgeConfig::parse(&ok, "edge.yaml")
                .unwrap()
                .trusted_proxies
                .len(),
            3
        );
        let bad = format!("{GOOD}forwarding:\n  trusted_proxies: [10.0.0.0/33, lan]\n");
        let err = EdgeConfig::parse(&bad, "edge.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("forwarding.trusted_proxies[0]")
                && err.contains("forwarding.trusted_proxies[1]"),
            "{err}"
        );
    }

    #[test]
    fn an_environment_has_one_owner() {
        let text = GOOD.replace(
            "tunnel:\n",
            "  - name: other\n    token_sha256: \"0000000000000000000000000000000000000000000000000000000000000000\"\n    environments: [demo]\ntunnel:\n",
        );
        let err = EdgeConfig::parse(&text, "edge.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("already owned by cluster \"demo\""), "{err}");
    }

    #[test]
    fn several_token_hashes_per_cluster_for_rotation() {
        let (a, b) = (TokenHash::of("old"), TokenHash::of("new"));
        let text = GOOD.replace(
            "\"2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b\"",
            &format!("[{}, {}]", a.to_hex(), b.to_hex()),
        );
        let c = EdgeConfig::parse(&text, "edge.yaml").unwrap();
        assert_eq!(c.clusters[0].tokens, vec![a.clone(), b]);
        assert_eq!(c.environments_by_token().len(), 2);
        let twice = GOOD.replace(
            "\"2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b\"",
            &format!("[{}, {}, nothex]", a.to_hex(), a.to_hex()),
        );
        let err = EdgeConfig::parse(&twice, "edge.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("clusters[0].token_sha256[1]: the same token"),
            "{err}"
        );
        assert!(
            err.contains("clusters[0].token_sha256[2]: expected 64 hex"),
            "{err}"
        );
        // Problems never quote a hash.
        assert!(!err.contains(&a.to_hex()), "{err}");
    }

    #[test]
    fn token_hashes_from_a_file_are_read_and_watched() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (TokenHash::of("old"), TokenHash::of("new"));
        std::fs::write(
            dir.path().join("hashes"),
            format!("# team1\n{}\n\n{}\n", a.to_hex(), b.to_hex()),
        )
        .unwrap();
        let file = dir.path().join("edge.yaml");
        let text = GOOD.replace(
            "    token_sha256: \"2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b\"",
            "    token_sha256_file: hashes",
        );
        std::fs::write(&file, &text).unwrap();
        let c = EdgeConfig::load(&file).unwrap();
        assert_eq!(c.clusters[0].tokens, vec![a, b]);
        assert!(c.watched_files().contains(&dir.path().join("hashes")));
        std::fs::write(dir.path().join("hashes"), "zz\n").unwrap();
        let err = EdgeConfig::load(&file).unwrap_err().to_string();
        assert!(err.contains("clusters[0].token_sha256_file ("), "{err}");
        assert!(err.contains("hashes, line 1): expected 64 hex"), "{err}");
        std::fs::remove_file(dir.path().join("hashes")).unwrap();
        let err = EdgeConfig::load(&file).unwrap_err().to_string();
        assert!(
            err.contains("clusters[0].token_sha256_file: cannot read"),
            "{err}"
        );
        assert!(
            err.contains("clusters[0].token_sha256: list at least one token hash"),
            "{err}"
        );
    }

    #[test]
    fn cluster_domains_belong_to_one_cluster_and_not_to_previews() {
        let two = GOOD.replace(
            "    environments: [demo]\n",
            "    environments: [demo]\n    domains: [team1.example.com, Apps.Example.NET.]\n  - name: other\n    token_sha256: \"0000000000000000000000000000000000000000000000000000000000000000\"\n    environments: [other]\n    domains: [example.net, x.preview.localhost, team2.example.com, \"*.team3.example.com\"]\n",
        );
        let err = EdgeConfig::parse(&two, "edge.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("clusters[1].domains[0]: \"example.net\" overlaps \"apps.example.net\" of cluster \"demo\""), "{err}");
        assert!(err.contains("clusters[1].domains[1]: \"x.preview.localhost\" overlaps the preview domain \"preview.localhost\""), "{err}");
        assert!(
            err.contains("clusters[1].domains[3]: \"*.team3.example.com\" is not a hostname"),
            "{err}"
        );
        assert!(!err.contains("domains[2]"), "{err}");
        let one = GOOD.replace(
            "    environments: [demo]\n",
            "    environments: [demo]\n    domains: [team1.example.com]\n",
        );
        let c = EdgeConfig::parse(&one, "edge.yaml").unwrap();
        assert_eq!(c.clusters[0].domains, ["team1.example.com"]);
        assert!(within("a.b.team1.example.com", "team1.example.com"));
        assert!(within("team1.example.com", "team1.example.com"));
        assert!(!within("xteam1.example.com", "team1.example.com"));
    }

    #[test]
    fn a_plaintext_tunnel_needs_loopback_or_a_decision() {
        let open = GOOD.replace("tunnel: 127.0.0.1:7000", "tunnel: 0.0.0.0:7000");
        let err = EdgeConfig::parse(&open, "edge.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("listen.tunnel") && err.contains("tunnel.tls"),
            "{err}"
        );
        let decided = open.replace("tunnel:\n  open", "tunnel:\n  plaintext: true\n  open");
        assert!(EdgeConfig::parse(&decided, "edge.yaml")
            .unwrap()
            .tunnel
            .tls
            .is_none());
        let missing = GOOD.replace(
            "tunnel:\n  open",
            "tunnel:\n  tls: { certificates: [{ cert: nope.pem, key: nope.key }] }\n  open",
        );
        let err = EdgeConfig::parse(&missing, "edge.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tunnel.tls.certificates[0]"), "{err}");
        let mtls_without_tls = GOOD.replace(
            "    environments: [demo]",
            "    environments: [demo]\n    client_ca: nope.pem",
        );
        let err = EdgeConfig::parse(&mtls_without_tls, "edge.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("clusters[0].client_ca"), "{err}");
    }
}
