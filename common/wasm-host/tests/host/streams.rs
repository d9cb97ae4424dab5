//! Streams and maps in our host: interleaved requests keep their own state,
//! pseudo-headers are there to read but not to write, trailers go through
//! the same edit path as headers, and a local reply skips the response.

use crate::common;

use header_policy::{HeaderList, Headers};
use wasm_host::{LocalReply, Outcome, PluginSpec, StreamInfo, WasmFilter};

fn info<'a>(path: &'a str, request_id: &'a str) -> StreamInfo<'a> {
    StreamInfo {
        method: "GET",
        authority: "shop.example.com",
        path,
        scheme: "https",
        request_id: Some(request_id),
        source: Some("192.0.2.1:1234".parse().unwrap()),
        route_name: Some("web"),
        ..Default::default()
    }
}

#[test]
fn interleaved_streams_keep_their_own_facts() {
    let filter = common::load_policy(
        "response: [{set: {X-Rid: '{request_id}', X-Path: '{path}', X-Ip: '{client_ip}'}}]",
    );
    let mut instance = filter.instantiate();
    let (a, b) = (
        instance.new_stream().unwrap(),
        instance.new_stream().unwrap(),
    );
    let mut req_a = HeaderList::from_pairs([("x-request-id", "rid-a")]);
    let mut req_b = HeaderList::from_pairs([("x-request-id", "rid-b")]);
    instance
        .on_request_headers(&a, &mut req_a, &info("/a", "rid-a"), true)
        .unwrap();
    instance
        .on_request_headers(&b, &mut req_b, &info("/b", "rid-b"), true)
        .unwrap();
    let mut resp_b = HeaderList::new();
    instance
        .on_response_headers(&b, &mut resp_b, &info("/b", "rid-b"), false)
        .unwrap();
    instance.end_stream(b);
    let mut resp_a = HeaderList::new();
    instance
        .on_response_headers(&a, &mut resp_a, &info("/a", "rid-a"), false)
        .unwrap();
    instance.end_stream(a);
    assert_eq!(resp_a.get("x-rid"), Some(&b"rid-a"[..]));
    assert_eq!(resp_a.get("x-path"), Some(&b"/a"[..]));
    assert_eq!(resp_b.get("x-rid"), Some(&b"rid-b"[..]));
    assert_eq!(resp_b.get("x-ip"), Some(&b"192.0.2.1"[..]));
}

#[test]
fn a_preflight_is_answered_and_the_request_left_alone() {
    let filter = common::load_policy(
        "cors: {allow_origins: [https://app.example.com]}\nstrip: {request: [x-secret]}",
    );
    let mut instance = filter.instantiate();
    let s = instance.new_stream().unwrap();
    let mut req = HeaderList::from_pairs([
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "POST"),
        ("x-secret", "1"),
    ]);
    let before = req.clone();
    let out = instance
        .on_request_headers(
            &s,
            &mut req,
            &StreamInfo {
                method: "OPTIONS",
                ..Default::default()
            },
            true,
        )
        .unwrap();
    assert_eq!(
        out,
        Outcome::Respond(LocalReply {
            status: 204,
            headers: vec![
                (
                    "access-control-allow-origin".into(),
                    b"https://app.example.com".to_vec()
                ),
                (
                    "access-control-allow-methods".into(),
                    b"GET, HEAD, POST".to_vec()
                ),
                ("vary".into(), b"Origin".to_vec()),
            ],
            body: Vec::new(),
            details: String::new(),
            grpc_status: None,
        })
    );
    assert_eq!(req, before);
}

/// Reads `:path` and `:status`, tries to rewrite `:path` (refused), and
/// adds a trailer named after the request path's length.
const MAPS: &str = r#"
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 16) ":path")
  (data (i32.const 32) ":status")
  (data (i32.const 48) "x-seen-path")
  (data (i32.const 64) "x-status")
  (data (i32.const 80) "/rewritten")
  (data (i32.const 96) "x-trailer")
  (data (i32.const 112) "x-refused")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $status i32)
    ;; copy :path's value into x-seen-path
    (drop (call $get (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 200) (i32.const 204)))
    (drop (call $add (i32.const 0) (i32.const 48) (i32.const 11) (i32.load (i32.const 200)) (i32.load (i32.const 204))))
    ;; rewriting or removing :path is refused; record both statuses
    (local.set $status (i32.add
      (call $replace (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 80) (i32.const 10))
      (i32.mul (i32.const 10) (call $remove (i32.const 0) (i32.const 16) (i32.const 5)))))
    (i32.store8 (i32.const 300) (i32.add (i32.const 48) (i32.div_u (local.get $status) (i32.const 10))))
    (i32.store8 (i32.const 301) (i32.add (i32.const 48) (i32.rem_u (local.get $status) (i32.const 10))))
    (drop (call $add (i32.const 0) (i32.const 112) (i32.const 9) (i32.const 300) (i32.const 2)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    ;; the pairs, pseudo-header included, set back unchanged: accepted
    (drop (call $pairs (i32.const 2) (i32.const 200) (i32.const 204)))
    (drop (call $set_pairs (i32.const 2) (i32.load (i32.const 200)) (i32.load (i32.const 204))))
    (drop (call $get (i32.const 2) (i32.const 32) (i32.const 7) (i32.const 200) (i32.const 204)))
    (drop (call $add (i32.const 2) (i32.const 64) (i32.const 8) (i32.load (i32.const 200)) (i32.load (i32.const 204))))
    (i32.const 0))
  (func (export "proxy_on_response_trailers") (param i32 i32) (result i32)
    (drop (call $add (i32.const 3) (i32.const 96) (i32.const 9) (i32.const 80) (i32.const 10)))
    (i32.const 0))
)
"#;

#[test]
fn pseudo_headers_read_only_and_trailers() {
    let filter = WasmFilter::load(
        common::runtime(),
        &wat::parse_str(MAPS).unwrap(),
        PluginSpec::default(),
    )
    .unwrap();
    let mut instance = filter.instantiate();
    let s = instance.new_stream().unwrap();
    let mut req = HeaderList::from_pairs([("accept", "*/*")]);
    instance
        .on_request_headers(&s, &mut req, &info("/orig?q=1", "r"), false)
        .unwrap();
    assert_eq!(
        req,
        HeaderList::from_pairs([
            ("accept", "*/*"),
            ("x-seen-path", "/orig?q=1"),
            // BAD_ARGUMENT (2) for both the replace and the remove of :path.
            ("x-refused", "22"),
        ])
    );
    let mut resp = HeaderList::from_pairs([("content-type", "text/plain"), ("x-a", "1")]);
    let out = instance
        .on_response_headers(
            &s,
            &mut resp,
            &StreamInfo {
                response_code: Some(404),
                ..info("/", "r")
            },
            false,
        )
        .unwrap();
    assert_eq!(out, Outcome::Continue);
    assert_eq!(
        resp.grouped(),
        HeaderList::from_pairs([
            ("content-type", "text/plain"),
            ("x-a", "1"),
            ("x-status", "404")
        ])
        .grouped()
    );
    let mut trailers = HeaderList::from_pairs([("grpc-status", "0")]);
    instance
        .on_response_trailers(&s, &mut trailers, &info("/", "r"))
        .unwrap();
    assert_eq!(trailers.get("x-trailer"), Some(&b"/rewritten"[..]));
    instance.end_stream(s);
    assert_eq!(instance.crashes(), 0);
}
