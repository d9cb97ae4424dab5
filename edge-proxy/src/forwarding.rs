//! What the service is told about the visitor: `X-Forwarded-*`,
//! `Forwarded` (RFC 7239), `X-Request-Id` and W3C `traceparent`.
//!
//! Forwarding headers and request ids from the client are believed only when
//! the client is a trusted proxy (configured CIDRs); otherwise they are
//! replaced, so a visitor cannot forge its address. A valid `traceparent` is
//! propagated from anyone (it is correlation, not identity); a missing or
//! malformed one starts a new trace.

use std::net::IpAddr;

use http::HeaderMap;

/// This hop, as the edge saw it.
pub struct Hop<'a> {
    pub client_ip: Option<IpAddr>,
    /// The client is a trusted proxy.
    pub trusted: bool,
    pub tls: bool,
    /// The `Host` the visitor asked for (may carry a port).
    pub host: Option<&'a str>,
}

/// Headers to set on the upstream request.
pub fn headers(hop: &Hop, incoming: &HeaderMap) -> Vec<(&'static str, String)> {
    let kept = |name: &str| {
        hop.trusted
            .then(|| incoming.get(name).and_then(|v| v.to_str().ok()))
            .flatten()
            .filter(|v| !v.is_empty())
    };
    let append = |name: &str, value: String| match kept(name) {
        Some(previous) => format!("{previous}, {value}"),
        None => value,
    };
    let proto = if hop.tls { "https" } else { "http" };
    let mut out = Vec::new();
    if let Some(ip) = hop.client_ip {
        out.push(("x-forwarded-for", append("x-forwarded-for", ip.to_string())));
    }
    if kept("x-forwarded-proto").is_none() {
        out.push(("x-forwarded-proto", proto.to_string()));
    }
    if let (None, Some(host)) = (kept("x-forwarded-host"), hop.host) {
        out.push(("x-forwarded-host", host.to_string()));
    }
    if kept("x-forwarded-port").is_none() {
        let port = hop
            .host
            .and_then(|h| h.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or(if hop.tls { 443 } else { 80 });
        out.push(("x-forwarded-port", port.to_string()));
    }
    let node = match hop.client_ip {
        Some(IpAddr::V6(ip)) => format!("\"[{ip}]\""),
        Some(ip) => ip.to_string(),
        None => "unknown".into(),
    };
    let mut element = format!("for={node};proto={proto}");
    if let Some(host) = hop.host {
        element.push_str(&format!(";host=\"{host}\""));
    }
    out.push(("forwarded", append("forwarded", element)));
    let traceparent = incoming
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_valid_traceparent(v))
        .map(str::to_owned)
        .unwrap_or_else(new_traceparent);
    out.push(("traceparent", traceparent));
    out
}

/// The request id to use: a trusted hop's, if it sent a sane one.
pub fn trusted_request_id(incoming: &HeaderMap, trusted: bool) -> Option<String> {
    let id = incoming.get("x-request-id")?.to_str().ok()?;
    let sane = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    (trusted && sane).then(|| id.to_string())
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero.
pub fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && nonzero(parts[1])
        && hex(parts[2], 16)
        && nonzero(parts[2])
        && hex(parts[3], 2)
}

/// Starts a sampled trace.
pub fn new_traceparent() -> String {
    format!(
        "00-{:032x}-{:016x}-01",
        rand::random::<u128>() | 1,
        rand::random::<u64>() | 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn get<'a>(out: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        out.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    fn hop(trusted: bool) -> Hop<'static> {
        Hop {
            client_ip: Some("10.1.2.3".parse().unwrap()),
            trusted,
            tls: true,
            host: Some("app.example.com"),
        }
    }

    const FORGED: &[(&str, &str)] = &[
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-port", "1"),
        ("forwarded", "for=6.6.6.6"),
        ("x-request-id", "abc-123"),
    ];

    #[test]
    fn untrusted_clients_cannot_forge_forwarding_headers() {
        let out = headers(&hop(false), &incoming(FORGED));
        assert_eq!(get(&out, "x-forwarded-for"), Some("10.1.2.3"));
        assert_eq!(get(&out, "x-forwarded-proto"), Some("https"));
        assert_eq!(get(&out, "x-forwarded-host"), Some("app.example.com"));
        assert_eq!(get(&out, "x-forwarded-port"), Some("443"));
        assert_eq!(
            get(&out, "forwarded"),
            Some("for=10.1.2.3;proto=https;host=\"app.example.com\"")
        );
        assert_eq!(trusted_request_id(&incoming(FORGED), false), None);
    }

    #[test]
    fn trusted_proxies_are_appended_to_or_kept() {
        let out = headers(&hop(true), &incoming(FORGED));
        assert_eq!(get(&out, "x-forwarded-for"), Some("6.6.6.6, 10.1.2.3"));
        assert_eq!(get(&out, "x-forwarded-proto"), None, "kept as sent");
        assert_eq!(get(&out, "x-forwarded-host"), None, "kept as sent");
        assert_eq!(
            get(&out, "forwarded"),
            Some("for=6.6.6.6, for=10.1.2.3;proto=https;host=\"app.example.com\"")
        );
        assert_eq!(
            trusted_request_id(&incoming(FORGED), true).as_deref(),
            Some("abc-123")
        );
        assert_eq!(
            trusted_request_id(&incoming(&[("x-request-id", "has space")]), true),
            None
        );
    }

    #[test]
    fn ipv6_nodes_are_quoted() {
        let h = Hop {
            client_ip: Some("::1".parse().unwrap()),
            trusted: false,
            tls: false,
            host: None,
        };
        let out = headers(&h, &HeaderMap::new());
        assert_eq!(get(&out, "forwarded"), Some("for=\"[::1]\";proto=http"));
        assert_eq!(get(&out, "x-forwarded-port"), Some("80"));
    }

    #[test]
    fn traceparent_is_propagated_or_started() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let out = headers(&hop(false), &incoming(&[("traceparent", tp)]));
        assert_eq!(get(&out, "traceparent"), Some(tp));
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let out = headers(&hop(false), &incoming(&[("traceparent", bad)]));
            let started = get(&out, "traceparent").unwrap();
            assert_ne!(started, bad);
            assert!(is_valid_traceparent(started), "{started}");
        }
    }
}
