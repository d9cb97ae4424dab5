//! `sidecar webhook`: the mutating admission webhook that injects the
//! sidecar ([`crate::inject`]), served over HTTPS as the API server wants.
//! The certificate and key are read again when their files change (as
//! cert-manager rotates a mounted Secret), looked at no more than once a
//! second, on new connections; a pair that does not load keeps the last
//! good one serving and is logged.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::inject::{self, Injection};

/// The path the webhook configuration names.
pub const PATH: &str = "/inject";
/// Largest review read (a pod with a large spec is tens of KiB).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// How often the certificate files are looked at, at most.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The certificate and key, from files read again when they change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    modified: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ReloadingCert {
    /// Loads the pair now: a pair that does not load is an error at start.
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Self, String> {
        let loaded = Loaded {
            key: Arc::new(load(&cert, &key)?),
            modified: (modified(&cert), modified(&key)),
            checked: Instant::now(),
        };
        Ok(Self {
            cert,
            key,
            state: Mutex::new(loaded),
        })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = Instant::now();
            let now = (modified(&self.cert), modified(&self.key));
            if now != state.modified {
                state.modified = now;
                match load(&self.cert, &self.key) {
                    Ok(key) => {
                        info!(cert = %self.cert.display(), "webhook certificate reloaded");
                        state.key = Arc::new(key);
                    }
                    Err(e) => {
                        warn!(error = %e, "webhook certificate changed but does not load; serving the previous one")
                    }
                }
            }
        }
        state.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn load(cert: &PathBuf, key: &PathBuf) -> Result<CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|_| format!("{}: not a readable PEM private key", key.display()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| format!("{} and its key do not match: {e}", cert.display()))?;
    Ok(certified)
}

/// Serves the webhook on `listener` until the task ends: `POST /inject`
/// with an `AdmissionReview`.
pub async fn serve(listener: TcpListener, cert: ReloadingCert, injection: Injection) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(cert));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let injection = Arc::new(injection);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "webhook: accept failed");
                continue;
            }
        };
        let (acceptor, injection) = (acceptor.clone(), injection.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return info!(%peer, error = %e, "webhook TLS handshake failed"),
                Err(_) => return info!(%peer, "webhook TLS handshake timed out"),
            };
            let service = service_fn(move |req| {
                let injection = injection.clone();
                async move { Ok::<_, Infallible>(answer(req, &injection).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

async fn answer(req: Request<Incoming>, injection: &Injection) -> Response<Full<Bytes>> {
    let text = |status, message: String| {
        reply(
            status,
            "text/plain; charset=utf-8",
            (message + "\n").into_bytes(),
        )
    };
    if req.uri().path() != PATH {
        return text(
            StatusCode::NOT_FOUND,
            format!("the webhook answers POST {PATH}"),
        );
    }
    if req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("the webhook answers POST {PATH}"),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("the review could not be read: {e}"),
            )
        }
    };
    match inject::review(&body, injection) {
        Ok(review) => reply(StatusCode::OK, "application/json", review),
        Err(problem) => {
            info!(%problem, "webhook: refused a request");
            text(StatusCode::BAD_REQUEST, problem)
        }
    }
}
