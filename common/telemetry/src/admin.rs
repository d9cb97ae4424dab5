//! The admin listener both binaries serve (`listen.admin` at the edge,
//! `admin` at the sidecar): a small HTTP/1.1 server for probes and
//! Prometheus, kept off the internet. Each binary answers its own paths
//! ([`Handler`]); the probes and metrics answer alike ([`probes`]).

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tokio::net::TcpListener;
use tracing::debug;

/// A request's method, path and headers → its response.
pub type Handler =
    Arc<dyn Fn(&Method, &str, &HeaderMap) -> Response<Full<Bytes>> + Send + Sync + 'static>;

/// The OpenMetrics text format's content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Prometheus text exposition of what `collector` reports (read at
/// each scrape).
pub fn exposition(collector: impl prometheus_client::collector::Collector) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(collector));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// A counter family from `(labels, value)` pairs.
pub fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge family from `(labels, value)` pairs.
pub fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Vec<(&'static str, String)>, i64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Serves `listener` with `handler` until the task is dropped.
pub async fn serve(listener: TcpListener, handler: Handler) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                debug!(error = %e, "admin listener: accept failed");
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let answer = handler(req.method(), req.uri().path(), req.headers());
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

/// A response that is never cached.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

/// `GET /healthz` (200 while the process serves), `GET /readyz` (200 when
/// `ready`, else 503) and `GET /metrics` (`metrics()`, made only then);
/// `None` for any other path.
pub fn probes(
    method: &Method,
    path: &str,
    ready: impl FnOnce() -> bool,
    metrics: impl FnOnce() -> String,
) -> Option<Response<Full<Bytes>>> {
    let read = matches!(*method, Method::GET | Method::HEAD);
    Some(match path {
        "/healthz" if read => text(StatusCode::OK, "ok\n"),
        "/readyz" if read => match ready() {
            true => text(StatusCode::OK, "ready\n"),
            false => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        },
        "/metrics" if read => respond(StatusCode::OK, OPENMETRICS, Bytes::from(metrics())),
        "/healthz" | "/readyz" | "/metrics" => {
            text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n")
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_answer_reads_of_their_paths_only() {
        let status = |m: Method, p: &str, ready: bool| {
            probes(&m, p, || ready, || "# EOF\n".into()).map(|r| r.status())
        };
        assert_eq!(status(Method::GET, "/healthz", false), Some(StatusCode::OK));
        assert_eq!(status(Method::GET, "/readyz", true), Some(StatusCode::OK));
        assert_eq!(
            status(Method::HEAD, "/readyz", false),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(status(Method::GET, "/metrics", false), Some(StatusCode::OK));
        assert_eq!(
            status(Method::POST, "/metrics", true),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(status(Method::GET, "/api", true), None);
    }
}
