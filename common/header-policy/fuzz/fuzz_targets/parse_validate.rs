//! Any text through parse + validate never panics; a policy that validates,
//! applied to any headers, never panics and writes only valid headers.
//!
//! Input: policy text, then optionally a line `---` and request header lines
//! `name: value` (the response gets the same lines).
#![no_main]

use header_policy::{is_field_value, is_token, HeaderList, Headers, RequestFacts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (policy_text, headers_text) = text.split_once("\n---\n").unwrap_or((text, ""));
    let Ok(policy) = header_policy::from_text(policy_text) else {
        return;
    };
    let input = HeaderList::from_pairs(
        headers_text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim(), v.trim())),
    );
    let origin = header_policy::single_value(&input, "origin");
    let facts = RequestFacts {
        method: if headers_text.len() % 2 == 0 {
            "GET"
        } else {
            "OPTIONS"
        },
        host: input
            .get("host")
            .and_then(|h| std::str::from_utf8(h).ok())
            .unwrap_or("a.example.com"),
        path: "/api/x?y",
        route: Some("web"),
        request_id: Some("r"),
        client_ip: Some("192.0.2.1"),
        origin,
        claims: Some(&&[("sub", "u"), ("email", "a\r\nb")][..]),
    };
    for response in [false, true] {
        let mut headers = input.clone();
        if response {
            policy.on_response(&facts, &mut headers);
        } else if let header_policy::Decision::Respond(answer) =
            policy.on_request(&facts, &mut headers)
        {
            assert!(answer.status == 204 || answer.status == 403);
            for (n, v) in &answer.headers {
                assert!(is_token(n) && is_field_value(v), "{n}: {v:?}");
            }
        }
        for (name, value) in headers.fields() {
            if !input.fields().iter().any(|(n, v)| n == name && v == value) {
                let value = std::str::from_utf8(value).expect("written values are ASCII");
                assert!(is_token(name) && is_field_value(value), "{name}: {value:?}");
            }
        }
    }
});
