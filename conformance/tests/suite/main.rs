//! The conformance suite: the real binaries, real YAML and real clients,
//! one module per capability. One test executable for all of them: each
//! links the edge, the sidecar and their clients, and sixteen copies cost
//! minutes of linking and gigabytes of disk for nothing.

mod admin;
mod auth;
mod drain;
mod grpc;
mod header_policy;
mod isolation;
mod kills;
mod kubernetes;
mod limits;
mod login;
mod manifests;
mod replicas;
mod requests;
mod rolling;
mod routing;
mod spine;
mod tcp;
mod tls;
mod traces;
mod transport;
mod tunnel_tls;
mod visitors;
mod wasm_filter;
mod webhook;
