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

/// The properties every stream has, by path (segments joined by NUL, as
/// the guest sends them): their paths are constants, so loading a stream's
/// copies only the values.
const FIXED: [&[u8]; 11] = [
    b"request\0method",
    b"request\0host",
    b"request\0path",
    b"request\0url_path",
    b"request\0scheme",
    b"request\0protocol",
    b"request\0id",
    b"source\0port",
    b"destination\0port",
    b"xds\0route_name",
    b"response\0code",
];
/// `route_name` is `xds.route_name` by its other name.
const ROUTE: usize = 9;

/// The properties of the stream a callback runs for: values in one
/// reusable buffer, copied per callback.
#[derive(Debug, Default)]
pub(crate) struct PropertyTable {
    buf: Vec<u8>,
    /// Where each of [`FIXED`] is in `buf`; `None`: not found.
    fixed: [Option<(u32, u32)>; FIXED.len()],
    /// Claims and extra properties: (path, value).
    other: Vec<((u32, u32), (u32, u32))>,
    /// Addresses are formatted only when asked for.
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
    formatted: Vec<u8>,
}

impl PropertyTable {
    pub(crate) fn load(&mut self, info: &StreamInfo<'_>) {
        self.buf.clear();
        self.other.clear();
        let url_path = info.path.split_once('?').map_or(info.path, |(p, _)| p);
        let port = |a: Option<SocketAddr>| a.map(|a| i64::from(a.port()).to_le_bytes());
        let (source_port, destination_port) = (port(info.source), port(info.destination));
        let code = info.response_code.map(|c| i64::from(c).to_le_bytes());
        let values: [Option<&[u8]>; FIXED.len()] = [
            Some(info.method.as_bytes()),
            Some(info.authority.as_bytes()),
            Some(info.path.as_bytes()),
            Some(url_path.as_bytes()),
            Some(info.scheme.as_bytes()),
            Some(info.protocol.as_bytes()),
            info.request_id.map(str::as_bytes),
            source_port.as_ref().map(|p| &p[..]),
            destination_port.as_ref().map(|p| &p[..]),
            info.route_name.map(str::as_bytes),
            code.as_ref().map(|c| &c[..]),
        ];
        for (slot, value) in self.fixed.iter_mut().zip(values) {
            *slot = value.filter(|v| !v.is_empty()).map(|v| {
                let start = self.buf.len() as u32;
                self.buf.extend_from_slice(v);
                (start, v.len() as u32)
            });
        }
        self.source = info.source;
        self.destination = info.destination;
        let claims = info.claims.iter().map(|(name, value)| {
            (
                [&b"identity\0claims\0"[..], name.as_bytes()],
                value.as_bytes(),
            )
        });
        for (path, value) in claims {
            let key = self.push(path.into_iter().flatten().copied());
            let value = self.push(value.iter().copied());
            self.other.push((key, value));
        }
        for (path, value) in info.extra {
            let key = self.push(path.bytes().map(|b| if b == b'.' { 0 } else { b }));
            let value = self.push(value.iter().copied());
            self.other.push((key, value));
        }
    }

    fn push(&mut self, bytes: impl Iterator<Item = u8>) -> (u32, u32) {
        let start = self.buf.len() as u32;
        self.buf.extend(bytes);
        (start, self.buf.len() as u32 - start)
    }

    /// The value at `path` (NUL-separated segments; a single dotted
    /// segment such as `source.address` is read as its parts too).
    pub(crate) fn get(&mut self, path: &[u8]) -> Option<&[u8]> {
        if !path.contains(&0) && path.contains(&b'.') {
            let path: Vec<u8> = path
                .iter()
                .map(|&b| if b == b'.' { 0 } else { b })
                .collect();
            return self.get(&path);
        }
        let addr = match path {
            b"source\0address" => Some(self.source),
            b"destination\0address" => Some(self.destination),
            _ => None,
        };
        if let Some(addr) = addr {
            let addr = addr?;
            self.formatted.clear();
            let _ = write!(self.formatted, "{addr}");
            return Some(&self.formatted);
        }
        let fixed = match path {
            b"route_name" => Some(ROUTE),
            _ => FIXED.iter().position(|p| *p == path),
        };
        let at = match fixed {
            Some(i) => self.fixed[i]?,
            None => self.other.iter().find(|(k, _)| self.slice(*k) == path)?.1,
        };
        Some(self.slice(at))
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
        assert_eq!(t.get(b"route_name"), Some(&b"web"[..]));
        assert_eq!(t.get(b"request.method"), Some(&b"GET"[..]));
        assert_eq!(t.get(b"request\0nothing"), None);
        t.load(&StreamInfo::default());
        assert_eq!(t.get(b"request\0path"), None);
    }
}
