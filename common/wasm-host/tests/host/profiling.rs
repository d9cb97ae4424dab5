//! `EDGE_WASM_PERF_MAP=1`: the functions a module compiles to, named for
//! `perf` in /tmp/perf-<pid>.map; without it, no file.

use wasm_host::{WasmModule, WasmRuntime};

const SWITCHED: &str = include_str!("modules/switched.wat");

#[test]
fn the_perf_map_names_a_module_s_functions_only_when_asked() {
    // Each test is a process of its own under nextest (scripts/test): the
    // variable and the file are this test's.
    let path = format!("/tmp/perf-{}.map", std::process::id());
    let _ = std::fs::remove_file(&path);
    let wasm = wat::parse_str(SWITCHED).expect("valid WAT");

    std::env::remove_var(wasm_host::PERF_MAP_ENV);
    let quiet = WasmRuntime::new().unwrap();
    WasmModule::compile(&quiet, &wasm).unwrap();
    assert!(
        !std::path::Path::new(&path).exists(),
        "a perf map written unasked"
    );

    std::env::set_var(wasm_host::PERF_MAP_ENV, "1");
    let profiled = WasmRuntime::new().unwrap();
    WasmModule::compile(&profiled, &wasm).unwrap();
    let map = std::fs::read_to_string(&path).expect("the perf map");
    let _ = std::fs::remove_file(&path);
    // `addr size name`, hex, one function a line; `$has` is the module's
    // own helper.
    let has = map
        .lines()
        .find(|l| l.ends_with(" has"))
        .unwrap_or_else(|| panic!("no line for `has` in:\n{map}"));
    let mut fields = has.split(' ');
    let addr = fields.next().unwrap().trim_start_matches("0x");
    let size = fields.next().unwrap();
    assert!(
        u64::from_str_radix(addr, 16).unwrap() > 0 && u64::from_str_radix(size, 16).unwrap() > 0,
        "{has}"
    );
}
