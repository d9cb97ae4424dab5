//! Filters that misbehave: loops, memory growth, traps, missing imports,
//! other ABIs, refused configurations. Each is stopped, fails only its
//! request, and the next request gets a fresh instance; modules that
//! cannot work are refused at load with a reason.

use crate::common;

use std::time::Duration;

use header_policy::{HeaderList, Headers};
use wasm_host::{FilterError, Limits, LoadError, Outcome, PluginSpec, StreamInfo, WasmFilter};

/// A filter that misbehaves on request when a header says so:
/// `x-crash` traps, `x-loop` never returns, `x-grow` grows memory forever,
/// `x-pause` pauses; otherwise it adds `x-seen: 1`.
const SWITCHED: &str = include_str!("modules/switched.wat");

fn limits() -> Limits {
    Limits {
        call_timeout: Duration::from_millis(30),
        memory_bytes: 4 << 20,
        ..Limits::default()
    }
}

fn load_wat(wat: &str) -> Result<WasmFilter, LoadError> {
    let wasm = wat::parse_str(wat).expect("valid WAT");
    WasmFilter::load(
        common::runtime(),
        &wasm,
        PluginSpec {
            name: "test".into(),
            limits: limits(),
            ..Default::default()
        },
    )
}

fn request(header: Option<&str>) -> HeaderList {
    let mut h = HeaderList::from_pairs([("host", "a.example.com")]);
    if let Some(name) = header {
        h.append(name, b"1");
    }
    h
}

#[test]
fn a_misbehaving_request_fails_alone_and_the_next_gets_a_fresh_instance() {
    let filter = load_wat(SWITCHED).unwrap();
    let mut instance = filter.instantiate();
    let info = StreamInfo::default();
    for (trigger, expect) in [
        (
            "x-crash",
            "crashed: wasm trap: wasm `unreachable` instruction executed",
        ),
        ("x-loop", "ran past its time limit of 30ms"),
        ("x-grow", "grew past the memory limit of 4194304 bytes"),
    ] {
        // A stream started before the crash loses its state with the instance.
        let bystander = instance.new_stream().unwrap();
        let stream = instance.new_stream().unwrap();
        let mut headers = request(Some(trigger));
        let before = headers.clone();
        let err = instance
            .on_request_headers(&stream, &mut headers, &info, true)
            .unwrap_err();
        assert!(err.to_string().contains(expect), "{trigger}: {err}");
        assert!(
            matches!(
                (&err, trigger),
                (FilterError::Trap { .. }, "x-crash")
                    | (FilterError::Timeout { .. }, "x-loop")
                    | (FilterError::MemoryLimit { .. }, "x-grow")
            ),
            "{err:?}"
        );
        assert_eq!(headers, before, "a crashed filter's edits are not applied");
        let lost = instance
            .on_request_headers(&bystander, &mut request(None), &info, true)
            .unwrap_err();
        assert!(matches!(lost, FilterError::StreamLost { .. }), "{lost:?}");
        instance.end_stream(stream);
        instance.end_stream(bystander);

        let next = instance.new_stream().unwrap();
        let mut headers = request(None);
        assert_eq!(
            instance
                .on_request_headers(&next, &mut headers, &info, true)
                .unwrap(),
            Outcome::Continue
        );
        assert_eq!(headers.get("x-seen"), Some(&b"1"[..]));
        instance.end_stream(next);
    }
    assert_eq!(instance.crashes(), 3);

    // Other threads' instances are not touched by one instance's crash.
    let mut other = filter.instantiate();
    let s = other.new_stream().unwrap();
    assert_eq!(
        other
            .on_request_headers(&s, &mut request(None), &info, true)
            .unwrap(),
        Outcome::Continue
    );
}

#[test]
fn a_pause_this_host_cannot_resume_fails_the_request() {
    let filter = load_wat(SWITCHED).unwrap();
    let mut instance = filter.instantiate();
    let stream = instance.new_stream().unwrap();
    let err = instance
        .on_request_headers(
            &stream,
            &mut request(Some("x-pause")),
            &StreamInfo::default(),
            true,
        )
        .unwrap_err();
    assert!(matches!(err, FilterError::Paused { .. }), "{err:?}");
    // Not a crash: the instance and the stream live on.
    assert_eq!(instance.crashes(), 0);
    assert_eq!(
        instance
            .on_request_headers(&stream, &mut request(None), &StreamInfo::default(), true)
            .unwrap(),
        Outcome::Continue
    );
}

const MINIMAL_EXPORTS: &str = r#"
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
"#;

#[test]
fn a_module_importing_what_the_host_lacks_is_refused() {
    let err = load_wat(&format!(
        r#"(module
             (import "env" "proxy_open_door" (func (param i32) (result i32)))
             (import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))
             (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
             {MINIMAL_EXPORTS})"#
    ))
    .err()
    .unwrap();
    assert_eq!(
        err.to_string(),
        "imports what this host does not provide: env.proxy_open_door, wasi_snapshot_preview1.sock_accept"
    );
    // A provided name with the wrong signature cannot be linked.
    let err = load_wat(&format!(
        r#"(module (import "env" "proxy_log" (func (param i32) (result i32))) {MINIMAL_EXPORTS})"#
    ))
    .err()
    .unwrap();
    assert!(matches!(err, LoadError::Link(_)), "{err}");
    assert!(err.to_string().contains("proxy_log"), "{err}");
}

#[test]
fn modules_that_are_not_proxy_wasm_0_2_1_are_refused() {
    let cases = [
        ("not wasm at all".to_string(), "not a valid WebAssembly module"),
        (
            r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_0")) (func (export "malloc") (param i32) (result i32) (i32.const 0)))"#.to_string(),
            "speaks proxy-wasm ABI 0.2.0; this host speaks 0.2.1",
        ),
        (
            r#"(module (memory (export "memory") 1))"#.to_string(),
            "is not a proxy-wasm module",
        ),
        (
            r#"(module (func (export "proxy_abi_version_0_2_1")) (func (export "malloc") (param i32) (result i32) (i32.const 0)))"#.to_string(),
            "exports no memory",
        ),
        (
            r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1")))"#.to_string(),
            "exports no allocator",
        ),
    ];
    for (module, want) in cases {
        let err = match wat::parse_str(&module) {
            Ok(wasm) => WasmFilter::load(common::runtime(), &wasm, PluginSpec::default()),
            Err(_) => WasmFilter::load(common::runtime(), module.as_bytes(), PluginSpec::default()),
        }
        .err()
        .unwrap();
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
}

#[test]
fn modules_that_cannot_start_are_refused() {
    // Initial memory over the limit.
    let err = load_wat(
        r#"(module (memory (export "memory") 200) (func (export "proxy_abi_version_0_2_1"))
             (func (export "malloc") (param i32) (result i32) (i32.const 0)))"#,
    )
    .err()
    .unwrap();
    assert!(matches!(err, LoadError::Start(_)), "{err}");
    assert!(
        err.to_string().contains("memory limit of 4194304 bytes"),
        "{err}"
    );
    // A trap in _initialize.
    let err = load_wat(&format!(
        r#"(module {MINIMAL_EXPORTS} (func (export "_initialize") unreachable))"#
    ))
    .err()
    .unwrap();
    assert!(err.to_string().contains("_initialize crashed"), "{err}");
    // A loop in on_configure.
    let err = load_wat(&format!(
        r#"(module {MINIMAL_EXPORTS}
             (func (export "proxy_on_configure") (param i32 i32) (result i32) (loop $l (br $l)) (i32.const 1)))"#
    ))
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("proxy_on_configure ran past its time limit"),
        "{err}"
    );
    // A callback with the wrong signature.
    let err = load_wat(&format!(
        r#"(module {MINIMAL_EXPORTS} (func (export "proxy_on_request_headers") (param i32) (result i32) (i32.const 0)))"#
    ))
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("proxy_on_request_headers"),
        "{err}"
    );
}

#[test]
fn a_refused_configuration_is_reported_with_the_filter_log() {
    let err = load_wat(&format!(
        r#"(module
             (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
             (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
             {MINIMAL_EXPORTS}
             (data (i32.const 16) "bad setting: colour")
             (data (i32.const 48) "\10\00\00\00\06\00\00\00")
             (func (export "proxy_on_configure") (param i32 i32) (result i32)
               (drop (call $log (i32.const 4) (i32.const 16) (i32.const 19)))
               (drop (call $write (i32.const 2) (i32.const 48) (i32.const 1) (i32.const 64)))
               (i32.const 0)))"#
    ))
    .err()
    .unwrap();
    assert_eq!(
        err.to_string(),
        "refused its configuration: bad setting: colour; bad se"
    );
}

/// Calls hostcalls this SDK-built filter never makes and reports each
/// status as one letter ('@' + status) in a response header.
const PROBE: &str = r#"
(module
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (import "env" "proxy_http_call" (func $http (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $buf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $sset (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $sget (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $mdef (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $minc (param i32 i64) (result i32)))
  (import "env" "proxy_get_metric" (func $mget (param i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $pset (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $pget (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_call_foreign_function" (func $ffi (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $ctx (param i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $cont (param i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $hget (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_done" (func $done (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $rand (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 8192))
  (global $n (mut i32) (i32.const 0))
  (data (i32.const 16) "key")
  (data (i32.const 32) "value")
  (data (i32.const 48) "my\00prop")
  (data (i32.const 64) "x-probe")
  (data (i32.const 80) "x-bad\0d\0a")
  (data (i32.const 96) "Bad Name")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func $rec (param $status i32)
    (i32.store8 (i32.add (i32.const 512) (global.get $n)) (i32.add (i32.const 64) (local.get $status)))
    (global.set $n (i32.add (global.get $n) (i32.const 1))))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (global.set $n (i32.const 0))
    (call $rec (call $tick (i32.const 0)))                      ;; A: 0 OK
    (call $rec (call $tick (i32.const 100)))                    ;; B: 12 UNIMPLEMENTED
    (call $rec (call $http (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                           (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 200)))  ;; 12
    (call $rec (call $buf (i32.const 0) (i32.const 0) (i32.const 10) (i32.const 200) (i32.const 204)))  ;; body: 1 NOT_FOUND
    (call $rec (call $buf (i32.const 99) (i32.const 0) (i32.const 10) (i32.const 200) (i32.const 204))) ;; 2 BAD_ARGUMENT
    (call $rec (call $pairs (i32.const 2) (i32.const 200) (i32.const 204)))  ;; response map now: 2
    (call $rec (call $sset (i32.const 16) (i32.const 3) (i32.const 32) (i32.const 5) (i32.const 0)))  ;; 0
    (call $rec (call $sget (i32.const 16) (i32.const 3) (i32.const 200) (i32.const 204) (i32.const 208))) ;; 0
    (call $rec (call $sset (i32.const 16) (i32.const 3) (i32.const 32) (i32.const 5) (i32.const 77))) ;; 8 CAS_MISMATCH
    (call $rec (call $sset (i32.const 16) (i32.const 3) (i32.const 32) (i32.const 5) (i32.load (i32.const 208)))) ;; 0
    (call $rec (call $mdef (i32.const 0) (i32.const 16) (i32.const 3) (i32.const 220)))  ;; 0
    (call $rec (call $minc (i32.load (i32.const 220)) (i64.const 5)))  ;; 0
    (call $rec (call $minc (i32.load (i32.const 220)) (i64.const -1)))  ;; counter down: 2
    (call $rec (call $mget (i32.const 999) (i32.const 224)))  ;; 1
    (call $rec (call $pset (i32.const 48) (i32.const 7) (i32.const 32) (i32.const 5)))  ;; 0
    (call $rec (call $pget (i32.const 48) (i32.const 7) (i32.const 200) (i32.const 204)))  ;; 0
    (call $rec (i32.ne (i32.load (i32.const 204)) (i32.const 5)))  ;; property length 5: 0
    (call $rec (call $ffi (i32.const 16) (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 200) (i32.const 204))) ;; 1
    (call $rec (call $ctx (i32.const 4242)))  ;; 2
    (call $rec (call $ctx (local.get $ctx)))  ;; 0
    (call $rec (call $queue (i32.const 16) (i32.const 3) (i32.const 200)))  ;; 12
    (call $rec (call $cont (i32.const 2)))  ;; downstream (TCP): 12
    (call $rec (call $hget (i32.const 0) (i32.const 16) (i32.const 3) (i32.const 200) (i32.const 204)))  ;; no "key": 1
    (call $rec (call $add (i32.const 0) (i32.const 64) (i32.const 7) (i32.const 80) (i32.const 8)))  ;; CR LF in value: 2
    (call $rec (call $add (i32.const 0) (i32.const 96) (i32.const 8) (i32.const 32) (i32.const 5)))  ;; bad name: 2
    (call $rec (call $hget (i32.const 7) (i32.const 16) (i32.const 3) (i32.const 200) (i32.const 204)))  ;; map 7: 2
    (call $rec (call $done))  ;; 1
    (call $rec (call $rand (i32.const 300) (i32.const 32)))  ;; 0
    (call $rec (call $rand (i32.const 300) (i32.const 1000000)))  ;; 28 INVAL
    (call $rec (call $clock (i32.const 1) (i64.const 0) (i32.const 300)))  ;; 0
    (call $rec (call $clock (i32.const 7) (i64.const 0) (i32.const 300)))  ;; 58 NOTSUP
    (call $rec (call $buf (i32.const 7) (i32.const 0) (i32.const 10) (i32.const 200) (i32.const 204)))  ;; config outside configure: 1
    (call $rec (call $local (i32.const 99) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))  ;; status 99: 2
    (drop (call $add (i32.const 0) (i32.const 64) (i32.const 7) (i32.const 512) (global.get $n)))
    (i32.const 0))
)
"#;

#[test]
fn hostcalls_answer_with_the_statuses_the_specification_names() {
    let filter = load_wat(PROBE).unwrap();
    let mut instance = filter.instantiate();
    let stream = instance.new_stream().unwrap();
    let mut headers = request(None);
    instance
        .on_request_headers(&stream, &mut headers, &StreamInfo::default(), true)
        .unwrap();
    let got: Vec<u8> = headers
        .get("x-probe")
        .expect("probe results")
        .iter()
        .map(|c| c - b'@')
        .collect();
    assert_eq!(
        got,
        [
            0, 12, 12, 1, 2, 2, 0, 0, 8, 0, 0, 0, 2, 1, 0, 0, 0, 1, 2, 0, 12, 12, 1, 2, 2, 2, 1, 0,
            28, 0, 58, 1, 2
        ]
    );
    let metrics = filter.metrics();
    assert_eq!((metrics[0].name.as_str(), metrics[0].value), ("key", 5));
}
