//! The admin listener (`listen.admin`), kept off the internet.
//!
//! - `GET /healthz`: 200 while the process serves (liveness).
//! - `GET /readyz`: 200 while it takes new visitors; 503 from the moment
//!   it starts draining (readiness), so a load balancer stops sending
//!   before connections are refused.
//! - `GET /metrics`: Prometheus metrics.
//! - `/api/…`: the admin API ([`Api`]), with `Authorization: Bearer` and
//!   a token whose SHA-256 is in `admin.token_sha256`; off (404) without.
//!
//! HTTP only: what the edge exposes comes through [`Api`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use telemetry::admin::{probes, respond, text};
use tokio::net::TcpListener;
use tracing::info;

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

/// Whether a request may use the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No `admin.token_sha256` in the config: the API is off.
    Off,
    Denied,
    Granted,
}

/// What the admin listener shows and does.
pub trait Api: Send + Sync + 'static {
    /// Checks the `Authorization` header's value (`None`: none sent).
    fn access(&self, authorization: Option<&str>) -> Access;
    /// The Prometheus text exposition.
    fn metrics(&self) -> String;
    /// `GET /api/tunnels`.
    fn tunnels(&self) -> Value;
    /// `GET /api/routes`.
    fn routes(&self) -> Value;
    /// `GET /api/config`.
    fn config(&self) -> Value;
    /// `POST /api/tunnels/{id}/drain`: `false` if there is no such tunnel.
    fn drain(&self, id: &str) -> bool;
}

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>, api: Arc<dyn Api>) {
    let handler = Arc::new(move |method: &Method, path: &str, headers: &HeaderMap| {
        answer(method, path, headers, &health, &*api)
    });
    telemetry::admin::serve(listener, handler).await
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(&body).expect("JSON values serialize");
    body.push(b'\n');
    respond(status, "application/json", Bytes::from(body))
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, json!({ "error": message }))
}

fn answer(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    health: &Health,
    api: &dyn Api,
) -> Response<Full<Bytes>> {
    if let Some(answer) = probes(method, path, || health.ready(), || api.metrics()) {
        return answer;
    }
    match path {
        _ if path.starts_with("/api/") => {
            let authorization = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match api.access(authorization) {
                Access::Off => error(
                    StatusCode::NOT_FOUND,
                    "the admin API is off: set admin.token_sha256 in the edge's config",
                ),
                Access::Denied => {
                    let mut refused = error(
                        StatusCode::UNAUTHORIZED,
                        "an admin token is needed: Authorization: Bearer <token>",
                    );
                    refused.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static("Bearer realm=\"edge admin\""),
                    );
                    refused
                }
                Access::Granted => api_call(method, &path["/api".len()..], api),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "/healthz, /readyz, /metrics or /api/{tunnels,routes,config}\n",
        ),
    }
}

fn api_call(method: &Method, path: &str, api: &dyn Api) -> Response<Full<Bytes>> {
    let read = matches!(*method, Method::GET | Method::HEAD);
    let drain_id = path
        .strip_prefix("/tunnels/")
        .and_then(|rest| rest.strip_suffix("/drain"));
    match (path, drain_id) {
        ("/tunnels", _) if read => json_response(StatusCode::OK, api.tunnels()),
        ("/routes", _) if read => json_response(StatusCode::OK, api.routes()),
        ("/config", _) if read => json_response(StatusCode::OK, api.config()),
        (_, Some(id)) if *method == Method::POST => {
            if api.drain(id) {
                info!(session = id, "tunnel drained by the admin API");
                json_response(StatusCode::ACCEPTED, json!({ "draining": id }))
            } else {
                error(StatusCode::NOT_FOUND, "no tunnel session with this id")
            }
        }
        ("/tunnels" | "/routes" | "/config", _) | (_, Some(_)) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "wrong method for this path")
        }
        _ => error(StatusCode::NOT_FOUND, "no such admin API path"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    impl Api for Fake {
        fn access(&self, authorization: Option<&str>) -> Access {
            match authorization {
                Some("Bearer right") => Access::Granted,
                _ => Access::Denied,
            }
        }
        fn metrics(&self) -> String {
            "edge_draining 0\n# EOF\n".into()
        }
        fn tunnels(&self) -> Value {
            json!([])
        }
        fn routes(&self) -> Value {
            json!([])
        }
        fn config(&self) -> Value {
            json!({})
        }
        fn drain(&self, id: &str) -> bool {
            id == "s1"
        }
    }

    fn status(health: &Health, m: Method, p: &str, token: Option<&str>) -> StatusCode {
        let mut headers = HeaderMap::new();
        if let Some(t) = token {
            headers.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
        }
        answer(&m, p, &headers, health, &Fake).status()
    }

    #[test]
    fn ready_until_draining_alive_throughout() {
        let health = Health::default();
        let s = |m: Method, p: &str| status(&health, m, p, None);
        assert_eq!(s(Method::GET, "/healthz"), StatusCode::OK);
        assert_eq!(s(Method::GET, "/readyz"), StatusCode::OK);
        assert_eq!(s(Method::GET, "/metrics"), StatusCode::OK);
        assert_eq!(s(Method::POST, "/readyz"), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(s(Method::GET, "/"), StatusCode::NOT_FOUND);
        health.drain();
        assert_eq!(s(Method::HEAD, "/readyz"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(s(Method::GET, "/healthz"), StatusCode::OK);
    }

    #[test]
    fn the_api_wants_its_token_and_the_right_method() {
        let health = Health::default();
        let s = |m: Method, p: &str, t: Option<&str>| status(&health, m, p, t);
        assert_eq!(
            s(Method::GET, "/api/tunnels", None),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            s(Method::GET, "/api/tunnels", Some("wrong")),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            s(Method::GET, "/api/tunnels", Some("right")),
            StatusCode::OK
        );
        assert_eq!(s(Method::GET, "/api/routes", Some("right")), StatusCode::OK);
        assert_eq!(s(Method::GET, "/api/config", Some("right")), StatusCode::OK);
        assert_eq!(
            s(Method::POST, "/api/tunnels/s1/drain", Some("right")),
            StatusCode::ACCEPTED
        );
        assert_eq!(
            s(Method::POST, "/api/tunnels/nope/drain", Some("right")),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            s(Method::GET, "/api/tunnels/s1/drain", Some("right")),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            s(Method::DELETE, "/api/tunnels", Some("right")),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            s(Method::GET, "/api/nothing", Some("right")),
            StatusCode::NOT_FOUND
        );
    }
}
