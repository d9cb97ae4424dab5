//! Differential, the third way: every corpus case through the built filter
//! in a real Envoy (v8 runtime) must give the upstream and the visitor the
//! same headers as the policy crate applied natively (and so as our host,
//! `differential.rs`), once Envoy's own behaviour is set aside.
//!
//! What Envoy does by itself, normalized away on both sides:
//! - it adds `x-forwarded-proto` to the request before filters run (so a
//!   policy sees it there and not in the edge);
//! - it adds `date` to responses and local replies, and `content-length` /
//!   `transfer-encoding` as framing; the router's `x-envoy-*` headers are
//!   off (`suppress_envoy_headers`) and dropped if they appear;
//! - it joins repeated values of its "inline" headers (`user-agent`, `via`,
//!   `server`, `cache-control`, `vary`, ... the list Envoy logs at start as
//!   "HTTP header map info") into one comma-separated value, dropping empty
//!   ones: values are compared as HTTP lists, joined with `,` without empty
//!   elements (RFC 9110 5.6.1), `set-cookie` apart;
//! - names are lowercase (as in the edge) and the order of different names
//!   carries no meaning.
//!
//! And one difference of hosts, not normalized but driven by the case: Envoy
//! has no `identity.claims.*` property, so `{claim.*}` values are absent
//! there and the native run has no identity either.

use crate::common;

use std::collections::BTreeMap;

use common::corpus::{self, POLICIES};
use common::envoy::{self, Envoy, Upstream};
use common::Exchange;
use header_policy::HeaderList;

/// Names Envoy adds or rewrites by itself.
fn envoy_own(name: &str) -> bool {
    matches!(
        name,
        "x-forwarded-proto" | "date" | "content-length" | "transfer-encoding"
    ) || name.starts_with("x-envoy-")
}

/// An exchange with Envoy's own headers removed and each name's values
/// joined as HTTP lists.
fn normalized(e: &Exchange) -> String {
    let show = |h: &HeaderList| {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (n, v) in h.fields() {
            if !envoy_own(n) {
                groups
                    .entry(n.clone())
                    .or_default()
                    .push(String::from_utf8_lossy(v).into_owned());
            }
        }
        groups
            .into_iter()
            .map(|(n, vs)| {
                let v = if n == "set-cookie" {
                    vs.join(" | ")
                } else {
                    // Empty list elements carry nothing (RFC 9110 5.6.1).
                    let elements: Vec<&str> = vs
                        .iter()
                        .map(String::as_str)
                        .filter(|v| !v.is_empty())
                        .collect();
                    elements.join(",")
                };
                format!("  {n}: {v:?}\n")
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

#[test]
fn envoy_agrees_with_the_native_policy_on_every_case() {
    let cases = corpus::cases();
    let policies = corpus::policies();
    let upstream = Upstream::start(cases.iter().map(|c| (c.id, c.response.clone())).collect());
    let listeners: Vec<(String, String)> = POLICIES
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("policy-{i}"), p.to_string()))
        .collect();
    let envoy = Envoy::start(&envoy::bootstrap(
        common::filter_wasm_path(),
        upstream.port,
        &listeners,
    ));
    let (mut mismatches, mut local, mut proxied) = (Vec::new(), 0, 0);
    let mut set_aside: BTreeMap<String, usize> = BTreeMap::new();
    for case in &cases {
        let want = corpus::native(&policies[case.policy], case, false);
        let mut request = vec![("Host".to_owned(), case.host.to_owned())];
        request.extend(case.request.iter().cloned());
        let port = envoy.ports[&format!("policy-{}", case.policy)];
        let response = envoy::exchange(port, case.method, &case.path, &request);
        let got = match upstream.received(case.id) {
            Some(received) => {
                proxied += 1;
                assert_eq!(response.status, 200, "case {}", case.id);
                Exchange::Proxied {
                    upstream: HeaderList::from_pairs(received),
                    visitor: HeaderList::from_pairs(response.headers),
                }
            }
            None => {
                local += 1;
                Exchange::Local {
                    status: response.status,
                    headers: HeaderList::from_pairs(response.headers),
                }
            }
        };
        tally(&want, &got, &mut set_aside);
        if normalized(&want) != normalized(&got) {
            mismatches.push(format!(
                "case {} (policy {}): {} {} {}\n--- native\n{}--- envoy\n{}",
                case.id,
                case.policy,
                case.method,
                case.host,
                case.path,
                normalized(&want),
                normalized(&got)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}\n--- envoy log (last lines)\n{}",
        mismatches.len(),
        cases.len(),
        mismatches
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        tail(&envoy.log_text(), 30)
    );
    assert!(
        local >= 20 && proxied >= 400,
        "local {local}, proxied {proxied}"
    );
    eprintln!("{} cases agree ({proxied} proxied, {local} answered by the filter); Envoy's own, set aside: {set_aside:?}", cases.len());
}

/// Counts what normalization sets aside: Envoy's own headers, and names
/// whose repeated fields Envoy delivered joined into fewer.
fn tally(want: &Exchange, got: &Exchange, counts: &mut BTreeMap<String, usize>) {
    let maps = |e: &Exchange| -> Vec<(&'static str, HeaderList)> {
        match e {
            Exchange::Proxied { upstream, visitor } => {
                vec![("upstream", upstream.clone()), ("visitor", visitor.clone())]
            }
            Exchange::Local { headers, .. } => vec![("local", headers.clone())],
        }
    };
    for ((side, w), (_, g)) in maps(want).into_iter().zip(maps(got)) {
        let (w, g) = (w.grouped(), g.grouped());
        for (name, values) in &g {
            if envoy_own(name) {
                *counts.entry(format!("{side}: {name} added")).or_default() += 1;
            } else if w.get(name).is_some_and(|wv| wv.len() > values.len()) {
                *counts.entry(format!("{side}: {name} joined")).or_default() += 1;
            }
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
