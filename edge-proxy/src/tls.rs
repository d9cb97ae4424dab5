//! TLS for visitors and for the tunnel listener: certificates from PEM
//! files, chosen by SNI; sidecars' client certificates (mutual TLS).
//!
//! Each certificate serves the DNS names in its subject alternative names,
//! exact (`shop.example.com`) or wildcard (`*.preview.example.com`, one
//! label, as RFC 6125 says). A name no certificate covers gets the default
//! certificate (the first listed) or no handshake at all, as configured.
//! The store sits behind an `ArcSwap` so a reload replaces certificates
//! without touching connections.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};

/// A certificate with the names it serves.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// DNS names from the SANs, lowercase (`*.example.com` for wildcards).
    pub names: Vec<String>,
    /// Seconds since the epoch after which the certificate is invalid.
    pub not_after: i64,
}

/// Loads a certificate chain and its private key; checks they match.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<LoadedCert, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "{} is not a PEM certificate chain: {e}",
                cert_path.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!("{} contains no certificate", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("cannot read private key {}: {e}", key_path.display()))?;
    let provider = provider();
    let key = CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!(
                "the key {} does not belong to the certificate {}",
                key_path.display(),
                cert_path.display()
            )
        }
        e => format!("cannot use {}: {e}", key_path.display()),
    })?;
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| format!("cannot parse {}: {e}", cert_path.display()))?;
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        // Old-style certificates: the subject's common name.
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(LoadedCert {
        key: Arc::new(key),
        names,
        not_after: cert.validity().not_after.timestamp(),
    })
}

pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Certificates by name.
#[derive(Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Earlier certificates win when two serve the same name. `fallback`
    /// makes the first certificate answer names no certificate covers.
    pub fn new(certs: &[LoadedCert], fallback: bool) -> Self {
        let mut store = Self::default();
        for cert in certs {
            for name in &cert.names {
                let map = match name.strip_prefix("*.") {
                    Some(parent) => store.wildcard.entry(parent.to_string()),
                    None => store.exact.entry(name.clone()),
                };
                map.or_insert_with(|| cert.key.clone());
            }
        }
        store.default = fallback
            .then(|| certs.first().map(|c| c.key.clone()))
            .flatten();
        store
    }

    pub fn find(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = server_name
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .and_then(|name| {
                self.exact
                    .get(&name)
                    .or_else(|| {
                        let (_, parent) = name.split_once('.')?;
                        self.wildcard.get(parent)
                    })
                    .cloned()
            });
        found.or_else(|| self.default.clone())
    }
}

/// The rustls hook: SNI → certificate, from a swappable store.
#[derive(Debug, Default)]
pub struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl SniResolver {
    pub fn replace(&self, store: CertStore) {
        self.store.store(Arc::new(store));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.load().find(hello.server_name())
    }
}

/// A rustls server config: TLS 1.2 and 1.3, ALPN h2 then http/1.1,
/// certificates from `resolver`.
pub fn server_config(resolver: Arc<SniResolver>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The name a visitor asked for in its TLS handshake (SNI), kept with the
/// connection's TLS digest for the requests that come on it.
#[derive(Debug)]
pub struct ServerName(pub Box<str>);

/// Records each visitor handshake's SNI (Pingora stores what this returns
/// in the connection's `SslDigest`, HTTP/1 and HTTP/2 alike).
pub struct RecordServerName;

#[async_trait::async_trait]
impl pingora_core::listeners::TlsAccept for RecordServerName {
    async fn handshake_complete_callback(
        &self,
        tls: &pingora_core::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let name = tls.server_name()?;
        Some(Arc::new(ServerName(name.into())))
    }
}

/// The SNI of the TLS connection `digest` describes, if it sent one.
pub fn server_name(digest: &pingora_core::protocols::tls::SslDigest) -> Option<&str> {
    digest.extension.get::<ServerName>().map(|n| &*n.0)
}

/// A rustls config for the tunnel listener: TLS 1.2 and 1.3, ALPN `h2`
/// only (the tunnel is gRPC), certificates from `resolver`, client
/// certificates offered to [`TunnelClientAuth`].
pub fn tunnel_server_config(
    resolver: Arc<SniResolver>,
    client_auth: Arc<TunnelClientAuth>,
) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_client_cert_verifier(client_auth)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// What the tunnel listener's TLS is made of; swapped on reload.
#[derive(Debug, Default)]
pub struct TunnelTlsState {
    pub certificates: Arc<SniResolver>,
    pub client_auth: Arc<TunnelClientAuth>,
}

/// The CA a cluster's sidecar client certificates must chain to.
#[derive(Debug, Clone)]
pub struct ClientCa {
    /// The PEM file, watched for changes.
    pub file: std::path::PathBuf,
    roots: Vec<CertificateDer<'static>>,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ClientCa {
    pub fn load(file: &Path) -> Result<Self, String> {
        let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{} is not a PEM certificate file: {e}", file.display()))?;
        let verifier = client_verifier(&roots)
            .map_err(|e| format!("{} holds no usable CA certificate: {e}", file.display()))?;
        Ok(Self {
            file: file.to_path_buf(),
            roots,
            verifier,
        })
    }

    /// Checks that `chain` (end entity first) was issued under this CA and
    /// is valid now.
    pub fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let (end_entity, intermediates) = chain
            .split_first()
            .ok_or("no client certificate was presented")?;
        self.verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

fn client_verifier(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(|e| e.to_string())?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(store), Arc::new(provider()))
        .allow_unauthenticated()
        .build()
        .map_err(|e| e.to_string())
}

/// Client certificates on the tunnel listener. The handshake accepts a
/// certificate from any cluster's CA (or none: clusters without mutual
/// TLS); which cluster's CA it must come from is known only once the
/// sidecar's token names its cluster, so the tunnel service checks that
/// ([`ClientCa::verify`]). Swapped on reload.
#[derive(Debug, Default)]
pub struct TunnelClientAuth {
    any_cluster: ArcSwap<Option<Arc<dyn ClientCertVerifier>>>,
}

impl TunnelClientAuth {
    /// Accept certificates of these CAs from now on.
    pub fn replace<'a>(&self, cas: impl IntoIterator<Item = &'a ClientCa>) {
        let roots: Vec<_> = cas.into_iter().flat_map(|ca| ca.roots.clone()).collect();
        let verifier = (!roots.is_empty())
            .then(|| client_verifier(&roots).ok())
            .flatten();
        self.any_cluster.store(Arc::new(verifier));
    }
}

impl ClientCertVerifier for TunnelClientAuth {
    fn offer_client_auth(&self) -> bool {
        self.any_cluster.load().is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match &**self.any_cluster.load() {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(
                "no cluster accepts client certificates".into(),
            )),
        }
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
            &provider().signature_verification_algorithms,
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
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The SHA-256 (hex) of the public key (SPKI) of the first certificate in
/// a PEM file: what a sidecar pins with `tls.pin_sha256`.
pub fn spki_sha256(cert_path: &Path) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    let cert = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("cannot read {}: {e}", cert_path.display()))?
        .next()
        .ok_or_else(|| format!("{} contains no certificate", cert_path.display()))?
        .map_err(|e| format!("{} is not a PEM certificate: {e}", cert_path.display()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
        .map_err(|e| format!("cannot parse {}: {e}", cert_path.display()))?;
    Ok(hex::encode(Sha256::digest(parsed.public_key().raw)))
}
