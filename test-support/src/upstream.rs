//! The sample upstream service: what the demo exposes and what tests talk
//! to. Plain HTTP/1.1 with upgrades; counts the connections it accepts.
//!
//! Routes:
//! - `GET /` — a greeting
//! - `GET /bytes/<n>` — n pattern bytes ([`crate::pattern`]); `?chunked` for chunked encoding
//! - `POST|PUT /sha256` — `{"sha256": …, "bytes": …}` of the request body, streamed
//! - `POST /echo` — the request body back, streamed
//! - `GET /sse?n=3&interval_ms=200` — server-sent events, one per interval
//! - `GET /slow?ms=500` — answers after a delay
//! - `GET /hold?id=x` — `Content-Length: 13`: `first\n` at once, `second\n`
//!   once `GET /release?id=x` is called
//! - `POST /absorb?id=x` — reads nothing of the body until
//!   `GET /release?id=x`, then reads it all and answers with its length
//!   (a service that stops reading an upload)
//! - `GET /headers` — the request headers as JSON
//! - `GET /stats` — `{"connections": …, "requests": …}`
//! - `GET /ws` — WebSocket echo; says `welcome` first
//!
//! Tests wait on its [`Counters`] ([`TestUpstream::wait_for`]); with
//! [`Counters::log_events`] set (`sample-upstream --log-events`), it also
//! prints a line for each event a black-box test waits on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};
use tokio_util::sync::CancellationToken;

use crate::pattern;

type Body = BoxBody<Bytes, Infallible>;

#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    pub requests: AtomicU64,
    /// Requests whose handler is running (it has not returned a response
    /// head, nor been dropped).
    pub in_flight: AtomicU64,
    /// Streamed bodies (`/bytes`, `/sse`) written to their end.
    pub bodies_finished: AtomicU64,
    /// Bytes of `/bytes` bodies handed to the connection (what a slow
    /// reader let through: backpressure bounds it).
    pub body_bytes: AtomicU64,
    /// Kept-alive connections closed because no request came in time.
    pub idle_closed: AtomicU64,
    /// Notified whenever a counter changes.
    pub changed: tokio::sync::Notify,
    /// Print `request <method> <path>` as each request arrives, `done
    /// <method> <path>` when its handler returns or is dropped, and `idle
    /// connection closed`: for tests that watch the process's output.
    pub log_events: AtomicBool,
    /// Close a keep-alive connection that waits this long for its next
    /// request (`None`: keep it).
    pub idle_close: std::sync::OnceLock<std::time::Duration>,
    /// Responses of `/hold` waiting for their `/release`, by id.
    held: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>,
}

impl Counters {
    /// Adds one to `counter` and tells whoever waits on [`Self::changed`].
    fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn event(&self, line: std::fmt::Arguments<'_>) {
        if self.log_events.load(Ordering::Relaxed) {
            println!("{line}");
        }
    }

    fn hold(&self, id: &str) -> Arc<tokio::sync::Notify> {
        let mut held = self.held.lock().unwrap();
        held.entry(id.to_string()).or_default().clone()
    }
}

/// A running sample upstream.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    stop: CancellationToken,
}

impl TestUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve(listener)
    }

    pub fn serve(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, counters.clone(), stop.clone()));
        Self {
            addr,
            counters,
            stop,
        }
    }

    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Waits until `done` holds for the counters, re-checking each time one
    /// changes; panics after [`crate::wait::PATIENCE`].
    pub async fn wait_for(&self, what: &str, done: impl Fn(&Counters) -> bool) {
        crate::wait::within(what, async {
            loop {
                let changed = self.counters.changed.notified();
                tokio::pin!(changed);
                // Registered before the check: a change in between still wakes us.
                changed.as_mut().enable();
                if done(&self.counters) {
                    return;
                }
                changed.await;
            }
        })
        .await
    }

    /// Stops accepting and closes every connection.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves until `stop` is cancelled; cancelling also cuts open connections.
pub async fn serve(listener: TcpListener, counters: Arc<Counters>, stop: CancellationToken) {
    serve_with(listener, None, counters, stop).await
}

/// [`serve`], over TLS when `tls` is given (ALPN `http/1.1`).
pub async fn serve_with(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r { Ok(a) => a, Err(_) => continue },
            _ = stop.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        counters.open.fetch_add(1, Ordering::SeqCst);
        counters.bump(&counters.connections);
        let counters = counters.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(tcp, counters.clone(), stop).await,
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve_connection(tls, counters.clone(), stop).await
                    }
                }
            }
            counters.open.fetch_sub(1, Ordering::SeqCst);
            counters.changed.notify_waiters();
        });
    }
}

async fn serve_connection<IO>(io: IO, counters: Arc<Counters>, stop: CancellationToken)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let idle_close = counters.idle_close.get().copied();
    let service_counters = counters.clone();
    let service = hyper::service::service_fn(move |req| {
        let counters = service_counters.clone();
        let request = InFlight::new(&counters, &req);
        async move {
            let response = handle(req, counters).await;
            drop(request);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    if let Some(idle) = idle_close {
        // hyper's header read timeout also runs while a kept-alive
        // connection waits for its next request.
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(idle);
    }
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::select! {
        ended = conn => {
            if idle_close.is_some() && ended.is_err_and(|e| e.is_timeout()) {
                counters.event(format_args!("idle connection closed"));
                counters.bump(&counters.idle_closed);
            }
        }
        _ = stop.cancelled() => {}
    }
}

/// A request counted from its arrival until its handler returns or is
/// dropped.
struct InFlight {
    counters: Arc<Counters>,
    what: String,
}

impl InFlight {
    fn new(counters: &Arc<Counters>, req: &Request<Incoming>) -> Self {
        let what = format!("{} {}", req.method(), req.uri());
        counters.event(format_args!("request {what}"));
        counters.in_flight.fetch_add(1, Ordering::SeqCst);
        counters.bump(&counters.requests);
        Self {
            counters: counters.clone(),
            what,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counters.event(format_args!("done {}", self.what));
        self.counters.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.counters.changed.notify_waiters();
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

/// `%XX` and `+` decoded (a query value).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| v.to_string())
    })
}

fn streaming(
    status: StatusCode,
    content_type: &str,
) -> (tokio::sync::mpsc::Sender<Bytes>, Response<Body>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let body = StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|b| Ok::<_, Infallible>(Frame::data(b))),
    );
    let resp = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(BodyExt::boxed(body))
        .unwrap();
    (tx, resp)
}

async fn handle(
    req: Request<Incoming>,
    counters: Arc<Counters>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let resp = match (req.method().as_str(), path.as_str()) {
        ("GET", "/") => full(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "Hello from the sample service, through the tunnel.\n",
        ),
        ("GET", p) if p.starts_with("/bytes/") => match p["/bytes/".len()..].parse::<u64>() {
            Ok(n) => bytes_response(n, query(&req, "chunked").is_some(), counters),
            Err(_) => full(StatusCode::BAD_REQUEST, "text/plain", "bad length\n"),
        },
        ("POST" | "PUT", "/sha256") => {
            let mut body = req.into_body();
            let mut h = Sha256::new();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            n += d.len() as u64;
                            h.update(d);
                        }
                    }
                    Err(_) => {
                        return Ok(full(StatusCode::BAD_REQUEST, "text/plain", "body broke\n"))
                    }
                }
            }
            let json = serde_json::json!({ "sha256": hex::encode(h.finalize()), "bytes": n });
            full(StatusCode::OK, "application/json", json.to_string())
        }
        ("POST", "/echo") => {
            let (tx, resp) = streaming(StatusCode::OK, "application/octet-stream");
            let mut body = req.into_body();
            tokio::spawn(async move {
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(d) = frame.into_data() {
                        if tx.send(d).await.is_err() {
                            return;
                        }
                    }
                }
            });
            resp
        }
        ("GET", "/hold") => {
            // `Content-Length: 13`, `first\n` now, `second\n` on release.
            let release = counters.hold(&query(&req, "id").unwrap_or_default());
            let (tx, mut resp) = streaming(StatusCode::OK, "text/plain");
            resp.headers_mut()
                .insert("content-length", "13".parse().unwrap());
            tokio::spawn(async move {
                if tx.send(Bytes::from_static(b"first\n")).await.is_ok() {
                    release.notified().await;
                    let _ = tx.send(Bytes::from_static(b"second\n")).await;
                }
            });
            resp
        }
        ("POST", "/absorb") => {
            counters
                .hold(&query(&req, "id").unwrap_or_default())
                .notified()
                .await;
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                n += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            full(StatusCode::OK, "text/plain", format!("{n}\n"))
        }
        ("GET", "/release") => {
            counters
                .hold(&query(&req, "id").unwrap_or_default())
                .notify_one();
            full(StatusCode::OK, "text/plain", "released\n")
        }
        ("GET", "/sse") => {
            let n: u32 = query(&req, "n").and_then(|v| v.parse().ok()).unwrap_or(3);
            let interval: u64 = query(&req, "interval_ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(200);
            let (tx, mut resp) = streaming(StatusCode::OK, "text/event-stream");
            resp.headers_mut()
                .insert("cache-control", "no-cache".parse().unwrap());
            tokio::spawn(async move {
                for i in 0..n {
                    if i > 0 && interval > 0 {
                        tokio::time::sleep(Duration::from_millis(interval)).await;
                    }
                    if tx
                        .send(Bytes::from(format!("id: {i}\ndata: event {i}\n\n")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                counters.bump(&counters.bodies_finished);
            });
            resp
        }
        ("GET", "/slow") => {
            let ms: u64 = query(&req, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(500);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(StatusCode::OK, "text/plain", "slow but here\n")
        }
        ("GET", "/headers") => {
            let map: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                .collect();
            full(
                StatusCode::OK,
                "application/json",
                serde_json::Value::Object(map).to_string(),
            )
        }
        // `/set-cookie?name=value;+attributes` (percent-encoded, repeatable
        // as `&`-separated values): a service setting cookies.
        ("GET", "/set-cookie") => {
            let mut resp = full(StatusCode::OK, "text/plain", "cookies set\n");
            for value in req.uri().query().unwrap_or("").split('&') {
                let value = percent_decode(value);
                if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
                    resp.headers_mut().append(hyper::header::SET_COOKIE, v);
                }
            }
            resp
        }
        ("GET", "/stats") => {
            let json = serde_json::json!({
                "connections": counters.connections.load(Ordering::SeqCst),
                "open": counters.open.load(Ordering::SeqCst),
                "requests": counters.requests.load(Ordering::SeqCst),
                "body_bytes": counters.body_bytes.load(Ordering::Relaxed),
            });
            full(StatusCode::OK, "application/json", json.to_string())
        }
        ("GET", "/ws") => websocket(req),
        _ => full(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    };
    Ok(resp)
}

fn bytes_response(n: u64, chunked: bool, counters: Arc<Counters>) -> Response<Body> {
    let (tx, mut resp) = streaming(StatusCode::OK, "application/octet-stream");
    if !chunked {
        resp.headers_mut().insert("content-length", n.into());
    }
    tokio::spawn(async move {
        for chunk in pattern::chunks(n) {
            let len = chunk.len() as u64;
            if tx.send(chunk).await.is_err() {
                return;
            }
            counters.body_bytes.fetch_add(len, Ordering::Relaxed);
        }
        counters.bump(&counters.bodies_finished);
    });
    resp
}

fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return full(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "not a websocket request\n",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        if ws.send(Message::text("welcome")).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(t) => Message::Text(t),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                return;
            }
        }
        let _ = ws.close(None).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}
