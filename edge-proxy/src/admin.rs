//! The admin listener (`listen.admin`): health for Kubernetes probes and
//! load balancers, on an address kept off the internet.
//!
//! - `GET /healthz`: 200 while the process serves (liveness).
//! - `GET /readyz`: 200 while it takes new visitors; 503 from the moment
//!   it starts draining (readiness), so a load balancer stops sending
//!   before connections are refused.
//!
//! A room of its own, used by `server`; uses nothing of the crate.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

/// What the probes report.
#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
}

impl Health {
    /// From now on, not ready (the edge is draining).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
    }
}

/// The Prometheus text exposition, made at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>, metrics: Render) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                debug!(error = %e, "admin listener: accept failed");
                continue;
            }
        };
        let (health, metrics) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let answer = answer(req.method(), req.uri().path(), &health, &metrics);
                async move { Ok::<_, Infallible>(answer) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
            if let Err(e) = served {
                debug!(error = %e, "admin connection ended");
            }
        });
    }
}

fn answer(method: &Method, path: &str, health: &Health, metrics: &Render) -> Response<Full<Bytes>> {
    if matches!(*method, Method::GET | Method::HEAD) && path == "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from(metrics())));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        return response;
    }
    let (status, body) = match (method, path) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") if health.ready() => (StatusCode::OK, "ready\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        (_, "/healthz" | "/readyz" | "/metrics") => {
            (StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n")
        }
        _ => (StatusCode::NOT_FOUND, "/healthz, /readyz or /metrics\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_until_draining_alive_throughout() {
        let health = Health::default();
        let metrics: Render = Arc::new(|| "edge_draining 0\n# EOF\n".into());
        let status = |m: &Method, p: &str| answer(m, p, &health, &metrics).status();
        assert_eq!(status(&Method::GET, "/healthz"), StatusCode::OK);
        assert_eq!(status(&Method::GET, "/readyz"), StatusCode::OK);
        assert_eq!(
            status(&Method::POST, "/readyz"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(status(&Method::GET, "/"), StatusCode::NOT_FOUND);
        health.drain();
        assert_eq!(
            status(&Method::HEAD, "/readyz"),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status(&Method::GET, "/healthz"), StatusCode::OK);
    }
}
