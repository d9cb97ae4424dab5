//! How the edge speaks HTTP to a service through a data stream: HTTP/1.1,
//! HTTP/2 with prior knowledge (h2c), or TLS (HTTP/2 or HTTP/1.1 by ALPN).
//!
//! The sidecar only moves bytes, so with TLS the edge's session reaches the
//! service end to end. A service's protocol comes from the sidecar's
//! registration, or from a custom-domain rule that overrides it.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{parse_x509, WrappedX509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tunnel_proto::{UpstreamProtocol, UpstreamTls};

/// Concurrent requests on one HTTP/2 connection to a service.
pub const MAX_H2_STREAMS: usize = 128;

#[derive(Clone, Default)]
pub enum Protocol {
    #[default]
    Http1,
    H2c,
    Tls(Arc<TlsUpstream>),
    /// Raw TCP: only a WebSocket at [`TCP_PATH`] reaches it, answered by
    /// the sidecar, whose binary messages are the connection's bytes.
    Tcp,
}

pub use tunnel_transport::websocket::TCP_PATH;

/// How the edge checks a service's certificate.
#[derive(Clone)]
pub struct TlsUpstream {
    /// Sent as SNI and checked against the certificate.
    pub server_name: String,
    /// Roots to trust instead of the system's.
    pub ca: Option<Arc<[WrappedX509]>>,
    pub verify: bool,
    /// Hash of `ca`'s certificates, computed once: pooled connections are
    /// reused only under the roots they were verified with (Pingora's own
    /// reuse hash covers the name and the verify flags, not the roots).
    ca_hash: u64,
}

impl TlsUpstream {
    pub fn new(server_name: String, ca: Option<Arc<[WrappedX509]>>, verify: bool) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for cert in ca.iter().flat_map(|c| c.iter()) {
            cert.borrow_raw_cert().hash(&mut h);
        }
        Self {
            server_name,
            ca,
            verify,
            ca_hash: h.finish(),
        }
    }
}

/// Identifies what a pooled connection to a service was set up with.
impl Hash for Protocol {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        if let Protocol::Tls(tls) = self {
            tls.server_name.hash(state);
            tls.verify.hash(state);
            tls.ca.is_some().hash(state);
            tls.ca_hash.hash(state);
        }
    }
}

impl std::fmt::Debug for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protocol::Http1 => f.write_str("http1"),
            Protocol::H2c => f.write_str("h2c"),
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Tls(t) => write!(
                f,
                "tls(server_name={:?}, own_ca={}, verify={})",
                t.server_name,
                t.ca.is_some(),
                t.verify
            ),
        }
    }
}

impl Protocol {
    /// The protocol a sidecar registered for one of its routes.
    pub fn from_registration(
        protocol: i32,
        tls: Option<&UpstreamTls>,
        service: &str,
    ) -> Result<Self, String> {
        match UpstreamProtocol::try_from(protocol) {
            Ok(UpstreamProtocol::Http1) => Ok(Protocol::Http1),
            Ok(UpstreamProtocol::H2c) => Ok(Protocol::H2c),
            Ok(UpstreamProtocol::Tcp) => Ok(Protocol::Tcp),
            Ok(UpstreamProtocol::Tls) => {
                let tls = tls.cloned().unwrap_or_default();
                let ca = if tls.ca_pem.is_empty() {
                    None
                } else {
                    Some(parse_ca(&tls.ca_pem)?)
                };
                let server_name = if tls.server_name.is_empty() {
                    service.to_string()
                } else {
                    tls.server_name
                };
                Ok(Protocol::Tls(Arc::new(TlsUpstream::new(
                    server_name,
                    ca,
                    !tls.insecure_skip_verify,
                ))))
            }
            Err(_) => Err(format!("unknown upstream protocol {protocol}")),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Protocol::Tls(_))
    }

    /// Sets the peer's protocol options. `upgrade`: the request asks for a
    /// protocol upgrade (WebSocket), which needs HTTP/1.1.
    pub fn configure(&self, peer: &mut HttpPeer, upgrade: bool) {
        let options = &mut peer.options;
        match self {
            Protocol::Http1 | Protocol::Tcp => options.alpn = ALPN::H1,
            Protocol::H2c => {
                options.alpn = ALPN::H2;
                options.max_h2_streams = MAX_H2_STREAMS;
                // HTTP/2 PINGs notice a dead service on an idle connection.
                options.h2_ping_interval = Some(Duration::from_secs(30));
            }
            Protocol::Tls(tls) => {
                options.alpn = if upgrade { ALPN::H1 } else { ALPN::H2H1 };
                options.max_h2_streams = MAX_H2_STREAMS;
                options.verify_cert = tls.verify;
                options.verify_hostname = tls.verify;
                options.ca = tls.ca.clone();
                peer.sni = tls.server_name.clone();
            }
        }
    }
}

/// PEM certificates → roots for one peer.
pub fn parse_ca(pem: &[u8]) -> Result<Arc<[WrappedX509]>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the CA is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("the CA file holds no certificate".into());
    }
    certs
        .into_iter()
        .map(|der| {
            // `parse_x509` panics on bad DER: check first.
            x509_parser::parse_x509_certificate(&der)
                .map_err(|e| format!("the CA holds an invalid certificate: {e}"))?;
            Ok(WrappedX509::new(der.to_vec(), parse_x509))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_become_protocols() {
        let h2c = Protocol::from_registration(UpstreamProtocol::H2c as i32, None, "api").unwrap();
        assert!(matches!(h2c, Protocol::H2c));
        let tls =
            Protocol::from_registration(UpstreamProtocol::Tls as i32, None, "api.svc").unwrap();
        let Protocol::Tls(t) = tls else { panic!("tls") };
        assert_eq!(t.server_name, "api.svc");
        assert!(t.verify && t.ca.is_none());
        assert!(Protocol::from_registration(99, None, "x").is_err());
        let bad_ca = UpstreamTls {
            ca_pem: "not pem".into(),
            ..Default::default()
        };
        assert!(
            Protocol::from_registration(UpstreamProtocol::Tls as i32, Some(&bad_ca), "x").is_err()
        );
    }

    fn pool_hash(p: &Protocol) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        p.hash(&mut h);
        h.finish()
    }

    #[test]
    fn connections_set_up_differently_hash_apart() {
        let ca = |name: &str| {
            let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
            Some(parse_ca(cert.cert.pem().as_bytes()).unwrap())
        };
        let tls = |ca, verify| Protocol::Tls(Arc::new(TlsUpstream::new("api".into(), ca, verify)));
        let kinds = [
            Protocol::Http1,
            Protocol::H2c,
            tls(None, true),
            tls(None, false),
            tls(ca("a.example"), true),
            tls(ca("b.example"), true),
        ];
        let hashes: std::collections::HashSet<u64> = kinds.iter().map(pool_hash).collect();
        assert_eq!(hashes.len(), kinds.len());
        // The same settings, registered twice, share connections.
        assert_eq!(pool_hash(&tls(None, true)), pool_hash(&tls(None, true)));
    }

    #[test]
    fn peers_speak_the_protocol() {
        let mut peer = HttpPeer::new(("127.0.0.1", 1), false, String::new());
        Protocol::H2c.configure(&mut peer, false);
        assert_eq!(peer.options.alpn, ALPN::H2);
        let tls = Protocol::Tls(Arc::new(TlsUpstream::new("api.svc".into(), None, false)));
        let mut peer = HttpPeer::new(("127.0.0.1", 1), true, String::new());
        tls.configure(&mut peer, true);
        assert_eq!(peer.options.alpn, ALPN::H1);
        assert_eq!(peer.sni, "api.svc");
        assert!(!peer.options.verify_cert);
    }
}
