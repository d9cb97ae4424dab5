//! Per-request cost of the header policy: natively, and as the built
//! filter in this host (new stream, request headers, response headers, end
//! of stream), on one thread. `cargo bench -p wasm-host --bench per_request`
//! prints nanoseconds of this thread's CPU time per request (the median of
//! several rounds), which other load on a shared machine moves less than
//! wall time.

#[path = "../tests/host/common/mod.rs"]
mod common;

use std::hint::black_box;

use header_policy::{single_value, HeaderList, RequestFacts};
use wasm_host::{Outcome, StreamInfo};

const ROUNDS: usize = 7;
const PER_ROUND: usize = 20_000;

fn request() -> HeaderList {
    HeaderList::from_pairs([
        ("host", "shop.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-encoding", "gzip, br"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("cookie", "session=abc123; theme=dark"),
        ("origin", "https://app.example.com"),
        ("x-request-id", "0b6c1f0e-6a37-4a55-9d65-4f6a0a4b8a10"),
    ])
}

fn response() -> HeaderList {
    HeaderList::from_pairs([
        ("content-type", "text/html; charset=utf-8"),
        ("content-length", "5120"),
        ("server", "gunicorn"),
        ("x-powered-by", "Flask"),
        ("cache-control", "private"),
        ("set-cookie", "session=abc123; HttpOnly"),
    ])
}

/// This thread's CPU time so far, in nanoseconds (Linux schedstat).
fn cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    stat.split_whitespace().next().unwrap().parse().unwrap()
}

/// Median CPU nanoseconds per call of `f` over the rounds.
fn measure(mut f: impl FnMut()) -> f64 {
    for _ in 0..PER_ROUND / 4 {
        f();
    }
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = cpu_ns();
            for _ in 0..PER_ROUND {
                f();
            }
            (cpu_ns() - start) as f64 / PER_ROUND as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn main() {
    let (req, resp) = (request(), response());
    let claims = [("sub", "u-42")];
    let info = StreamInfo {
        method: "GET",
        authority: "shop.example.com",
        path: "/cart?item=7",
        scheme: "https",
        protocol: "HTTP/1.1",
        request_id: Some("0b6c1f0e-6a37-4a55-9d65-4f6a0a4b8a10"),
        source: Some("203.0.113.9:51234".parse().unwrap()),
        route_name: Some("web"),
        claims: &claims,
        ..Default::default()
    };
    println!(
        "module: {} ({} bytes)",
        common::filter_wasm_path().display(),
        std::fs::metadata(common::filter_wasm_path()).unwrap().len()
    );
    for (name, policy_text) in [
        ("example policy", common::corpus::POLICIES[0]),
        ("empty policy", ""),
    ] {
        let policy = header_policy::from_text(policy_text).unwrap();
        let native = measure(|| {
            let mut up = req.clone();
            let origin = single_value(&req, "origin");
            let facts = RequestFacts {
                method: "GET",
                host: "shop.example.com",
                path: "/cart?item=7",
                route: Some("web"),
                request_id: Some("0b6c1f0e-6a37-4a55-9d65-4f6a0a4b8a10"),
                client_ip: Some("203.0.113.9"),
                origin,
                claims: Some(&&claims[..]),
            };
            black_box(policy.on_request(&facts, &mut up));
            let mut down = resp.clone();
            policy.on_response(&facts, &mut down);
            black_box((up, down));
        });
        let copies = measure(|| {
            black_box((req.clone(), resp.clone()));
        });
        let filter = common::load_policy(policy_text);
        let mut instance = filter.instantiate();
        let hosted = measure(|| {
            let stream = instance.new_stream().unwrap();
            let mut up = req.clone();
            let out = instance
                .on_request_headers(&stream, &mut up, &info, true)
                .unwrap();
            assert_eq!(out, Outcome::Continue);
            let mut down = resp.clone();
            instance
                .on_response_headers(&stream, &mut down, &info, false)
                .unwrap();
            instance.end_stream(stream);
            black_box((up, down));
        });
        println!(
            "{name}: native {:.0} ns/request, wasm filter in our host {:.0} ns/request (cloning the two header lists, included in both: {:.0} ns)",
            native, hosted, copies
        );
    }
    let filter = common::load_policy(common::corpus::POLICIES[0]);
    let mut instance = filter.instantiate();
    let lifecycle = measure(|| {
        let stream = instance.new_stream().unwrap();
        instance.end_stream(stream);
    });
    println!("a stream's lifecycle alone (context create, done, log, delete): {lifecycle:.0} ns");
}
