//! gRPC on HTTP/2 without a task per stream.
//!
//! tonic (through hyper) serves every stream with a task of its own: the
//! code that has bytes to send puts them in a queue, the stream's task takes
//! them out, encodes them and hands them to h2. A data stream carries a
//! small frame or two per proxied request, so that queue, task and wake-up
//! were paid on every request at both ends of the tunnel. Here the code that
//! has the bytes writes the gRPC message into the HTTP/2 stream itself
//! ([`FrameSink`]) and reads messages straight out of it ([`FrameSource`]).
//!
//! The wire is plain gRPC (`application/grpc`, 5-byte message prefix,
//! protobuf `StreamFrame`s, `grpc-status` trailers), so any gRPC peer can
//! speak to it. The long-lived `Control` RPC stays a tonic service: the
//! connection's dispatcher hands it to tonic through [`serve_rpc`] (edge)
//! and [`H2Channel`] (sidecar), which do what hyper does for one stream.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use prost::Message;

use crate::transport::{CHUNK_SIZE, MAX_MESSAGE_SIZE};
use crate::StreamFrame;

/// The path of the data RPC (`Tunnel.Data`).
pub const DATA_PATH: &str = "/tunnel.v1.Tunnel/Data";
/// The path of the control RPC (`Tunnel.Control`).
pub const CONTROL_PATH: &str = "/tunnel.v1.Tunnel/Control";
/// gRPC's content type.
pub const GRPC_CONTENT_TYPE: &str = "application/grpc";

/// gRPC message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;
/// Protobuf key of `StreamFrame.data` (field 3, length-delimited).
const DATA_KEY: u8 = 3 << 3 | 2;
/// Room for the prefix, the key and a length varint of up to 3 bytes.
pub const DATA_HEADROOM: usize = PREFIX + 1 + 3;
const _: () = assert!(
    CHUNK_SIZE < 1 << 21,
    "a chunk's length must fit 3 varint bytes"
);

/// A data stream that broke: reset, ended with an error status, or sent
/// something that is not a `StreamFrame`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamBroken(pub String);

impl std::fmt::Display for StreamBroken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StreamBroken {}

impl From<h2::Error> for StreamBroken {
    fn from(e: h2::Error) -> Self {
        Self(e.to_string())
    }
}

// -- framing

fn varint_len(n: usize) -> usize {
    match n {
        0..0x80 => 1,
        0x80..0x4000 => 2,
        _ => 3,
    }
}

fn put_prefix(buf: &mut impl BufMut, message_len: usize) {
    buf.put_u8(0);
    buf.put_u32(message_len as u32);
}

/// One frame as a gRPC message.
pub fn encode(frame: &StreamFrame) -> Bytes {
    let len = frame.encoded_len();
    let mut buf = BytesMut::with_capacity(PREFIX + len);
    put_prefix(&mut buf, len);
    frame.encode(&mut buf).expect("the buffer has room");
    buf.freeze()
}

/// A data frame carrying `payload` (at most [`CHUNK_SIZE`] bytes) as a gRPC
/// message, in one allocation.
pub fn encode_data(payload: &[u8]) -> Bytes {
    let n = payload.len();
    let mut buf = BytesMut::with_capacity(DATA_HEADROOM + n);
    put_data_header(&mut buf, n);
    buf.extend_from_slice(payload);
    buf.freeze()
}

fn put_data_header(buf: &mut impl BufMut, n: usize) {
    debug_assert!(n <= CHUNK_SIZE);
    put_prefix(buf, 1 + varint_len(n) + n);
    buf.put_u8(DATA_KEY);
    let mut v = n;
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// A data frame made of a buffer whose first [`DATA_HEADROOM`] bytes were
/// left free for the header and whose rest is the payload: the header is
/// written in front of the payload, which is not copied.
pub fn frame_in_place(mut buf: BytesMut) -> Bytes {
    let n = buf.len() - DATA_HEADROOM;
    let header = PREFIX + 1 + varint_len(n);
    let start = DATA_HEADROOM - header;
    put_data_header(&mut &mut buf[start..DATA_HEADROOM], n);
    buf.advance(start);
    buf.freeze()
}

/// Splits a byte stream into `StreamFrame`s. A message that arrived in one
/// piece is decoded from that piece (its payload a slice of it, not a
/// copy); one split across HTTP/2 frames is gathered first.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Received bytes not yet decoded, while they are one piece.
    whole: Bytes,
    /// Received bytes not yet decoded, once pieces had to be joined.
    joined: BytesMut,
}

impl Decoder {
    pub fn push(&mut self, chunk: Bytes) {
        if self.whole.is_empty() && self.joined.is_empty() {
            self.whole = chunk;
        } else {
            if !self.whole.is_empty() {
                self.joined.extend_from_slice(&self.whole);
                self.whole = Bytes::new();
            }
            self.joined.extend_from_slice(&chunk);
        }
    }

    /// The next complete frame, if one has arrived.
    pub fn decode_next(&mut self) -> Result<Option<StreamFrame>, StreamBroken> {
        if !self.whole.is_empty() {
            if let Some(len) = message_len(&self.whole)? {
                if self.whole.len() >= PREFIX + len {
                    let message = self.whole.slice(PREFIX..PREFIX + len);
                    self.whole.advance(PREFIX + len);
                    return decode(message).map(Some);
                }
            }
            self.joined.extend_from_slice(&self.whole);
            self.whole = Bytes::new();
        }
        match message_len(&self.joined)? {
            Some(len) if self.joined.len() >= PREFIX + len => {
                let mut message = self.joined.split_to(PREFIX + len);
                message.advance(PREFIX);
                decode(message.freeze()).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Bytes of a message begun but not complete.
    pub fn is_empty(&self) -> bool {
        self.whole.is_empty() && self.joined.is_empty()
    }
}

fn message_len(buf: &[u8]) -> Result<Option<usize>, StreamBroken> {
    if buf.len() < PREFIX {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err(StreamBroken(
            "compressed gRPC messages are not supported".into(),
        ));
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_MESSAGE_SIZE {
        return Err(StreamBroken(format!(
            "a gRPC message of {len} bytes is over the limit of {MAX_MESSAGE_SIZE}"
        )));
    }
    Ok(Some(len))
}

fn decode(message: Bytes) -> Result<StreamFrame, StreamBroken> {
    StreamFrame::decode(message).map_err(|e| StreamBroken(format!("not a StreamFrame: {e}")))
}

// -- data streams

/// Which end of the RPC: it decides how a side ends its half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends the request: ends it with an empty DATA frame (END_STREAM).
    Client,
    /// Sends the response: ends it with `grpc-status: 0` trailers.
    Server,
}

/// The sending half of a data stream.
#[derive(Debug)]
pub struct FrameSink {
    send: SendStream<Bytes>,
    role: Role,
}

impl FrameSink {
    pub fn new(send: SendStream<Bytes>, role: Role) -> Self {
        Self { send, role }
    }

    /// Ready once the stream has flow-control window for more: like a
    /// bounded queue, a slow reader at the far end holds the writer back.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamBroken>> {
        poll_window(&mut self.send, cx)
    }

    /// Sends an encoded message ([`encode`], [`encode_data`],
    /// [`frame_in_place`]); call after [`FrameSink::poll_ready`].
    pub fn send(&mut self, message: Bytes) -> Result<(), StreamBroken> {
        Ok(self.send.send_data(message, false)?)
    }

    /// Waits for window, then sends an encoded message.
    pub async fn send_when_ready(&mut self, message: Bytes) -> Result<(), StreamBroken> {
        poll_fn(|cx| self.poll_ready(cx)).await?;
        self.send(message)
    }

    /// Waits for window, then sends `frame`.
    pub async fn send_frame(&mut self, frame: &StreamFrame) -> Result<(), StreamBroken> {
        self.send_when_ready(encode(frame)).await
    }

    /// Ends this half of the RPC cleanly. Whatever was sent before is still
    /// delivered; dropping the sink without this resets the stream instead.
    pub fn finish(&mut self) {
        self.send.reserve_capacity(0);
        let _ = match self.role {
            Role::Client => self.send.send_data(Bytes::new(), true),
            Role::Server => self.send.send_trailers(ok_trailers()),
        };
    }

    /// Ends this half of the RPC with an error status (a server refusing a
    /// stream it has already answered).
    pub fn fail(&mut self, code: tonic::Code, message: &str) {
        self.send.reserve_capacity(0);
        let _ = self
            .send
            .send_trailers(status_response(code, message).headers().clone());
    }
}

/// Ready once `send` has flow-control window for more data, or failed if
/// the stream was reset or closed meanwhile.
fn poll_window(
    send: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), StreamBroken>> {
    // One byte, as hyper does: h2 raises the claim to what is buffered.
    send.reserve_capacity(1);
    while send.capacity() == 0 {
        // Waiting: wake up for a reset too, not only for more window.
        if let Poll::Ready(reason) = send.poll_reset(cx) {
            let why = reason.map_or_else(|e| e.to_string(), |r| format!("reset ({r:?})"));
            return Poll::Ready(Err(StreamBroken(why)));
        }
        match ready!(send.poll_capacity(cx)) {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Poll::Ready(Err(e.into())),
            None => return Poll::Ready(Err(StreamBroken("stream closed".into()))),
        }
    }
    Poll::Ready(Ok(()))
}

fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}

/// The receiving half of a data stream.
#[derive(Debug)]
pub struct FrameSource {
    recv: RecvStream,
    decoder: Decoder,
    ended: bool,
}

impl FrameSource {
    pub fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            decoder: Decoder::default(),
            ended: false,
        }
    }

    /// The next frame; `None` once the peer ended its half cleanly.
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<StreamFrame, StreamBroken>>> {
        loop {
            if let Some(frame) = self.decoder.decode_next().transpose() {
                return Poll::Ready(Some(frame));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = self.recv.flow_control().release_capacity(chunk.len());
                    self.decoder.push(chunk);
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    let trailers = ready!(self.recv.poll_trailers(cx));
                    self.ended = true;
                    match trailers {
                        Err(e) => return Poll::Ready(Some(Err(e.into()))),
                        Ok(Some(t)) => {
                            if let Some(e) = status_error(&t) {
                                return Poll::Ready(Some(Err(e)));
                            }
                        }
                        Ok(None) => {}
                    }
                    if !self.decoder.is_empty() {
                        return Poll::Ready(Some(Err(StreamBroken(
                            "the stream ended inside a message".into(),
                        ))));
                    }
                }
            }
        }
    }

    pub async fn next(&mut self) -> Option<Result<StreamFrame, StreamBroken>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Whether the peer has ended or reset its half (a parked stream that
    /// says so is of no use).
    pub fn is_closed(&self) -> bool {
        self.ended || self.recv.is_end_stream()
    }
}

/// The error a gRPC status in `headers` reports, if it is not OK.
pub fn status_error(headers: &HeaderMap) -> Option<StreamBroken> {
    let status = headers.get("grpc-status")?;
    if status == "0" {
        return None;
    }
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("");
    Some(StreamBroken(format!(
        "grpc-status {}: {message}",
        status.to_str().unwrap_or("?")
    )))
}

/// A gRPC error answer with no body (a "trailers-only" response).
pub fn status_response(code: tonic::Code, message: &str) -> http::Response<()> {
    let mut response = ok_response();
    let headers = response.headers_mut();
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    if let Ok(v) = HeaderValue::from_str(message) {
        headers.insert("grpc-message", v);
    }
    response
}

/// The head of a successful streaming gRPC response.
pub fn ok_response() -> http::Response<()> {
    let mut response = http::Response::new(());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(GRPC_CONTENT_TYPE),
    );
    response
}

// -- tonic on h2 streams (the control RPC)

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

/// Resolves when the peer has not answered a PING within `timeout`; pings
/// every `interval`, as HTTP/2 keep-alive.
pub async fn keepalive(mut pings: PingPong, interval: Duration, timeout: Duration) -> String {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, pings.ping(Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("keep-alive ping failed: {e}"),
            Err(_) => return format!("no keep-alive pong within {timeout:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream_frame::Kind;

    fn data_of(frame: StreamFrame) -> Bytes {
        match frame.kind {
            Some(Kind::Data(b)) => b,
            other => panic!("not data: {other:?}"),
        }
    }

    #[test]
    fn data_frames_are_the_messages_prost_would_encode() {
        for n in [0, 1, 127, 128, 16_383, 16_384, CHUNK_SIZE] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let expected = encode(&StreamFrame::data(Bytes::from(payload.clone())));
            assert_eq!(encode_data(&payload), expected, "{n} bytes");
            let mut buf = BytesMut::zeroed(DATA_HEADROOM);
            buf.extend_from_slice(&payload);
            assert_eq!(frame_in_place(buf), expected, "{n} bytes in place");
        }
    }

    #[test]
    fn decodes_messages_however_they_are_split() {
        let frames = [
            StreamFrame::open("web".into(), 80, "r1".into()),
            StreamFrame::data(Bytes::from(vec![7u8; 70_000])),
            StreamFrame::fin(),
            StreamFrame::data(Bytes::from_static(b"x")),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(|f| encode(f).to_vec()).collect();
        for piece in [1, 2, 5, 6, 1000, 65_536, wire.len()] {
            let mut decoder = Decoder::default();
            let mut got = Vec::new();
            for chunk in wire.chunks(piece) {
                decoder.push(Bytes::copy_from_slice(chunk));
                while let Some(f) = decoder.decode_next().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "pieces of {piece} bytes");
            assert!(decoder.is_empty());
        }
    }

    #[test]
    fn a_whole_message_is_decoded_without_copying_its_payload() {
        let wire = encode_data(&[1u8; 4096]);
        let mut decoder = Decoder::default();
        decoder.push(wire.clone());
        let payload = data_of(decoder.decode_next().unwrap().unwrap());
        assert_eq!(payload.len(), 4096);
        let inside = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
        assert!(inside.contains(&(payload.as_ptr() as usize)));
    }

    #[test]
    fn refuses_compressed_oversized_and_malformed_messages() {
        let mut d = Decoder::default();
        d.push(Bytes::from_static(&[1, 0, 0, 0, 1, 0]));
        assert!(d.decode_next().unwrap_err().0.contains("compressed"));
        let mut d = Decoder::default();
        d.push(Bytes::from(vec![0, 0xff, 0xff, 0xff, 0xff]));
        assert!(d.decode_next().unwrap_err().0.contains("over the limit"));
        let mut d = Decoder::default();
        d.push(Bytes::from_static(&[0, 0, 0, 0, 2, 0xff, 0xff]));
        assert!(d.decode_next().unwrap_err().0.contains("not a StreamFrame"));
    }

    #[test]
    fn error_statuses_are_read_from_headers() {
        let response = status_response(tonic::Code::NotFound, "unknown tunnel session");
        let e = status_error(response.headers()).unwrap();
        assert_eq!(e.0, "grpc-status 5: unknown tunnel session");
        assert_eq!(status_error(&ok_trailers()), None);
    }
}
