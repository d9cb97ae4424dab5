//! The tunnels' far end: the gRPC service sidecars dial ([`service`]), the
//! live sessions with their idle data-stream pools ([`registry`]), and tunnel
//! streams as Pingora upstream sockets ([`connector`]), sidecars' WebSockets
//! on the visitor ports ([`ingress`]), and failed
//! authentications throttled by source ([`throttle`]).
//!
//! May use `routing` (the services a session offers), `tls` and `config`
//! (what a token grants, the settings in force). Knows nothing of visitors' HTTP.

pub mod connector;
pub mod ingress;
pub mod registry;
pub mod replicas;
pub mod service;
pub mod throttle;
