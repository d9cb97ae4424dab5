//! Helpers shared by the load tools that `scripts/bench` runs:
//!
//! - `bench-latency`: one keep-alive HTTP/1.1 connection, one request at a
//!   time, exact per-request latencies (p50/p99).
//! - `bench-delay`: a TCP proxy that delays every chunk by a fixed time in
//!   each direction without limiting bandwidth (for the 10 ms RTT row).
//! - `bench-scale`: many sidecars in one process and many open proxied
//!   connections through one running edge; memory per tunnel and per
//!   connection, and that nothing is dropped.
//!
//! Everything here is deliberately small: a minimal HTTP/1.1 response parser
//! (status, `Content-Length` or chunked bodies) and `/proc` readers.

pub mod http1;
pub mod procfs;
