//! Where a service's WebSocket frames begin and end (RFC 6455 §5.2), so
//! the edge can close a visitor's WebSocket cleanly when it must end it
//! (its grace period is over): a Close frame with 1001 "going away",
//! written only between two frames of the service's and only if the
//! service has not closed first.

use bytes::Bytes;
use pingora_http::RequestHeader;

/// The longest frame head: 2 bytes, a 64-bit length, a masking key.
const MAX_HEAD: usize = 14;

/// Follows the frames of one direction, payloads skipped unread.
#[derive(Debug, Default)]
pub struct Frames {
    head: [u8; MAX_HEAD],
    /// Bytes of the current head read so far.
    head_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// A Close frame went by: the closing handshake is the peers' own.
    closed: bool,
}

impl Frames {
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let skip = data
                    .len()
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= skip as u64;
                data = &data[skip..];
                continue;
            }
            self.head[self.head_len] = data[0];
            self.head_len += 1;
            data = &data[1..];
            if let Some(payload) = self.complete_head() {
                if self.head[0] & 0x0f == 0x8 {
                    self.closed = true;
                }
                self.head_len = 0;
                self.payload_left = payload;
            }
        }
    }

    /// The payload length once the head read so far is whole.
    fn complete_head(&self) -> Option<u64> {
        let n = self.head_len;
        if n < 2 {
            return None;
        }
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        let (extended, len) = match self.head[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            len => (0, Some(u64::from(len))),
        };
        if n < 2 + extended + mask {
            return None;
        }
        let len = len.unwrap_or_else(|| {
            (self.head[2..2 + extended])
                .iter()
                .fold(0, |len, &b| len << 8 | u64::from(b))
        });
        Some(len)
    }

    /// Between two frames, and no Close went by: a Close may be written.
    pub fn may_close(&self) -> bool {
        self.head_len == 0 && self.payload_left == 0 && !self.closed
    }
}

/// A WebSocket handshake (`Upgrade: websocket`).
pub fn requested(request: &RequestHeader) -> bool {
    (request.headers.get(http::header::UPGRADE))
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// A server's Close frame: 1001 (going away) and why.
pub fn going_away() -> Bytes {
    const REASON: &[u8] = b"edge restarting";
    let mut frame = vec![0x88, 2 + REASON.len() as u8];
    frame.extend_from_slice(&1001u16.to_be_bytes());
    frame.extend_from_slice(REASON);
    frame.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload_len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let mask = if masked { 0x80 } else { 0 };
        match payload_len {
            0..=125 => f.push(mask | payload_len as u8),
            126..=65535 => {
                f.push(mask | 126);
                f.extend_from_slice(&(payload_len as u16).to_be_bytes());
            }
            _ => {
                f.push(mask | 127);
                f.extend_from_slice(&(payload_len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0x8a, payload_len)); // 0x88 inside: not a head
        f
    }

    #[test]
    fn frames_are_followed_across_any_split() {
        let mut stream = Vec::new();
        for (len, masked) in [
            (0, false),
            (5, true),
            (125, false),
            (126, false),
            (70_000, true),
        ] {
            stream.extend(frame(0x2, len, masked));
        }
        for chunk in [1, 2, 3, 7, 1000, stream.len()] {
            let mut frames = Frames::default();
            for piece in stream.chunks(chunk) {
                frames.feed(piece);
            }
            assert!(
                frames.may_close(),
                "between frames at the end (chunks of {chunk})"
            );
        }
        let mut frames = Frames::default();
        frames.feed(&stream[..stream.len() - 1]);
        assert!(!frames.may_close(), "mid-payload");
        let mut frames = Frames::default();
        frames.feed(&frame(0x1, 300, false)[..3]);
        assert!(!frames.may_close(), "mid-head");
    }

    #[test]
    fn a_close_from_the_service_is_its_own_handshake() {
        let mut frames = Frames::default();
        frames.feed(&frame(0x1, 3, false));
        frames.feed(&frame(0x8, 2, false));
        assert!(!frames.may_close());
    }

    #[test]
    fn going_away_is_a_close_frame_with_1001() {
        let close = going_away();
        assert_eq!(&close[..4], &[0x88, close.len() as u8 - 2, 0x03, 0xe9]);
        let mut frames = Frames::default();
        frames.feed(&close);
        assert!(!frames.may_close() && frames.head_len == 0 && frames.payload_left == 0);
    }
}
