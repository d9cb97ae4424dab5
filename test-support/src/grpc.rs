//! A gRPC service for tests (`echo.v1.Echo`, tonic): every call shape,
//! errors with trailers, deadlines. Served over h2c, or over TLS with ALPN
//! `h2`. Counts calls, and calls cancelled before they finished (a visitor
//! gave up, or its deadline passed).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

pub mod proto {
    tonic::include_proto!("echo.v1");
}

pub use proto::echo_client::EchoClient;
use proto::echo_server::{Echo, EchoServer};
use proto::{EchoReply, EchoRequest};

#[derive(Debug, Default)]
pub struct GrpcCounters {
    pub calls: AtomicU64,
    /// Calls whose handler was dropped before it answered.
    pub cancelled: AtomicU64,
    /// Notified whenever a call is cancelled.
    pub cancelled_changed: tokio::sync::Notify,
}

#[derive(Clone, Default)]
pub struct EchoService {
    pub counters: Arc<GrpcCounters>,
}

/// Counts a call as cancelled if dropped before `finish`.
struct CallGuard(Arc<GrpcCounters>, bool);

impl CallGuard {
    fn new(counters: &Arc<GrpcCounters>) -> Self {
        counters.calls.fetch_add(1, Ordering::SeqCst);
        Self(counters.clone(), false)
    }
    fn finish(mut self) {
        self.1 = true;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
            self.0.cancelled_changed.notify_waiters();
        }
    }
}

fn grpc_timeout<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The error a request asks for, with a trailer that must survive proxies.
fn failure(code: u32, message: &str) -> Status {
    let mut status = Status::new(
        tonic::Code::from(code as i32),
        format!("failed on purpose: {message}"),
    );
    status
        .metadata_mut()
        .insert("x-detail", MetadataValue::from_static("kept"));
    status
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let guard = CallGuard::new(&self.counters);
        let grpc_timeout = grpc_timeout(&request);
        let req = request.into_inner();
        tokio::time::sleep(Duration::from_millis(req.delay_ms.into())).await;
        guard.finish();
        if req.fail_code != 0 {
            return Err(failure(req.fail_code, &req.message));
        }
        let mut reply = Response::new(EchoReply {
            message: req.message,
            index: 0,
            grpc_timeout,
        });
        reply
            .metadata_mut()
            .insert("x-served-by", MetadataValue::from_static("echo"));
        Ok(reply)
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let guard = CallGuard::new(&self.counters);
        let req = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for index in 0..req.count {
                if index > 0 {
                    tokio::time::sleep(Duration::from_millis(req.delay_ms.into())).await;
                }
                let reply = EchoReply {
                    message: format!("{} {index}", req.message),
                    index,
                    grpc_timeout: String::new(),
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return; // the caller went away: the guard counts it
                }
            }
            if req.fail_code != 0 {
                let _ = tx.send(Err(failure(req.fail_code, &req.message))).await;
            }
            guard.finish();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let guard = CallGuard::new(&self.counters);
        let mut inbound = request.into_inner();
        let mut parts = Vec::new();
        while let Some(req) = inbound.message().await? {
            parts.push(req.message);
        }
        guard.finish();
        Ok(Response::new(EchoReply {
            message: parts.join(","),
            index: parts.len() as u32,
            grpc_timeout: String::new(),
        }))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let guard = CallGuard::new(&self.counters);
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut index = 0;
            loop {
                match inbound.message().await {
                    Ok(Some(req)) => {
                        let reply = EchoReply {
                            message: req.message,
                            index,
                            grpc_timeout: String::new(),
                        };
                        if tx.send(Ok(reply)).await.is_err() {
                            return;
                        }
                        index += 1;
                    }
                    // The client ended its side: the call completed.
                    Ok(None) => return guard.finish(),
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Serves the echo service until `stop`; with `tls`, each connection is a
/// TLS handshake first (ALPN `h2`).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    service: EchoService,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let router = tonic::transport::Server::builder().add_service(EchoServer::new(service));
    match tls {
        None => {
            router
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await
        }
        Some(config) => {
            let incoming = crate::tls::accept(listener, config);
            router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
        }
    }
}

/// A client for the echo service at `addr`, naming `authority` (the edge
/// routes on it): HTTP/2 with prior knowledge when `ca` is `None`, else TLS
/// (ALPN `h2`) trusting the PEM roots in `ca`.
pub async fn client(
    addr: std::net::SocketAddr,
    authority: &str,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<EchoClient<tonic::transport::Channel>> {
    let scheme = if ca.is_some() { "https" } else { "http" };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .origin(format!("{scheme}://{authority}").parse()?);
    let channel = match ca {
        None => endpoint.connect().await?,
        Some(ca) => {
            let ca = ca.to_path_buf();
            let host = authority.split(':').next().unwrap_or_default().to_string();
            endpoint
                .connect_with_connector(tower::service_fn(move |_uri| {
                    let (ca, host) = (ca.clone(), host.clone());
                    async move {
                        let tls = crate::tls::connect(addr, &host, &ca, &["h2"])
                            .await
                            .map_err(std::io::Error::other)?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                    }
                }))
                .await?
        }
    };
    Ok(EchoClient::new(channel))
}
