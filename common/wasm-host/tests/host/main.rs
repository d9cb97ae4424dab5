//! The host's integration tests, one executable (each links wasmtime):
//! the built filter module against the policy crate, against Envoy, and
//! misbehaving modules.

mod common;
mod configs;
mod differential;
mod envoy;
mod malicious;
mod profiling;
mod streams;
