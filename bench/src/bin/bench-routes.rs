//! Route lookup cost with many custom-domain rules (a row of
//! `scripts/bench`):
//!
//!     bench-routes [ROUTES]
//!
//! Builds ROUTES rules (default 10,000: exact hosts, wildcards and path
//! prefixes) through the real config loader, then times lookups that hit
//! the first rule, the last one, a wildcard, a path prefix and nothing, and
//! prints one line per case plus a JSON summary line (`{"routes":…}`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use edge_proxy::EdgeConfig;

const TOKEN_SHA256: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

fn config(routes: usize) -> String {
    let mut yaml = format!(
        "listen: {{ http: 127.0.0.1:0, tunnel: 127.0.0.1:0 }}\npreview: {{ domains: [preview.example.com] }}\nclusters:\n  - {{ name: c, token_sha256: \"{TOKEN_SHA256}\", environments: [prod] }}\nroutes:\n"
    );
    for i in 0..routes {
        let rule = match i % 4 {
            0 => format!("  - {{ host: app{i}.example.com, target: prod/web:8080 }}\n"),
            1 => format!("  - {{ host: \"*.tenant{i}.example.com\", target: prod/web:8080 }}\n"),
            2 => format!("  - {{ host: api{i}.example.com, path: /v{i}, strip_prefix: true, target: prod/api:9000 }}\n"),
            _ => format!("  - {{ host: shop{i}.example.org, path: /cart, target: prod/shop:8080 }}\n"),
        };
        yaml.push_str(&rule);
    }
    yaml
}

/// Lookups per second for one (host, path), over about `budget`.
fn rate(config: &EdgeConfig, host: &str, path: &str, budget: Duration) -> f64 {
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < budget {
        for _ in 0..1000 {
            black_box(config.routes.resolve(black_box(host), black_box(path)));
        }
        n += 1000;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let routes: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUTES is a number"))
        .unwrap_or(10_000);
    let yaml = config(routes);
    let started = Instant::now();
    let config = EdgeConfig::parse(&yaml, "routes.yaml").expect("valid config");
    let load = started.elapsed();
    assert_eq!(config.routes.len(), routes);

    let last = routes - 1 - (routes - 1) % 4;
    let cases = [
        ("first rule", "app0.example.com".to_string(), "/"),
        ("last exact rule", format!("app{last}.example.com"), "/"),
        ("wildcard", "x.tenant1.example.com".to_string(), "/"),
        ("path prefix", "api2.example.com".to_string(), "/v2/users"),
        ("no match", "nothing.example.net".to_string(), "/"),
    ];
    let mut slowest = f64::MAX;
    println!("{routes} routes loaded and validated in {load:?}");
    for (name, host, path) in &cases {
        let per_sec = rate(&config, host, path, Duration::from_millis(300));
        slowest = slowest.min(per_sec);
        println!(
            "{name:>16}: {:>6.0} ns/lookup ({:.1}M lookups/s)",
            1e9 / per_sec,
            per_sec / 1e6
        );
    }
    println!(
        "{{\"routes\":{routes},\"load_ms\":{:.1},\"slowest_lookup_ns\":{:.0}}}",
        load.as_secs_f64() * 1e3,
        1e9 / slowest
    );
}
