//! An embedded proxy-wasm host (ABI 0.2.1) on wasmtime, for running a
//! `.wasm` HTTP filter per route: the header-policy filter from
//! `wasm-filter/`, or any filter written against the ABI that needs only
//! headers. No Pingora here: the embedder hands in its header maps through
//! [`header_policy::Headers`] and what it knows about the request as
//! [`StreamInfo`].
//!
//! A [`WasmFilter`] is compiled and checked once (`Send + Sync`); each
//! worker thread makes its own [`FilterInstance`] (a wasmtime `Store` is
//! not `Sync`). Every callback runs under a time limit (epoch
//! interruption) and the instance's memory under a cap; a filter that
//! traps, loops or grows too much fails that request ([`FilterError`]) and
//! its instance is replaced. A module that does not compile, speaks another
//! ABI, imports something this host lacks or refuses its configuration is
//! refused by [`WasmFilter::load`] ([`LoadError`]), for `check-config`.
//!
//! Bodies are not delivered (no `proxy_on_*_body` calls) and HTTP/gRPC
//! calls, shared queues and timers answer `UNIMPLEMENTED`; see
//! `hostcalls` for every function and its status.
//!
//! # Layout
//! - `filter`: [`WasmRuntime`], [`WasmFilter`], [`FilterInstance`], limits and errors.
//! - `pool`: [`FilterPool`], a filter shared by a server's threads, and its [`PooledStream`]s.
//! - `hostcalls`: the functions the specification lists, linked into every instance.
//! - `fields`: header maps as the guest sees them, and its edits replayed.
//! - `props`: properties ([`StreamInfo`]) under Envoy's names.
//! - `state`: what a store carries; `abi`: numbers and encodings.

mod abi;
mod fields;
mod filter;
mod hostcalls;
mod pool;
mod props;
mod state;

pub use filter::{
    FilterError, FilterInstance, Limits, LoadError, LocalReply, Outcome, PluginSpec, Stream,
    WasmFilter, WasmModule, WasmRuntime, DEFAULT_CALL_TIMEOUT, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MEMORY_BYTES, EPOCH_TICK, PERF_MAP_ENV, RESTART_BACKOFF,
};
pub use pool::{FilterPool, PooledStream};
pub use props::StreamInfo;
pub use state::{Metric, MetricKind};
