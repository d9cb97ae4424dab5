//! The edge proxy: visitors' front door and the tunnels' far end.
//!
//! Visitors reach services through Pingora; each upstream connection is a
//! data stream of a gRPC tunnel that a sidecar dialed out to us.
//!
//! # Layout
//! - [`config`]: YAML → validated runtime config.
//! - [`preview`]: preview-URL parsing (`<service>-<port>-<env>.<domain>`).
//! - [`route`]: request → target session.
//! - [`routes`]: custom-domain rules (host + path → service), indexed.
//! - [`proxy`]: Pingora's phases (`ProxyHttp`).
//! - [`connector`]: tunnel streams as Pingora upstream sockets.
//! - [`registry`]: live sessions and their idle data-stream pools.
//! - [`reload`]: config hot reload (file changes, SIGHUP).
//! - [`tunnel_service`]: the gRPC service sidecars dial.
//! - [`errors`]: the one place errors become HTTP responses.
//! - [`forwarding`]: `X-Forwarded-*`, `Forwarded`, request ids, `traceparent`.
//! - [`https`]: HTTP→HTTPS redirects and HSTS.
//! - [`server`]: wires listeners, runtime and shutdown.
//! - [`tls`]: visitor TLS, certificates chosen by SNI.
//! - [`token`]: sidecar token hashing.
//! - [`upstream`]: how the edge speaks to a service (HTTP/1.1, h2c, TLS).
//! - [`visitor`]: a visitor's connection: protocol sniffing, request-head deadline.

pub mod config;
pub mod connector;
pub mod errors;
pub mod forwarding;
pub mod https;
pub mod preview;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod route;
pub mod routes;
pub mod server;
pub mod tls;
pub mod token;
pub mod tunnel_service;
pub mod upstream;
pub mod visitor;

pub use config::EdgeConfig;
pub use server::{Edge, Listeners};
