//! TLS to the edge: how the sidecar checks who it dials (the system roots
//! or a CA file, the server name, optionally a pinned public key), its own
//! client certificate for mutual TLS, and errors a user can act on.
//!
//! `https://` always means TLS. `http://` is plaintext, allowed for an edge
//! on loopback, or elsewhere only with `insecure_plaintext: true`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The sidecar YAML's `tls:` section (also built from `sidecar expose` flags).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeTlsOptions {
    /// PEM file of the CA(s) to trust for the edge instead of the system roots.
    pub ca: Option<String>,
    /// The old spelling of `ca`: refused with a pointer to the new one.
    #[doc(hidden)]
    pub ca_file: Option<serde::de::IgnoredAny>,
    /// The name checked in the edge's certificate (default: the host of `edge`).
    pub server_name: Option<String>,
    /// SHA-256 (hex) of the edge's public key (SPKI); any one matches.
    #[serde(default)]
    pub pin_sha256: Vec<String>,
    /// Client certificate chain and key, for clusters with mutual TLS.
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

/// How the sidecar reaches the edge.
#[derive(Clone)]
pub enum EdgeTransport {
    /// Plaintext HTTP/2. `warn`: the edge is not on loopback
    /// (`insecure_plaintext: true`), so every connect says so.
    Plaintext {
        warn: bool,
    },
    Tls(Arc<EdgeTls>),
}

/// A checked TLS setup for the edge.
pub struct EdgeTls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
    /// Where trust comes from, for error messages.
    pub trust: String,
}

impl std::fmt::Debug for EdgeTransport {
    // The config holds the client's private key: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EdgeTransport::Plaintext { warn } => write!(f, "Plaintext {{ warn: {warn} }}"),
            EdgeTransport::Tls(tls) => write!(
                f,
                "Tls {{ server_name: {:?}, trust: {:?} }}",
                tls.server_name, tls.trust
            ),
        }
    }
}

/// `host` of `scheme://host:port` names this machine.
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_matches(['[', ']']);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks the edge URL and builds the transport: every problem with its
/// YAML path.
pub fn edge_transport(
    edge: &str,
    options: EdgeTlsOptions,
    insecure_plaintext: bool,
) -> Result<EdgeTransport, Vec<String>> {
    let mut problems = Vec::new();
    let uri: Option<http::Uri> = edge.parse().ok();
    let host = uri
        .as_ref()
        .and_then(|u| u.host())
        .map(|h| h.trim_matches(['[', ']']).to_string());
    let scheme = uri.as_ref().and_then(|u| u.scheme_str()).unwrap_or("");
    let Some(host) = host.filter(|_| matches!(scheme, "http" | "https" | "ws" | "wss")) else {
        return Err(vec![format!(
            "edge: {edge:?} must be a URL such as https://edge.example.com:7000 (or wss://edge.example.com for the tunnel over a WebSocket)"
        )]);
    };
    if options.ca_file.is_some() {
        problems.push(
            "tls.ca_file: renamed to `ca`, as in targets[].tls.ca and the edge's clusters[].client_ca"
                .into(),
        );
    }
    let tls_set = options.ca.is_some()
        || options.server_name.is_some()
        || !options.pin_sha256.is_empty()
        || options.client_cert.is_some()
        || options.client_key.is_some();
    if scheme == "http" || scheme == "ws" {
        if tls_set {
            problems.push(format!(
                "tls: set, but edge {edge:?} is {scheme}:// (plaintext); write {scheme}s:// to use TLS"
            ));
        }
        let loopback = is_loopback(&host);
        if !loopback && !insecure_plaintext {
            problems.push(format!(
                "edge: {edge:?} is plaintext to a host that is not this machine: the token and all traffic would cross the network in clear; use https:// (or set insecure_plaintext: true)"
            ));
        }
        return if problems.is_empty() {
            Ok(EdgeTransport::Plaintext {
                warn: !loopback && insecure_plaintext,
            })
        } else {
            Err(problems)
        };
    }
    if insecure_plaintext {
        problems.push("insecure_plaintext: only meaningful with an http:// edge".into());
    }
    let server_name_text = options.server_name.clone().unwrap_or(host);
    let server_name = ServerName::try_from(server_name_text.clone())
        .map_err(|_| {
            problems.push(format!(
                "tls.server_name: {server_name_text:?} is not a DNS name or IP address"
            ))
        })
        .ok();
    let mut pins = Vec::new();
    for (i, pin) in options.pin_sha256.iter().enumerate() {
        let mut out = [0u8; 32];
        match hex::decode_to_slice(pin.trim(), &mut out) {
            Ok(()) => pins.push(out),
            Err(_) => problems.push(format!(
                "tls.pin_sha256[{i}]: expected 64 hex characters (the SHA-256 of the edge's public key: `edge-proxy spki-sha256 CERT`)"
            )),
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Pins alone (no CA file) authenticate the edge: for setups without a CA.
    let (roots, trust) = match (&options.ca, pins.is_empty()) {
        (Some(file), _) => match read_certs(file) {
            Ok(certs) => (Some(certs), format!("tls.ca {file}")),
            Err(e) => {
                problems.push(format!("tls.ca: {e}"));
                (None, String::new())
            }
        },
        (None, true) => {
            let native = rustls_native_certs::load_native_certs().unwrap_or_default();
            if native.is_empty() {
                problems.push(
                    "tls.ca: no system root certificates were found; name the CA that signed the edge's certificate"
                        .into(),
                );
            }
            (Some(native), "the system's root certificates".to_string())
        }
        (None, false) => (None, "tls.pin_sha256".to_string()),
    };
    let webpki = match roots {
        Some(certs) if !certs.is_empty() => {
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                problems.push(format!("{trust}: no usable CA certificate"));
                None
            } else {
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()
                    .map_err(|e| problems.push(format!("{trust}: {e}")))
                    .ok()
            }
        }
        _ => None,
    };
    let client_identity = match (&options.client_cert, &options.client_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let chain =
                read_certs(cert).map_err(|e| problems.push(format!("tls.client_cert: {e}")));
            // The key's parse error is not echoed: it would quote the file.
            let key = PrivateKeyDer::from_pem_file(key).map_err(|_| {
                problems.push(format!(
                    "tls.client_key: {key:?} is not a readable PEM private key"
                ))
            });
            match (chain, key) {
                (Ok(chain), Ok(key)) => Some((chain, key)),
                _ => None,
            }
        }
        _ => {
            problems.push("tls.client_cert, tls.client_key: set both or neither".into());
            None
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let verifier = Arc::new(EdgeVerifier {
        webpki,
        pins,
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            vec![format!(
                "tls.client_key: does not fit tls.client_cert ({e})"
            )]
        })?,
    };
    // A WebSocket starts as HTTP/1.1; HTTP/2 runs inside it.
    config.alpn_protocols = vec![if scheme == "wss" {
        b"http/1.1".to_vec()
    } else {
        b"h2".to_vec()
    }];
    Ok(EdgeTransport::Tls(Arc::new(EdgeTls {
        config: Arc::new(config),
        server_name: server_name.expect("checked"),
        trust,
    })))
}

fn read_certs(file: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("cannot read {file:?}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{file:?} is not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{file:?} contains no certificate"));
    }
    Ok(certs)
}

/// The SHA-256 of a certificate's public key (SPKI), as pinned.
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(Sha256::digest(cert.subject_public_key_info().as_ref()).into())
}

/// Checks the edge's certificate: the CA chain and name (unless only pins
/// are configured), then the pins (if any).
#[derive(Debug)]
struct EdgeVerifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    pins: Vec<[u8; 32]>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// What a failed pin check says (the edge's key hash is public; it helps
/// compare with the configured pin).
const PIN_MISMATCH: &str = "the edge's public key does not match tls.pin_sha256";

impl ServerCertVerifier for EdgeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(webpki) = &self.webpki {
            webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            )?;
        }
        if !self.pins.is_empty() {
            let actual = spki_sha256(end_entity).ok_or(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ))?;
            if !self.pins.contains(&actual) {
                return Err(rustls::Error::General(format!(
                    "{PIN_MISMATCH} (the edge's key is {})",
                    hex::encode(actual)
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Turns a failed TLS handshake into what the user should do about it.
pub fn explain(error: &std::io::Error, tls: &EdgeTls) -> String {
    let name = match &tls.server_name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    };
    let Some(rustls_error) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => format!(
                "the edge closed the connection during the TLS handshake ({error}); if its tunnel port is plaintext, the edge URL must be http://"
            ),
            _ => format!("TLS handshake with the edge failed: {error}"),
        };
    };
    use rustls::Error as E;
    match rustls_error {
        E::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the edge's certificate is not signed by a CA this sidecar trusts ({}); set tls.ca to the CA that signed it",
                tls.trust
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "the edge's certificate is not valid for {name:?} (set tls.server_name if the edge is reached under another name)"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the edge's certificate has expired".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the edge's certificate is not valid yet (check the clocks)".to_string()
            }
            other => format!("the edge's certificate was refused: {other:?}"),
        },
        E::General(message) if message.starts_with(PIN_MISMATCH) => message.clone(),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            "the edge did not answer with TLS: its tunnel port seems to be plaintext; the edge URL must then be http:// (or turn on tunnel.tls at the edge)".to_string()
        }
        E::AlertReceived(alert) => {
            use rustls::AlertDescription as A;
            match alert {
                A::CertificateRequired | A::BadCertificate | A::UnknownCA | A::CertificateExpired
                | A::CertificateRevoked | A::CertificateUnknown | A::AccessDenied => format!(
                    "the edge refused this sidecar's client certificate ({alert:?}); check tls.client_cert and the cluster's client_ca"
                ),
                A::UnrecognisedName => format!("the edge has no certificate for {name:?}"),
                other => format!("the edge ended the TLS handshake: {other:?}"),
            }
        }
        other => format!("TLS handshake with the edge failed: {other}"),
    }
}
