//! A small Kubernetes API server: the list and watch endpoints of
//! namespaced Services and Ingresses, and the Ingress status subresource.
//! No kube-apiserver can be installed on these machines, so route
//! discovery is tested against this, speaking the same wire protocol:
//!
//! - `GET …/services` lists with the collection's `resourceVersion`;
//!   `?watch=true&resourceVersion=N` streams the events after `N` (JSON
//!   lines: `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR`), then
//!   the new ones as they happen.
//! - A watch from a version older than the kept history gets the
//!   `ERROR` event with status `410 Gone`, as the real server answers; so
//!   does every open watch when the test calls [`KubeApi::expire`].
//! - [`KubeApi::drop_watches`] cuts every watch connection without a word.
//! - `PATCH …/ingresses/NAME/status` (merge patch) changes only `status`.
//!
//! Objects go in as JSON (tests serialize `k8s-openapi` types); the server
//! sets `resourceVersion` and `uid`. It runs on a thread of its own and
//! records each request (`list ingresses`, `watch services from 7`) for
//! tests to check what the client did.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// The kinds this server knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Service,
    Ingress,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::Ingress => "ingresses",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::Service => "v1",
            Kind::Ingress => "networking.k8s.io/v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Ingress => "Ingress",
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

#[derive(Default)]
struct State {
    revision: u64,
    objects: BTreeMap<(Kind, String), Value>,
    /// Events after `compacted`, oldest first.
    history: Vec<(u64, Kind, Value)>,
    /// Versions up to this one are forgotten: a watch from them gets 410.
    compacted: u64,
    watches: Vec<(Kind, mpsc::UnboundedSender<Bytes>)>,
    requests: Vec<String>,
}

impl State {
    fn record(&mut self, kind: Kind, event: &str, object: Value) {
        let line = json!({ "type": event, "object": object });
        self.history.push((self.revision, kind, line.clone()));
        let bytes = Bytes::from(format!("{line}\n"));
        self.watches
            .retain(|(k, tx)| *k != kind || tx.send(bytes.clone()).is_ok());
    }

    fn stamp(&mut self, kind: Kind, mut object: Value) -> Value {
        self.revision += 1;
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let previous = self.objects.get(&(kind, name.clone()));
        let uid = previous
            .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("uid-{}", self.revision));
        object["apiVersion"] = kind.api_version().into();
        object["kind"] = kind.kind().into();
        let metadata = &mut object["metadata"];
        metadata["resourceVersion"] = self.revision.to_string().into();
        metadata["uid"] = uid.into();
        object
    }
}

/// A running API server on `127.0.0.1`; stops when dropped.
pub struct KubeApi {
    pub addr: SocketAddr,
    pub namespace: String,
    state: Arc<Mutex<State>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl KubeApi {
    /// A server for `namespace`'s objects.
    pub fn start(namespace: &str) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let (addr, stop) = crate::background::accept_on_thread(move |socket| {
            let state = shared.clone();
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            async move {
                let io = hyper_util::rt::TokioIo::new(socket);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            }
        });
        Self {
            addr,
            namespace: namespace.into(),
            state,
            _stop: stop,
        }
    }

    /// Creates or replaces an object (its `metadata.name` names it).
    pub fn apply(&self, kind: Kind, object: Value) {
        let mut state = self.state.lock().unwrap();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        let existed = state.objects.contains_key(&(kind, name.clone()));
        let mut object = state.stamp(kind, object);
        object["metadata"]["namespace"] = self.namespace.clone().into();
        state.objects.insert((kind, name), object.clone());
        state.record(kind, if existed { "MODIFIED" } else { "ADDED" }, object);
    }

    /// Deletes an object, if it is there.
    pub fn delete(&self, kind: Kind, name: &str) {
        let mut state = self.state.lock().unwrap();
        if let Some(object) = state.objects.remove(&(kind, name.to_string())) {
            let object = state.stamp(kind, object);
            state.record(kind, "DELETED", object);
        }
    }

    /// An object as the server has it now.
    pub fn get(&self, kind: Kind, name: &str) -> Option<Value> {
        let state = self.state.lock().unwrap();
        state.objects.get(&(kind, name.to_string())).cloned()
    }

    /// Forgets the history up to now and ends every open watch with
    /// `410 Gone`: clients must list again.
    pub fn expire(&self) {
        let mut state = self.state.lock().unwrap();
        state.compacted = state.revision;
        state.history.clear();
        let gone = Bytes::from(format!("{}\n", gone_event()));
        for (_, watch) in state.watches.drain(..) {
            let _ = watch.send(gone.clone());
        }
    }

    /// Cuts every open watch connection (a load balancer's idle timeout,
    /// a restarting API server): clients resume from their last version.
    pub fn drop_watches(&self) {
        self.state.lock().unwrap().watches.clear();
    }

    /// The latest resource version.
    pub fn revision(&self) -> u64 {
        self.state.lock().unwrap().revision
    }

    /// Sends every open watch a bookmark at the current version.
    pub fn bookmark(&self) {
        let state = self.state.lock().unwrap();
        let revision = state.revision.to_string();
        for (kind, watch) in &state.watches {
            let object = json!({
                "apiVersion": kind.api_version(), "kind": kind.kind(),
                "metadata": { "resourceVersion": revision },
            });
            let line = json!({ "type": "BOOKMARK", "object": object });
            let _ = watch.send(Bytes::from(format!("{line}\n")));
        }
    }

    /// The requests served so far: `list ingresses`, `watch services from 7`,
    /// `patch ingress web status`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// A kubeconfig that points at this server, with its namespace.
    pub fn write_kubeconfig(&self, path: &Path) {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: {}\ncurrent-context: test\n",
            self.addr, self.namespace
        );
        std::fs::write(path, yaml).unwrap();
    }
}

fn gone_event() -> Value {
    json!({
        "type": "ERROR",
        "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410,
        },
    })
}

fn respond(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn status(code: StatusCode, message: &str) -> Response<Body> {
    respond(
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "code": code.as_u16(),
        }),
    )
}

/// `/api/v1/namespaces/NS/services[/NAME[/status]]` or the Ingress one.
fn route(path: &str) -> Option<(Kind, Option<&str>, bool)> {
    let rest = path
        .strip_prefix("/api/v1/namespaces/")
        .or_else(|| path.strip_prefix("/apis/networking.k8s.io/v1/namespaces/"))?;
    let mut parts = rest.split('/').skip(1);
    let kind = match parts.next()? {
        "services" => Kind::Service,
        "ingresses" => Kind::Ingress,
        _ => return None,
    };
    let name = parts.next();
    let status = parts.next() == Some("status");
    Some((kind, name, status))
}

async fn handle(state: &Arc<Mutex<State>>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let Some((kind, name, subresource)) = route(req.uri().path()) else {
        return status(StatusCode::NOT_FOUND, "no such resource here");
    };
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match (req.method().clone(), name) {
        (Method::GET, None)
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            let from: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            watch(state, kind, from)
        }
        (Method::GET, None) => {
            let mut state = state.lock().unwrap();
            state.requests.push(format!("list {}", kind.plural()));
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((k, _), _)| *k == kind)
                .map(|(_, o)| o.clone())
                .collect();
            respond(
                StatusCode::OK,
                json!({
                    "apiVersion": kind.api_version(), "kind": format!("{}List", kind.kind()),
                    "metadata": { "resourceVersion": state.revision.to_string() },
                    "items": items,
                }),
            )
        }
        (Method::PATCH, Some(name)) if subresource && kind == Kind::Ingress => {
            let name = name.to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return status(StatusCode::BAD_REQUEST, "the patch is not JSON");
            };
            let mut state = state.lock().unwrap();
            state.requests.push(format!("patch ingress {name} status"));
            let Some(mut object) = state.objects.get(&(kind, name.clone())).cloned() else {
                return status(StatusCode::NOT_FOUND, "no such ingress");
            };
            // The status subresource changes status only.
            let mut status_now = object["status"].take();
            json_patch::merge(&mut status_now, &patch["status"]);
            object["status"] = status_now;
            let object = state.stamp(kind, object);
            state.objects.insert((kind, name), object.clone());
            state.record(kind, "MODIFIED", object.clone());
            respond(StatusCode::OK, object)
        }
        _ => status(StatusCode::METHOD_NOT_ALLOWED, "not served here"),
    }
}

/// A watch from version `from`: the kept events after it, then the new
/// ones; `410 Gone` if its history is forgotten.
fn watch(state: &Arc<Mutex<State>>, kind: Kind, from: u64) -> Response<Body> {
    let mut state = state.lock().unwrap();
    state
        .requests
        .push(format!("watch {} from {from}", kind.plural()));
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    if from < state.compacted {
        let _ = tx.send(Bytes::from(format!("{}\n", gone_event())));
    } else {
        for (revision, k, line) in &state.history {
            if *k == kind && *revision > from {
                let _ = tx.send(Bytes::from(format!("{line}\n")));
            }
        }
        state.watches.push((kind, tx));
    }
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        let bytes = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap()
}
