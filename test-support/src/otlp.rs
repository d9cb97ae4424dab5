//! An OTLP/gRPC trace collector for tests: the `TraceService/Export` call
//! the OpenTelemetry exporters make, served by tonic's own gRPC machinery
//! (the message types are `opentelemetry-proto`'s, which ships no server),
//! keeping every span it receives.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::Notify;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The spans received so far, with the `service.name` of their resource.
#[derive(Clone, Default)]
pub struct Received {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    arrived: Arc<Notify>,
}

impl Received {
    /// Waits until a span satisfies `found`, and returns it.
    pub async fn wait_for(&self, found: impl Fn(&Span) -> bool) -> (String, Span) {
        loop {
            let arrived = self.arrived.notified();
            if let Some(hit) = self.spans.lock().unwrap().iter().find(|(_, s)| found(s)) {
                return hit.clone();
            }
            arrived.await;
        }
    }

    fn add(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.resource_spans {
            let service = (resource.resource.iter())
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        self.arrived.notify_waiters();
    }
}

/// Serves the collector on `127.0.0.1:0` until the runtime ends; returns
/// its address and what it receives.
pub async fn collector() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let service = TraceService(received.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, received)
}

#[derive(Clone)]
struct TraceService(Received);

impl tonic::server::NamedService for TraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for TraceService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let export = Export(self.0.clone());
        Box::pin(async move {
            if request.uri().path() != EXPORT {
                return Ok(Status::unimplemented(request.uri().path().to_string()).into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(export, request).await)
        })
    }
}

struct Export(Received);

impl tonic::server::UnaryService<ExportTraceServiceRequest> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Result<Response<Self::Response>, Status>>;

    fn call(&mut self, request: Request<ExportTraceServiceRequest>) -> Self::Future {
        self.0.add(request.into_inner());
        Box::pin(async { Ok(Response::new(ExportTraceServiceResponse::default())) })
    }
}
