//! Raw TCP through the edge, over a WebSocket at the edge's
//! [`TCP_PATH`]: [`access`] on the visitor's machine (`sidecar access tcp`)
//! carries each local connection as one WebSocket; [`serve`] at the
//! sidecar answers it and pipes to the target. Binary messages are the
//! connection's bytes; an empty one ends its direction (half-close, which
//! WebSocket has no frame for); anything else is refused.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{info, warn};

use tunnel_transport::websocket::io_error;

use crate::config::EdgeTransport;
use crate::stream::Stats;

pub use tunnel_transport::websocket::TCP_PATH;

/// Bytes read from a connection per message.
const CHUNK: usize = 64 * 1024;

/// Frames and messages larger than any this side sends are refused (the
/// tunnel's WebSocket settings, with reads sized for one connection's).
fn ws_config() -> WebSocketConfig {
    tunnel_transport::websocket::config()
        .read_buffer_size(tunnel_transport::websocket::TCP_READ_BUFFER)
}

/// At the sidecar: answers the visitor's WebSocket handshake on the tunnel
/// stream and pipes its messages to `target`.
pub async fn serve<S>(stream: S, target: TcpStream, stats: &Stats) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config()))
        .await
        .map_err(io_error)?;
    let mut stream = relay(ws, target, Some(stats)).await?;
    // Dropped before the edge has ended its side, the tunnel stream would
    // be reset, and what is still queued of the last messages lost.
    let mut rest = [0u8; 1024];
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while stream.read(&mut rest).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    Ok(())
}

/// How long a finished connection waits for the other end's Close, and
/// then for the stream under it to end.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Pipes `tcp` and `ws` both ways until both directions have ended, then
/// closes the WebSocket (both Close frames exchanged) and shuts down the
/// stream under it, which it returns.
async fn relay<S>(ws: WebSocketStream<S>, tcp: TcpStream, stats: Option<&Stats>) -> io::Result<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut to_ws, mut from_ws) = ws.split();
    let (mut rd, mut wr) = tcp.into_split();
    let count = |which: fn(&Stats) -> &std::sync::atomic::AtomicU64, n: usize| {
        if let Some(stats) = stats {
            stats.add(which, n as u64);
        }
    };
    let outbound = async {
        let mut buf = vec![0; CHUNK];
        loop {
            let n = rd.read(&mut buf).await?;
            count(|s| &s.bytes_from_targets, n);
            // An empty message says this direction ended.
            let message = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
            to_ws.send(message).await.map_err(io_error)?;
            if n == 0 {
                return Ok::<_, io::Error>(());
            }
        }
    };
    let inbound = async {
        while let Some(message) = from_ws.next().await {
            match message.map_err(io_error)? {
                Message::Binary(data) if data.is_empty() => break,
                Message::Binary(data) => {
                    count(|s| &s.bytes_to_targets, data.len());
                    wr.write_all(&data).await?;
                }
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => {}
                Message::Text(_) | Message::Frame(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a TCP WebSocket carries binary messages only",
                    ))
                }
            }
        }
        wr.shutdown().await
    };
    tokio::try_join!(outbound, inbound)?;
    let mut ws = to_ws
        .reunite(from_ws)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let mut stream = ws.into_inner();
    let _ = stream.shutdown().await;
    Ok(stream)
}

/// How `sidecar access tcp` reaches a TCP service.
pub struct Access {
    /// The service's host name at the edge (a preview host or a route's).
    pub host: String,
    /// Where the edge's HTTPS (or, on this machine, HTTP) listener is:
    /// host (looked up at each connection, or by the proxy) and port.
    pub edge_host: String,
    pub edge_port: u16,
    /// TLS to the edge, the certificate checked for `host`; or plaintext.
    pub transport: EdgeTransport,
    /// The visitor's bearer token, if the route asks for one.
    pub token: Option<String>,
    /// The HTTP proxy the edge is reached through, if any.
    pub proxy: Option<crate::proxy::Proxy>,
}

/// Listens on `listen` and carries each connection to the service: prints
/// `listening ADDR` once bound.
pub async fn access(listen: SocketAddr, access: Access) -> io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening {} -> {}", listener.local_addr()?, access.host);
    let access = Arc::new(access);
    loop {
        let (local, peer) = listener.accept().await?;
        let access = access.clone();
        tokio::spawn(async move {
            let _ = local.set_nodelay(true);
            match access.connect().await {
                Ok(ws) => {
                    if let Err(e) = relay(ws, local, None).await.map(drop) {
                        info!(%peer, error = %e, "connection ended abnormally");
                    }
                }
                Err(e) => warn!(%peer, host = %access.host, error = %e, "cannot reach the service"),
            }
        });
    }
}

/// A stream to the edge, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Access {
    /// One WebSocket to the service, through the edge.
    async fn connect(&self) -> Result<WebSocketStream<Box<dyn Io>>, String> {
        let (host, port) = (self.edge_host.as_str(), self.edge_port);
        let tcp = crate::proxy::dial(self.proxy.as_ref(), host, port, None)
            .await
            .map_err(|e| format!("connecting to the edge at {host}:{port}: {e}"))?;
        let (scheme, stream): (_, Box<dyn Io>) = match &self.transport {
            EdgeTransport::Plaintext { .. } => ("ws", Box::new(tcp)),
            EdgeTransport::Tls(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let stream = connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(|e| crate::tls::explain(&e, tls))?;
                ("wss", Box::new(stream))
            }
        };
        let mut request = format!("{scheme}://{}{TCP_PATH}", self.host)
            .into_client_request()
            .map_err(|e| e.to_string())?;
        if let Some(token) = &self.token {
            let bearer = format!("Bearer {token}")
                .parse()
                .map_err(|_| "the token has characters not allowed in a header")?;
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, bearer);
        }
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()))
                .await
                .map_err(upgrade_refused)?;
        Ok(ws)
    }
}

/// What the edge said when it did not upgrade: its status and the message
/// of its error shape (or its body as text).
pub(crate) fn upgrade_refused(e: tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(response) => {
            let body = response.body().as_deref().unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
            format!("the edge answered {}: {message}", response.status())
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sidecar's end on one side of an in-memory stream, a target
    /// that echoes; returns the visitor's end, already past the handshake.
    async fn served() -> (
        WebSocketStream<tokio::io::DuplexStream>,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = target.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = target.accept().await.unwrap();
            let (mut rd, mut wr) = conn.split();
            let _ = tokio::io::copy(&mut rd, &mut wr).await;
        });
        let (visitor, sidecar) = tokio::io::duplex(64 * 1024);
        let tcp = TcpStream::connect(addr).await.unwrap();
        let stats = Arc::new(Stats::default());
        let server = tokio::spawn(async move { serve(sidecar, tcp, &stats).await });
        let (ws, _) = tokio_tungstenite::client_async("ws://db.example.test/.preview/tcp", visitor)
            .await
            .unwrap();
        (ws, server)
    }

    #[tokio::test]
    async fn binary_messages_are_the_bytes_and_an_empty_one_ends_the_direction() {
        let (mut ws, server) = served().await;
        ws.send(Message::binary(&b"hello"[..])).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(&b"hello"[..])
        );
        ws.send(Message::binary(Bytes::new())).await.unwrap();
        // The echo service sees the end, ends its side: an empty message.
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(Bytes::new())
        );
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
        drop(ws); // the tunnel stream's end, which the sidecar waits for
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn text_and_oversized_messages_are_refused() {
        let (mut ws, server) = served().await;
        ws.send(Message::text("SELECT 1")).await.unwrap();
        let e = server.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("binary messages only"), "{e}");

        let (ws, server) = served().await;
        // A raw frame over the 1 MiB limit, past the client's own checks.
        let mut raw = ws.into_inner();
        let mut head = vec![0x82, 0x80 | 127];
        head.extend_from_slice(&(2u64 * 1024 * 1024).to_be_bytes());
        head.extend_from_slice(&[0, 0, 0, 0]);
        raw.write_all(&head).await.unwrap();
        let e = server.await.unwrap().unwrap_err();
        assert!(e.to_string().to_lowercase().contains("too"), "{e}");
    }
}
