//! The edge proxy: visitors' front door and the tunnels' far end.
//!
//! Visitors reach services through Pingora; each upstream connection is a
//! data stream of a gRPC tunnel that a sidecar dialed out to us.
//!
//! # Rooms
//!
//! Each folder is a room with one role; its `mod.rs` says what lives there
//! and which other rooms it may use. The rooms form layers, and a room only
//! uses the ones below it (`tests::rooms_use_only_the_rooms_below` checks):
//!
//! | room          | role                                                      |
//! |---------------|-----------------------------------------------------------|
//! | [`limits`]    | rate limits (GCRA) and concurrency caps, kept in process: pure |
//! | [`auth`]      | visitor identities (bearer JWTs) and access rules: pure   |
//! | [`idp`]       | identity providers: JWK sets by URL, OIDC sign-in          |
//! | [`routing`]   | host names, preview URLs, custom-domain rules, upstream protocols: pure |
//! | [`tls`]       | visitor certificates, chosen by SNI                       |
//! | [`config`]    | YAML → validated config, sidecar token hashes             |
//! | [`traces`]    | request spans exported over OTLP                           |
//! | [`shared`]    | state shared by replicas through Redis: rate limits, sign-outs, who holds which tunnel |
//! | [`admin`]     | the admin listener: health for probes                      |
//! | [`tunnel`]    | the gRPC service sidecars dial, live sessions, streams as upstream sockets |
//! | [`http`]      | a visitor's request: context, phases, forwarding, errors  |
//! | [`tcp_ports`] | raw TCP ports (`tcp_ports:`), each carried to one service |
//! | [`reload`]    | applies a new config to the running edge                  |
//! | [`server`]    | listeners, worker runtimes, shutdown: wires the rest      |
//!
//! A request's way through them is walked file by file in `docs/design.md`.

pub mod admin;
pub mod auth;
pub mod config;
pub mod http;
pub mod idp;
pub mod inspect;
pub mod limits;
pub mod metrics;
pub mod reload;
pub mod routing;
pub mod server;
pub mod shared;
pub mod tcp_ports;
pub mod tls;
pub mod traces;
pub mod tunnel;

pub use config::EdgeConfig;
pub use server::{Edge, Listeners};

#[cfg(test)]
mod tests;
