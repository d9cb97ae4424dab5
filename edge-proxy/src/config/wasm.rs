//! `routes[].wasm_filter:` → a loaded filter: the module compiled (once
//! per file in a config), started with its configuration to check that it
//! accepts it, and pooled for the workers. Whatever stops it is a problem
//! at the field's YAML path, so `check-config` and a reload refuse it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasm_host::{FilterPool, Limits, PluginSpec, WasmFilter, WasmModule, WasmRuntime};

use super::raw::RouteWasm;

/// Modules compiled for one config, by file: a module on several routes is
/// compiled once.
pub type Modules = HashMap<PathBuf, Result<WasmModule, String>>;

/// The process's wasm engine (and its epoch thread), made when a config
/// first names a filter.
fn runtime() -> Result<&'static WasmRuntime, String> {
    static RUNTIME: OnceLock<Result<WasmRuntime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| WasmRuntime::new().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// Instances per filter: one per thread that may run requests (the edge
/// runs a worker per core by default; more threads share instances).
fn slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) * 2
}

/// Loads a route's filter, or records why it cannot run.
pub fn route_filter(
    raw: &RouteWasm,
    name: String,
    path: &str,
    base: &Path,
    modules: &mut Modules,
    problems: &mut Vec<String>,
) -> Option<Arc<FilterPool>> {
    let before = problems.len();
    let configuration = match &raw.configuration {
        None => Vec::new(),
        Some(serde_json::Value::String(text)) => text.clone().into_bytes(),
        Some(value) => value.to_string().into_bytes(),
    };
    let memory_bytes = match raw.memory_limit_mib {
        None => wasm_host::DEFAULT_MEMORY_BYTES,
        Some(mib @ 1..=4096) => mib as usize * (1 << 20),
        Some(mib) => {
            problems.push(format!(
                "{path}.memory_limit_mib: {mib} is out of range (1 to 4096)"
            ));
            0
        }
    };
    let call_timeout = yaml_config::duration(
        &raw.call_timeout,
        &format!("{path}.call_timeout"),
        wasm_host::DEFAULT_CALL_TIMEOUT,
        problems,
    );
    if call_timeout > Duration::from_secs(10) {
        problems.push(format!(
            "{path}.call_timeout: {call_timeout:?} is longer than 10s (a callback holds its worker)"
        ));
    }
    let file = base.join(&raw.module);
    let module = modules
        .entry(file.clone())
        .or_insert_with(|| compile(&file))
        .as_ref()
        .map_err(|e| problems.push(format!("{path}.module: {}: {e}", file.display())))
        .ok()?;
    if problems.len() > before {
        return None;
    }
    let spec = PluginSpec {
        name,
        root_id: raw.root_id.clone().unwrap_or_default(),
        vm_id: String::new(),
        configuration,
        vm_configuration: Vec::new(),
        limits: Limits {
            memory_bytes,
            call_timeout,
            ..Limits::default()
        },
    };
    match WasmFilter::new(module, spec) {
        Ok(filter) => Some(Arc::new(FilterPool::new(filter, slots()))),
        Err(e) => {
            problems.push(format!("{path}: {}: {e}", file.display()));
            None
        }
    }
}

fn compile(file: &Path) -> Result<WasmModule, String> {
    let wasm = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    WasmModule::compile(runtime()?, &wasm).map_err(|e| e.to_string())
}
