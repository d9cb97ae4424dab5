//! What the service is told about the visitor: `X-Forwarded-*`,
//! `Forwarded` (RFC 7239), `X-Request-Id` and W3C `traceparent`.
//!
//! Forwarding headers and request ids from the client are believed only when
//! the client is a trusted proxy (configured CIDRs); otherwise they are
//! replaced, so a visitor cannot forge its address; the address claims
//! other proxies and CDNs use (`X-Real-IP`, `True-Client-IP`,
//! `CF-Connecting-IP`) are removed unless a trusted hop sent them. A valid
//! `traceparent` is propagated from anyone (it is correlation, not
//! identity); a missing or malformed one starts a new trace, without the
//! visitor's `tracestate` (it described the trace replaced).
//! `X-Forwarded-Port` is the port the request reached the edge on.

use std::fmt::Write;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::routing::host::Host;

/// Names of the headers set here and by the proxy, parsed at compile time
/// (a name given as text is looked up in the standard names on every use).
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// Client-address claims of other proxies and CDNs: believed only from a
/// trusted hop.
pub static CLIENT_IP_CLAIMS: [HeaderName; 3] = [
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
];
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// This hop, as the edge saw it.
pub struct Hop<'a> {
    pub client_ip: Option<IpAddr>,
    /// The client is a trusted proxy.
    pub trusted: bool,
    pub tls: bool,
    /// The host the visitor asked for.
    pub host: &'a Host,
    /// The edge's port the request came in on.
    pub port: Option<u16>,
}

/// Headers to set on the upstream request, handed to `set` one by one,
/// and the visitor's headers to remove, handed to `remove`. Values are
/// built with one allocation at most: this runs on every request.
pub fn headers(
    hop: &Hop,
    incoming: &HeaderMap,
    mut set: impl FnMut(&'static HeaderName, HeaderValue),
    mut remove: impl FnMut(&'static HeaderName),
) {
    if !hop.trusted {
        for name in &CLIENT_IP_CLAIMS {
            if incoming.contains_key(name) {
                remove(name);
            }
        }
    }
    let kept = |name: &str| {
        hop.trusted
            .then(|| incoming.get(name).and_then(|v| v.to_str().ok()))
            .flatten()
            .filter(|v| !v.is_empty())
    };
    let proto = if hop.tls { "https" } else { "http" };
    if let Some(ip) = hop.client_ip {
        let previous = kept("x-forwarded-for");
        // Room for the chain so far, ", " and the longest IPv6 address.
        let mut value = String::with_capacity(previous.map_or(0, str::len) + 2 + 39);
        if let Some(previous) = previous {
            value.push_str(previous);
            value.push_str(", ");
        }
        push_ip(&mut value, ip);
        set(&X_FORWARDED_FOR, value_of(value));
    }
    if kept("x-forwarded-proto").is_none() {
        set(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let (None, Some(host)) = (kept("x-forwarded-host"), hop.host.sent_value()) {
        set(&X_FORWARDED_HOST, host);
    }
    if kept("x-forwarded-port").is_none() {
        set(
            &X_FORWARDED_PORT,
            match hop.port {
                Some(port) => HeaderValue::from(port),
                None => HeaderValue::from_static(if hop.tls { "443" } else { "80" }),
            },
        );
    }
    let previous = kept("forwarded");
    // Room for the chain so far, ", ", `for="[<IPv6>]"`, `;proto=https`
    // and `;host="<host>"`: built in one allocation.
    let room = previous.map_or(0, str::len) + 2 + 47 + 12 + 8 + hop.host.sent().map_or(0, str::len);
    let mut element = String::with_capacity(room);
    if let Some(previous) = previous {
        element.push_str(previous);
        element.push_str(", ");
    }
    match hop.client_ip {
        Some(ip @ IpAddr::V6(_)) => {
            element.push_str("for=\"[");
            push_ip(&mut element, ip);
            element.push_str("]\"");
        }
        Some(ip) => {
            element.push_str("for=");
            push_ip(&mut element, ip);
        }
        None => element.push_str("for=unknown"),
    }
    element.push_str(";proto=");
    element.push_str(proto);
    if let Some(host) = hop.host.sent() {
        element.push_str(";host=\"");
        element.push_str(host);
        element.push('"');
    }
    set(&FORWARDED, value_of(element));
    let traceparent = incoming
        .get(&TRACEPARENT)
        .filter(|v| v.to_str().is_ok_and(is_valid_traceparent))
        .cloned();
    match traceparent {
        Some(traceparent) => set(&TRACEPARENT, traceparent),
        None => {
            set(&TRACEPARENT, value_of(new_traceparent()));
            if incoming.contains_key(&TRACESTATE) {
                remove(&TRACESTATE);
            }
        }
    }
}

/// One `Content-Length` for a request that came with several identical
/// ones (`Content-Length: 5, 5`, or two fields): `None` when it already has
/// at most one plain value. Pingora frames the body by the reconciled
/// value and refuses disagreeing ones; the service should see the one
/// value too, not a list some servers refuse and others read differently.
pub fn single_content_length(incoming: &HeaderMap) -> Option<HeaderValue> {
    let mut values = incoming.get_all(http::header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    let second = values.next();
    if second.is_none() && !first.as_bytes().contains(&b',') {
        return None;
    }
    let mut agreed: Option<u64> = None;
    for value in std::iter::once(first).chain(second).chain(values) {
        for part in value.to_str().ok()?.split(',') {
            let n: u64 = part.trim().parse().ok()?;
            if agreed.is_some_and(|a| a != n) {
                return None;
            }
            agreed = Some(n);
        }
    }
    agreed.map(HeaderValue::from)
}

/// HTTP/2 cookie crumbs (several `cookie` fields, as browsers send them)
/// as the one field HTTP/1.1 wants, joined with `; ` (RFC 9113 §8.2.3);
/// `None` when there is at most one.
pub fn joined_cookies(incoming: &HeaderMap) -> Option<HeaderValue> {
    let mut crumbs = incoming.get_all(http::header::COOKIE).iter();
    let first = crumbs.next()?;
    let second = crumbs.next()?;
    let mut joined = Vec::with_capacity(first.len() + second.len() + 2);
    joined.extend_from_slice(first.as_bytes());
    for crumb in std::iter::once(second).chain(crumbs) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(crumb.as_bytes());
    }
    HeaderValue::from_bytes(&joined).ok()
}

/// Appends `ip` in its usual text form; IPv4 without `fmt` (this runs
/// twice per request).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        // `write!` to a String cannot fail.
        IpAddr::V6(v6) => drop(write!(out, "{v6}")),
    }
}

/// A value built from parts that were already valid header text.
fn value_of(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The request id to use: a trusted hop's, if it sent a sane one.
pub fn trusted_request_id(incoming: &HeaderMap, trusted: bool) -> Option<String> {
    if !trusted {
        return None;
    }
    let id = incoming.get("x-request-id")?.to_str().ok()?;
    let sane = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    sane.then(|| id.to_string())
}

/// The visitor's address: the peer's, or when the peer is a trusted proxy,
/// the nearest address in `X-Forwarded-For` (read from the right) that is
/// not one: each trusted proxy vouches for the hop before it. An entry that
/// is not an address ends the walk at the last one that was.
pub fn client_ip(
    peer: Option<IpAddr>,
    incoming: &HeaderMap,
    trusted: impl Fn(&IpAddr) -> bool,
) -> Option<IpAddr> {
    let mut client = peer?;
    if !trusted(&client) {
        return Some(client);
    }
    for value in incoming.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(value) = value.to_str() else {
            return Some(client);
        };
        for entry in value.rsplit(',') {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) => client = ip,
                Err(_) => return Some(client),
            }
            if !trusted(&client) {
                return Some(client);
            }
        }
    }
    Some(client)
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
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    push_hex(&mut out, &(rand::random::<u128>() | 1).to_be_bytes());
    out.push('-');
    push_hex(&mut out, &(rand::random::<u64>() | 1).to_be_bytes());
    out.push_str("-01");
    out
}

/// 32 random lowercase hex digits.
pub fn new_request_id() -> String {
    let mut out = String::with_capacity(32);
    push_hex(&mut out, &rand::random::<u128>().to_be_bytes());
    out
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
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

    /// What is set (removed headers show as `-`).
    fn headers(hop: &Hop, incoming: &HeaderMap) -> Vec<(&'static str, String)> {
        let out = std::cell::RefCell::new(Vec::new());
        super::headers(
            hop,
            incoming,
            |name, value| {
                (out.borrow_mut()).push((name.as_str(), value.to_str().unwrap().to_owned()))
            },
            |name| out.borrow_mut().push((name.as_str(), "-".into())),
        );
        out.into_inner()
    }

    fn get<'a>(out: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        out.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    fn host(value: Option<&str>) -> &'static Host {
        let mut headers = HeaderMap::new();
        if let Some(value) = value {
            headers.insert(http::header::HOST, HeaderValue::from_str(value).unwrap());
        }
        Box::leak(Box::new(Host::of(&headers, &http::Uri::from_static("/"))))
    }

    fn hop(trusted: bool) -> Hop<'static> {
        Hop {
            client_ip: Some("10.1.2.3".parse().unwrap()),
            trusted,
            tls: true,
            host: host(Some("app.example.com:8443")),
            port: Some(443),
        }
    }

    const FORGED: &[(&str, &str)] = &[
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-port", "1"),
        ("forwarded", "for=6.6.6.6"),
        ("x-request-id", "abc-123"),
        ("x-real-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("cf-connecting-ip", "6.6.6.6"),
    ];

    #[test]
    fn untrusted_clients_cannot_forge_forwarding_headers() {
        let out = headers(&hop(false), &incoming(FORGED));
        assert_eq!(get(&out, "x-forwarded-for"), Some("10.1.2.3"));
        assert_eq!(get(&out, "x-forwarded-proto"), Some("https"));
        assert_eq!(get(&out, "x-forwarded-host"), Some("app.example.com:8443"));
        // The port the edge was reached on, not the one `Host` names.
        assert_eq!(get(&out, "x-forwarded-port"), Some("443"));
        assert_eq!(
            get(&out, "forwarded"),
            Some("for=10.1.2.3;proto=https;host=\"app.example.com:8443\"")
        );
        assert_eq!(trusted_request_id(&incoming(FORGED), false), None);
        for claim in ["x-real-ip", "true-client-ip", "cf-connecting-ip"] {
            assert_eq!(get(&out, claim), Some("-"), "{claim} removed");
        }
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_address() {
        let proxies: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let trusted = |ip: &IpAddr| proxies.iter().any(|n| n.contains(ip));
        let with = |xff: &[&str]| {
            let mut h = HeaderMap::new();
            for v in xff {
                h.append(&X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let proxy = ip("10.1.2.3");
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(ip("6.6.6.6"), &with(&["1.1.1.1"]), trusted),
            ip("6.6.6.6")
        );
        // Behind trusted proxies: the first address from the right that is
        // not one, whatever the visitor put further left.
        assert_eq!(
            client_ip(proxy, &with(&["9.9.9.9, 2.2.2.2, 10.0.0.7"]), trusted),
            ip("2.2.2.2")
        );
        assert_eq!(
            client_ip(proxy, &with(&["9.9.9.9", "2.2.2.2, 10.0.0.7"]), trusted),
            ip("2.2.2.2")
        );
        // Garbage ends the walk at the last address that was one.
        assert_eq!(
            client_ip(proxy, &with(&["bogus, 10.0.0.7"]), trusted),
            ip("10.0.0.7")
        );
        // No header: the proxy itself.
        assert_eq!(client_ip(proxy, &HeaderMap::new(), trusted), proxy);
        assert_eq!(client_ip(None, &HeaderMap::new(), trusted), None);
    }

    #[test]
    fn trusted_proxies_are_appended_to_or_kept() {
        let out = headers(&hop(true), &incoming(FORGED));
        assert_eq!(get(&out, "x-forwarded-for"), Some("6.6.6.6, 10.1.2.3"));
        assert_eq!(get(&out, "x-forwarded-proto"), None, "kept as sent");
        assert_eq!(get(&out, "x-forwarded-host"), None, "kept as sent");
        assert_eq!(
            get(&out, "forwarded"),
            Some("for=6.6.6.6, for=10.1.2.3;proto=https;host=\"app.example.com:8443\"")
        );
        assert_eq!(
            get(&out, "x-real-ip"),
            None,
            "a trusted hop's claim is kept"
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
    fn addresses_are_written_as_std_writes_them() {
        for text in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "192.168.1.10",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let mut out = String::new();
            push_ip(&mut out, text.parse().unwrap());
            assert_eq!(out, text);
        }
    }

    #[test]
    fn ipv6_nodes_are_quoted() {
        let h = Hop {
            client_ip: Some("::1".parse().unwrap()),
            trusted: false,
            tls: false,
            host: host(None),
            port: None,
        };
        let out = headers(&h, &HeaderMap::new());
        assert_eq!(get(&out, "forwarded"), Some("for=\"[::1]\";proto=http"));
        assert_eq!(get(&out, "x-forwarded-port"), Some("80"));
    }

    #[test]
    fn request_ids_are_32_hex_digits() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
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

    #[test]
    fn a_replaced_traceparent_takes_its_tracestate_along() {
        let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let out = headers(
            &hop(false),
            &incoming(&[("traceparent", valid), ("tracestate", "a=1")]),
        );
        assert_eq!(get(&out, "traceparent"), Some(valid));
        assert_eq!(get(&out, "tracestate"), None, "kept as sent");
        let out = headers(
            &hop(false),
            &incoming(&[("traceparent", "garbage"), ("tracestate", "a=1")]),
        );
        assert!(is_valid_traceparent(get(&out, "traceparent").unwrap()));
        assert_eq!(get(&out, "tracestate"), Some("-"));
    }

    #[test]
    fn identical_content_lengths_become_one() {
        let with = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(http::header::CONTENT_LENGTH, HeaderValue::from_static(v));
            }
            single_content_length(&h)
        };
        assert_eq!(with(&[]), None);
        assert_eq!(with(&["5"]), None, "already one");
        assert_eq!(with(&["5, 5"]).unwrap(), "5");
        assert_eq!(with(&["5", "5"]).unwrap(), "5");
        assert_eq!(with(&["5", "6"]), None, "Pingora refuses these");
    }

    #[test]
    fn cookie_crumbs_are_joined() {
        let mut h = HeaderMap::new();
        assert_eq!(joined_cookies(&h), None);
        h.append(http::header::COOKIE, HeaderValue::from_static("a=1"));
        assert_eq!(joined_cookies(&h), None);
        h.append(http::header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(http::header::COOKIE, HeaderValue::from_static("c=3"));
        assert_eq!(joined_cookies(&h).unwrap(), "a=1; b=2; c=3");
    }
}

/// The vendored pingora-http patches the edge relies on for these headers
/// (patches/pingora/, see patches/README.md): they must not change what is sent.
#[cfg(test)]
mod pingora_http_patches {
    use pingora_http::RequestHeader;

    fn wire(req: &RequestHeader) -> String {
        let mut buf = bytes::BytesMut::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn the_upstream_copy_keeps_every_header_and_the_order_of_each_names_values_in_lowercase() {
        let mut req = RequestHeader::build("GET", b"/a?b=c", None).unwrap();
        req.append_header("Host", "web.example").unwrap();
        req.append_header("X-Multi", "one").unwrap();
        req.append_header("accept", "*/*").unwrap();
        req.append_header("x-multi", "two").unwrap();
        assert!(wire(&req).starts_with("Host: web.example\r\nX-Multi: one\r\n"));
        let mut copy = req.lowercase_copy_with_room(8);
        // Values of one name stay in order (and together); Pingora titles Host.
        assert_eq!(
            wire(&copy),
            "Host: web.example\r\nx-multi: one\r\nx-multi: two\r\naccept: */*\r\n"
        );
        assert_eq!(copy.uri, req.uri);
        assert_eq!(copy.method, req.method);
        let before: Vec<_> = copy.headers.get_all("x-multi").iter().cloned().collect();
        assert_eq!(before, ["one", "two"]);
        copy.insert_header("x-forwarded-for", "192.0.2.1").unwrap();
        assert!(wire(&copy).ends_with("x-forwarded-for: 192.0.2.1\r\n"));
        assert!(wire(&req).find("x-forwarded-for").is_none());
    }

    #[test]
    fn static_names_are_inserted_as_given_and_other_names_still_parse() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-request-id", "abc").unwrap();
        req.insert_header("content-length", "0").unwrap();
        req.insert_header("X-Titled", "1").unwrap();
        assert_eq!(req.headers["x-request-id"], "abc");
        assert_eq!(req.headers[http::header::CONTENT_LENGTH], "0");
        assert_eq!(req.headers["x-titled"], "1");
        let wire = wire(&req);
        assert!(wire.contains("x-request-id: abc\r\n"), "{wire}");
        assert!(wire.contains("X-Titled: 1\r\n"), "{wire}");
        assert!(req.insert_header("bad name", "1").is_err());
    }
}
