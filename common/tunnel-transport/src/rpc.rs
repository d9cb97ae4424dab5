//! The control RPC on HTTP/2 streams we drive ourselves. The edge serves
//! each sidecar connection with h2 directly (data streams are parked, not
//! served by tonic), and the sidecar opens data streams on its own h2
//! connection; the long-lived `Control` call is still a tonic service and
//! client, handed its stream by [`serve_rpc`] (edge) and [`H2Channel`]
//! (sidecar), which do for one stream what hyper would.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body, Frame};

use crate::data::poll_window;
use crate::grpc::status_response;

/// An h2 stream's received half as an HTTP body, for tonic.
#[derive(Debug)]
pub struct H2Body {
    recv: RecvStream,
    data_done: bool,
}

impl H2Body {
    pub fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            data_done: false,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = self.recv.flow_control().release_capacity(chunk.len());
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

/// Sends `body` on `send`: data as flow control allows, then its trailers
/// (or an empty END_STREAM frame). Stops, resetting the stream, if the
/// body fails; stops at once if the peer resets it.
pub async fn pump<B>(body: B, mut send: SendStream<Bytes>)
where
    B: Body<Data = Bytes>,
{
    let mut body = pin!(body);
    loop {
        let frame = poll_fn(|cx| {
            if send.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            body.as_mut().poll_frame(cx).map(Some)
        })
        .await;
        let frame = match frame {
            None => return, // reset by the peer
            Some(None) => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Err(_))) => {
                send.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
            Some(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => {
                let ready = poll_fn(|cx| poll_window(&mut send, cx)).await;
                if ready.is_err() || send.send_data(data, false).is_err() {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.reserve_capacity(0);
                    let _ = send.send_trailers(trailers);
                    return;
                }
            }
        }
    }
}

/// Answers one RPC with a tower service (a tonic server): what hyper does
/// for a stream, done for the control RPC on a connection we serve.
pub async fn serve_rpc<S, B>(
    mut service: S,
    request: http::Request<RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    peer: Option<SocketAddr>,
) where
    S: tower::Service<http::Request<H2Body>, Response = http::Response<B>>,
    S::Error: std::fmt::Display,
    B: Body<Data = Bytes>,
{
    let (parts, recv) = request.into_parts();
    let mut request = http::Request::from_parts(parts, H2Body::new(recv));
    request
        .extensions_mut()
        .insert(tonic::transport::server::TcpConnectInfo {
            local_addr: None,
            remote_addr: peer,
        });
    let response = match poll_fn(|cx| service.poll_ready(cx)).await {
        Ok(()) => service.call(request).await,
        Err(e) => Err(e),
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            let _ =
                respond.send_response(status_response(tonic::Code::Internal, &e.to_string()), true);
            return;
        }
    };
    let (parts, body) = response.into_parts();
    let end = body.is_end_stream();
    if let Ok(send) = respond.send_response(http::Response::from_parts(parts, ()), end) {
        if !end {
            pump(body, send).await;
        }
    }
}

/// A tonic channel made of an h2 connection we opened: each call sends its
/// request on a new stream and its body from a task of its own.
#[derive(Clone, Debug)]
pub struct H2Channel(pub h2::client::SendRequest<Bytes>);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> tower::Service<http::Request<B>> for H2Channel
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send,
{
    type Response = http::Response<H2Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let send = self.0.clone();
        Box::pin(async move {
            let mut send = send.ready().await?;
            let (parts, body) = request.into_parts();
            let end = body.is_end_stream();
            let (response, stream) =
                send.send_request(http::Request::from_parts(parts, ()), end)?;
            if !end {
                tokio::spawn(pump(body, stream));
            }
            Ok(response.await?.map(H2Body::new))
        })
    }
}
