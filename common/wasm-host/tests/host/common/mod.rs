//! Shared by the host's integration tests: the built filter module and
//! helpers to run it.
#![allow(dead_code)] // not every helper is used by the tests here

pub mod corpus;
pub mod envoy;

use std::path::Path;
use std::sync::OnceLock;

use header_policy::HeaderList;
use wasm_host::{
    FilterInstance, Outcome, PluginSpec, StreamInfo, WasmFilter, WasmModule, WasmRuntime,
};

/// The built filter module (shared with the conformance suite).
#[path = "../../../../../test-support/src/wasm.rs"]
mod wasm;

pub fn filter_wasm_path() -> &'static Path {
    wasm::header_policy_wasm()
}

pub fn filter_wasm() -> Vec<u8> {
    std::fs::read(filter_wasm_path()).expect("read the filter module")
}

pub fn runtime() -> &'static WasmRuntime {
    static RUNTIME: OnceLock<WasmRuntime> = OnceLock::new();
    RUNTIME.get_or_init(|| WasmRuntime::new().expect("wasm runtime"))
}

/// The filter module, compiled once per test binary.
pub fn filter_module() -> &'static WasmModule {
    static MODULE: OnceLock<WasmModule> = OnceLock::new();
    MODULE
        .get_or_init(|| WasmModule::compile(runtime(), &filter_wasm()).expect("compile the filter"))
}

/// The filter with `policy` (YAML or JSON) as its configuration.
pub fn load_policy(policy: &str) -> WasmFilter {
    WasmFilter::new(
        filter_module(),
        PluginSpec {
            name: "header-policy".into(),
            configuration: policy.as_bytes().to_vec(),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("load: {e}"))
}

/// What a visitor and the upstream saw for one exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// Headers the upstream received, then the visitor's response headers.
    Proxied {
        upstream: HeaderList,
        visitor: HeaderList,
    },
    /// Answered before reaching the upstream.
    Local { status: u16, headers: HeaderList },
}

/// Runs one exchange through a filter instance.
pub fn through_filter(
    instance: &mut FilterInstance,
    request: &HeaderList,
    response: &HeaderList,
    info: &StreamInfo<'_>,
) -> Exchange {
    let stream = instance.new_stream().expect("new stream");
    let mut upstream = request.clone();
    let outcome = instance
        .on_request_headers(&stream, &mut upstream, info, true)
        .expect("request headers");
    let exchange = match outcome {
        Outcome::Continue => {
            let mut visitor = response.clone();
            let out = instance
                .on_response_headers(
                    &stream,
                    &mut visitor,
                    &StreamInfo {
                        response_code: Some(200),
                        ..*info
                    },
                    false,
                )
                .expect("response headers");
            assert_eq!(out, Outcome::Continue);
            Exchange::Proxied { upstream, visitor }
        }
        Outcome::Respond(reply) => {
            assert!(reply.body.is_empty());
            Exchange::Local {
                status: reply.status,
                headers: HeaderList::from_pairs(reply.headers),
            }
        }
        Outcome::Reset => panic!("reset"),
    };
    instance.end_stream(stream);
    exchange
}

/// An exchange as HTTP sees it: names lowercase and sorted, each name's
/// values in order (the order of different names carries no meaning).
pub fn semantic(e: &Exchange) -> String {
    let show = |h: &HeaderList| {
        h.grouped()
            .into_iter()
            .map(|(n, vs)| {
                let vs: Vec<String> = vs
                    .iter()
                    .map(|v| format!("{:?}", String::from_utf8_lossy(v)))
                    .collect();
                format!("  {n}: {}\n", vs.join(" | "))
            })
            .collect::<String>()
    };
    match e {
        Exchange::Proxied { upstream, visitor } => {
            format!("upstream:\n{}visitor:\n{}", show(upstream), show(visitor))
        }
        Exchange::Local { status, headers } => format!("local {status}:\n{}", show(headers)),
    }
}
