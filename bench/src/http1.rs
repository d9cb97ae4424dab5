//! A minimal incremental HTTP/1.1 response parser: enough to find where a
//! response ends on a keep-alive connection and to check its body.

use anyhow::{bail, Context};

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// Until the connection closes.
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the status line and headers, including the blank line.
    pub len: usize,
    pub framing: Framing,
    /// The server said `Connection: close`.
    pub close: bool,
}

/// Parses a response head at the start of `buf`; `None` until it is complete.
pub fn parse_head(buf: &[u8]) -> anyhow::Result<Option<Head>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            bail!("response head longer than 64 KiB");
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x response: {status_line:?}");
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut framing = Framing::Close;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            framing = Framing::Length(value.parse().context("bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        framing = Framing::Length(0);
    }
    Ok(Some(Head {
        status,
        len: end + 4,
        framing,
        close,
    }))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, Clone, Copy)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    Close,
    Done,
}

/// Decodes a body incrementally: [`BodyDecoder::feed`] the bytes after the
/// head as they arrive.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Self { state }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The connection closed: fine only for close-delimited bodies.
    pub fn finish_on_eof(&mut self) -> anyhow::Result<()> {
        match self.state {
            State::Close | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => bail!("connection closed before the body ended"),
        }
    }

    /// Consumes a prefix of `input`, appending decoded body bytes to `out`
    /// (if given). Returns how many bytes were consumed; stops at the end of
    /// the body, so any rest belongs to the next response.
    pub fn feed(&mut self, input: &[u8], mut out: Option<&mut Vec<u8>>) -> anyhow::Result<usize> {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            match self.state {
                State::Done => break,
                State::Close => {
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(rest);
                    }
                    used += rest.len();
                }
                State::Length(n) | State::ChunkData(n) => {
                    let take = (n.min(rest.len() as u64)) as usize;
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(&rest[..take]);
                    }
                    used += take;
                    let left = n - take as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), l) => State::Length(l),
                        (_, 0) => State::ChunkDataEnd,
                        (_, l) => State::ChunkData(l),
                    };
                }
                State::ChunkSize => {
                    let Some(eol) = find(rest, b"\r\n") else {
                        if rest.len() > 1024 {
                            bail!("chunk size line too long");
                        }
                        break;
                    };
                    let line = std::str::from_utf8(&rest[..eol]).context("chunk size")?;
                    let hex = line.split(';').next().unwrap_or_default().trim();
                    let size = u64::from_str_radix(hex, 16)
                        .with_context(|| format!("bad chunk size {line:?}"))?;
                    used += eol + 2;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkDataEnd => {
                    if rest.len() < 2 {
                        break;
                    }
                    if &rest[..2] != b"\r\n" {
                        bail!("chunk not followed by CRLF");
                    }
                    used += 2;
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let Some(eol) = find(rest, b"\r\n") else {
                        break;
                    };
                    used += eol + 2;
                    if eol == 0 {
                        self.state = State::Done;
                    }
                }
            }
        }
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_and_rest() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1";
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.framing, Framing::Length(5));
        let mut body = Vec::new();
        let mut dec = BodyDecoder::new(head.framing);
        let used = dec.feed(&raw[head.len..], Some(&mut body)).unwrap();
        assert_eq!(used, 5);
        assert!(dec.is_done());
        assert_eq!(body, b"hello");
    }

    #[test]
    fn chunked_byte_by_byte() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\n!!!\r\n0\r\n\r\n";
        let head = parse_head(raw).unwrap().unwrap();
        let mut dec = BodyDecoder::new(head.framing);
        let mut body = Vec::new();
        let mut pending = Vec::new();
        for &b in &raw[head.len..] {
            pending.push(b);
            let used = dec.feed(&pending, Some(&mut body)).unwrap();
            pending.drain(..used);
        }
        assert!(dec.is_done());
        assert!(pending.is_empty());
        assert_eq!(body, b"hello!!!");
    }

    #[test]
    fn incomplete_head() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
    }
}
