//! Properties (`proxy_get_property`): what the embedder tells the filter
//! about the request ([`StreamInfo`]), under Envoy's names so a filter
//! written for Envoy reads them unchanged, copied per callback into one
//! reusable buffer.

use std::io::Write;
use std::net::SocketAddr;

/// What the embedder knows about the stream, as properties. Strings are
/// answered as bytes, ports and the status code as 8-byte little-endian
/// integers (as Envoy does). Empty strings and `None` are "not found".
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamInfo<'a> {
    /// `request.method`
    pub method: &'a str,
    /// `request.host`: the `Host` / `:authority` as sent.
    pub authority: &'a str,
    /// `request.path` (with query); `request.url_path` is derived.
    pub path: &'a str,
    /// `request.scheme`: `http` or `https`.
    pub scheme: &'a str,
    /// `request.protocol`: `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'a str,
    /// `request.id`
    pub request_id: Option<&'a str>,
    /// `source.address` (`ip:port`, `[v6]:port`) and `source.port`.
    pub source: Option<SocketAddr>,
    /// `destination.address` and `destination.port`.
    pub destination: Option<SocketAddr>,
    /// `xds.route_name` (and `route_name`): the edge route's name.
    pub route_name: Option<&'a str>,
    /// `response.code`, in the response phase.
    pub response_code: Option<u16>,
    /// `identity.claims.<name>`: the visitor's identity, if authenticated.
    pub claims: &'a [(&'a str, &'a str)],
    /// More properties by dotted path (`a.b` is the path `a`, `b`).
    pub extra: &'a [(&'a str, &'a [u8])],
}

/// Paths (segments joined by NUL, as the guest sends them) and values.
#[derive(Debug, Default)]
pub(crate) struct PropertyTable {
    buf: Vec<u8>,
    entries: Vec<((u32, u32), (u32, u32))>,
    /// Addresses are formatted only when asked for.
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
    formatted: Vec<u8>,
}

impl PropertyTable {
    pub(crate) fn load(&mut self, info: &StreamInfo<'_>) {
        self.buf.clear();
        self.entries.clear();
        self.text(&[b"request", b"method"], info.method);
        self.text(&[b"request", b"host"], info.authority);
        self.text(&[b"request", b"path"], info.path);
        let url_path = info.path.split_once('?').map_or(info.path, |(p, _)| p);
        self.text(&[b"request", b"url_path"], url_path);
        self.text(&[b"request", b"scheme"], info.scheme);
        self.text(&[b"request", b"protocol"], info.protocol);
        self.text(&[b"request", b"id"], info.request_id.unwrap_or_default());
        self.source = info.source;
        self.destination = info.destination;
        for (name, addr) in [
            (&b"source"[..], info.source),
            (b"destination", info.destination),
        ] {
            if let Some(addr) = addr {
                self.entry(&[name, b"port"], |buf| {
                    buf.extend_from_slice(&i64::from(addr.port()).to_le_bytes())
                });
            }
        }
        if let Some(route) = info.route_name {
            self.text(&[b"xds", b"route_name"], route);
            self.text(&[b"route_name"], route);
        }
        if let Some(code) = info.response_code {
            self.entry(&[b"response", b"code"], |buf| {
                buf.extend_from_slice(&i64::from(code).to_le_bytes())
            });
        }
        for (name, value) in info.claims {
            self.text(&[b"identity", b"claims", name.as_bytes()], value);
        }
        for (path, value) in info.extra {
            let start = self.buf.len() as u32;
            self.buf
                .extend(path.bytes().map(|b| if b == b'.' { 0 } else { b }));
            let key = (start, self.buf.len() as u32 - start);
            let vstart = self.buf.len() as u32;
            self.buf.extend_from_slice(value);
            self.entries.push((key, (vstart, value.len() as u32)));
        }
    }

    fn text(&mut self, path: &[&[u8]], value: &str) {
        if !value.is_empty() {
            self.entry(path, |buf| buf.extend_from_slice(value.as_bytes()));
        }
    }

    fn entry(&mut self, path: &[&[u8]], value: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len() as u32;
        for (i, segment) in path.iter().enumerate() {
            if i > 0 {
                self.buf.push(0);
            }
            self.buf.extend_from_slice(segment);
        }
        let key = (start, self.buf.len() as u32 - start);
        let vstart = self.buf.len() as u32;
        value(&mut self.buf);
        self.entries
            .push((key, (vstart, self.buf.len() as u32 - vstart)));
    }

    /// The value at `path` (NUL-separated segments; a single dotted
    /// segment such as `source.address` is read as its parts too).
    pub(crate) fn get(&mut self, path: &[u8]) -> Option<&[u8]> {
        let addr = match path {
            b"source\0address" | b"source.address" => Some(self.source),
            b"destination\0address" | b"destination.address" => Some(self.destination),
            _ => None,
        };
        if let Some(addr) = addr {
            let addr = addr?;
            self.formatted.clear();
            let _ = write!(self.formatted, "{addr}");
            return Some(&self.formatted);
        }
        let lookup = |matches: &dyn Fn(&[u8]) -> bool| {
            self.entries
                .iter()
                .find(|(k, _)| matches(self.slice(*k)))
                .map(|(_, v)| self.slice(*v))
        };
        if let Some(v) = lookup(&|k| k == path) {
            return Some(v);
        }
        if !path.contains(&0) && path.contains(&b'.') {
            let dotted = |k: &[u8]| {
                k.len() == path.len()
                    && k.iter()
                        .zip(path)
                        .all(|(&a, &b)| a == if b == b'.' { 0 } else { b })
            };
            return lookup(&dotted);
        }
        None
    }

    fn slice(&self, (start, len): (u32, u32)) -> &[u8] {
        &self.buf[start as usize..(start + len) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_names_and_encodings() {
        let mut t = PropertyTable::default();
        let claims = [("sub", "u-1")];
        let extra: [(&str, &[u8]); 1] = [("edge.cluster", b"demo")];
        t.load(&StreamInfo {
            method: "GET",
            authority: "a.example.com",
            path: "/x?y=1",
            source: Some("[::1]:5000".parse().unwrap()),
            route_name: Some("web"),
            response_code: Some(204),
            claims: &claims,
            extra: &extra,
            ..Default::default()
        });
        assert_eq!(t.get(b"request\0path"), Some(&b"/x?y=1"[..]));
        assert_eq!(t.get(b"request\0url_path"), Some(&b"/x"[..]));
        assert_eq!(t.get(b"source\0address"), Some(&b"[::1]:5000"[..]));
        assert_eq!(t.get(b"source.address"), Some(&b"[::1]:5000"[..]));
        assert_eq!(t.get(b"source\0port"), Some(&5000i64.to_le_bytes()[..]));
        assert_eq!(t.get(b"response\0code"), Some(&204i64.to_le_bytes()[..]));
        assert_eq!(t.get(b"xds\0route_name"), Some(&b"web"[..]));
        assert_eq!(t.get(b"identity\0claims\0sub"), Some(&b"u-1"[..]));
        assert_eq!(t.get(b"edge\0cluster"), Some(&b"demo"[..]));
        assert_eq!(t.get(b"request\0id"), None);
        assert_eq!(t.get(b"request\0scheme"), None);
        t.load(&StreamInfo::default());
        assert_eq!(t.get(b"request\0path"), None);
    }
}
