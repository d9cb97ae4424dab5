//! The host a request names: its `Host` header, or its authority (HTTP/2),
//! normalized once per request into the form every rule is written in
//! (lowercase, no port, no final dot).

use std::borrow::Cow;

use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Uri};

/// Why a request's host names no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the request has no Host header")]
    Missing,
    #[error("the Host header is not a valid host name")]
    Malformed,
    #[error("no route for this host")]
    NotFound,
}

/// A `Host` header value → lowercase host name without port or final dot
/// (borrowed when the value is one already: this runs on every request).
pub fn normalize_host(host: &str) -> Result<Cow<'_, str>, HostError> {
    if host.starts_with('[') {
        return Err(HostError::NotFound); // an IPv6 literal is never a routed host
    }
    let host = strip_port(host).ok_or(HostError::Malformed)?;
    if host.is_empty() {
        return Err(HostError::Missing);
    }
    if host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(HostError::Malformed);
    }
    let host = host.trim_end_matches('.');
    Ok(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// `host[:port]` → host. `None` if the port part is garbage.
fn strip_port(host: &str) -> Option<&str> {
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(h),
        Some(_) => None,
        None => Some(host),
    }
}

/// A request's host, as sent and normalized. Holds the request's own header
/// value (a reference count, not a copy) and copies only when normalizing
/// changed something: this is built for every request.
#[derive(Debug, Clone)]
pub struct Host {
    sent: Sent,
    normal: Result<Normal, HostError>,
}

#[derive(Debug, Clone)]
enum Sent {
    None,
    Header(HeaderValue),
    Authority(Authority),
}

#[derive(Debug, Clone)]
enum Normal {
    /// The normal form is this many bytes at the start of what was sent.
    Prefix(usize),
    Owned(Box<str>),
}

impl Default for Host {
    fn default() -> Self {
        Self {
            sent: Sent::None,
            normal: Err(HostError::Missing),
        }
    }
}

impl Host {
    /// The `Host` header if there is one (HTTP/1.1; HTTP/2 clients may send
    /// it too), else the URI's authority.
    pub fn of(headers: &HeaderMap, uri: &Uri) -> Self {
        let sent = match (headers.get(http::header::HOST), uri.authority()) {
            (Some(value), _) => Sent::Header(value.clone()),
            (None, Some(authority)) => Sent::Authority(authority.clone()),
            (None, None) => return Self::default(),
        };
        let normal = match sent.as_str() {
            None => Err(HostError::Malformed), // not visible ASCII
            Some(text) => normalize_host(text).map(|name| match name {
                Cow::Borrowed(name) => {
                    debug_assert!(std::ptr::eq(name.as_ptr(), text.as_ptr()));
                    Normal::Prefix(name.len())
                }
                Cow::Owned(name) => Normal::Owned(name.into()),
            }),
        };
        Self { sent, normal }
    }

    /// The normalized host name, or why there is none.
    pub fn name(&self) -> Result<&str, HostError> {
        match &self.normal {
            Ok(Normal::Prefix(len)) => Ok(&self.sent.as_str().unwrap_or("")[..*len]),
            Ok(Normal::Owned(name)) => Ok(name),
            Err(e) => Err(e.clone()),
        }
    }

    /// The host as the visitor sent it (may carry a port), when it is text.
    pub fn sent(&self) -> Option<&str> {
        self.sent.as_str()
    }

    /// The host as sent, as a header value for the upstream request
    /// (`X-Forwarded-Host`): the request's own value when it came as a
    /// header.
    pub fn sent_value(&self) -> Option<HeaderValue> {
        match &self.sent {
            Sent::None => None,
            Sent::Header(value) => Some(value.clone()),
            Sent::Authority(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        }
    }
}

impl Sent {
    fn as_str(&self) -> Option<&str> {
        match self {
            Sent::None => None,
            Sent::Header(value) => value.to_str().ok(),
            Sent::Authority(authority) => Some(authority.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> Host {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, HeaderValue::from_str(value).unwrap());
        Host::of(&headers, &Uri::from_static("/"))
    }

    #[test]
    fn a_normal_host_is_borrowed_from_the_header() {
        let h = host("a.preview.localhost:8080");
        assert_eq!(h.name(), Ok("a.preview.localhost"));
        assert!(matches!(h.normal, Ok(Normal::Prefix(19))));
        assert_eq!(h.sent(), Some("a.preview.localhost:8080"));
    }

    #[test]
    fn other_hosts_are_normalized_once() {
        let h = host("A.Preview.Localhost.:80");
        assert_eq!(h.name(), Ok("a.preview.localhost"));
        assert!(matches!(h.normal, Ok(Normal::Owned(_))));
        assert_eq!(h.sent(), Some("A.Preview.Localhost.:80"));
        assert_eq!(host("a b").name(), Err(HostError::Malformed));
        assert_eq!(host("").name(), Err(HostError::Missing));
    }

    #[test]
    fn the_authority_stands_in_for_a_missing_header() {
        let uri: Uri = "https://Api.Example.com:8443/x".parse().unwrap();
        let h = Host::of(&HeaderMap::new(), &uri);
        assert_eq!(h.name(), Ok("api.example.com"));
        assert_eq!(h.sent_value().unwrap(), "Api.Example.com:8443");
        let none = Host::of(&HeaderMap::new(), &Uri::from_static("/"));
        assert_eq!(none.name(), Err(HostError::Missing));
        assert_eq!(none.sent(), None);
    }

    #[test]
    fn a_header_that_is_not_text_is_malformed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::HOST,
            HeaderValue::from_bytes(b"caf\xc3\xa9.test").unwrap(),
        );
        let h = Host::of(&headers, &Uri::from_static("/"));
        assert_eq!(h.name(), Err(HostError::Malformed));
    }
}
