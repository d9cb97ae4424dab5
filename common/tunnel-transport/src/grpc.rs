//! The gRPC wire of the tunnel's data streams: messages with gRPC's 5-byte
//! prefix carrying protobuf `StreamFrame`s, `grpc-status` trailers. Data
//! frames are built around their payload without copying it, and decoded
//! as slices of what arrived.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use prost::Message;
use tunnel_proto::{StreamFrame, MAX_MESSAGE_SIZE};

use crate::settings::CHUNK_SIZE;

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

/// `grpc-status: 0` trailers: a server ending its response cleanly.
pub fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
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

#[cfg(test)]
mod tests {
    use super::*;
    use tunnel_proto::stream_frame::Kind;

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
            StreamFrame::open("web".into(), 80, "r1".into(), false),
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
