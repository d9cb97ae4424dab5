//! Test support: what integration and conformance tests build on.
//!
//! # Layout
//! - [`harness`]: `TestEdge` / `TestSidecar` builders (in-process, own runtimes) and an HTTP client.
//! - [`upstream`]: the sample upstream service (also the demo's), counting connections.
//! - [`background`]: servers on a thread of their own.
//! - [`certs`]: a local CA and certificates (rcgen), for TLS tests and the demo.
//! - [`connect_proxy`]: an HTTP `CONNECT` proxy, optionally with credentials.
//! - [`kube_api`]: a Kubernetes API server for Services and Ingresses (list, watch, status).
//! - [`fault`]: a fault-injecting TCP proxy (latency, bandwidth, stall, cut, reset).
//! - [`pattern`]: deterministic payloads and their checksums.
//! - [`grpc`]: a gRPC echo service (every call shape, errors, deadlines).
//! - [`tls`]: TLS for the test servers.
//! - [`wait`]: waiting on events, or on a condition until a deadline (never a fixed sleep).
//! - [`port`]: a held local port nobody answers on.
//! - [`wasm`]: the header-policy filter module, built for the test.

pub mod background;
pub mod certs;
pub mod connect_proxy;
pub mod fault;
pub mod grpc;
pub mod harness;
pub mod kube_api;
pub mod otlp;
pub mod pattern;
pub mod port;
pub mod tls;
pub mod upstream;
pub mod wait;
pub mod wasm;

pub use fault::FaultProxy;
pub use harness::{client, stack, stack_with, TestEdge, TestSidecar, DEFAULT_ENV, DEFAULT_TOKEN};
pub use port::ClosedPort;
pub use upstream::TestUpstream;
