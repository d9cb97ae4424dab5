//! Test support: what integration and conformance tests build on.
//!
//! # Layout
//! - [`harness`]: `TestEdge` / `TestSidecar` builders (in-process, own runtimes) and an HTTP client.
//! - [`upstream`]: the sample upstream service (also the demo's), counting connections.
//! - [`certs`]: a local CA and certificates (rcgen), for TLS tests and the demo.
//! - [`fault`]: a fault-injecting TCP proxy (latency, bandwidth, stall, cut, reset).
//! - [`pattern`]: deterministic payloads and their checksums.

pub mod certs;
pub mod fault;
pub mod harness;
pub mod pattern;
pub mod upstream;

pub use fault::FaultProxy;
pub use harness::{client, stack, TestEdge, TestSidecar, DEFAULT_ENV, DEFAULT_TOKEN};
pub use upstream::TestUpstream;
