//! Sidecars that reach the edge over a WebSocket on its visitor ports
//! (`wss://edge/.preview/tunnel`), where only HTTPS gets out of their
//! network.
//!
//! The visitor listener takes the upgrade like any WebSocket; its upstream
//! is not a tunnel stream but [`IngressConnector`]: an in-process pipe
//! whose far end answers the handshake and serves the tunnel's HTTP/2
//! connection on the WebSocket's messages, as the tunnel listener serves
//! one on TCP ([`TunnelService::serve_connection`]). So a session over a
//! WebSocket is the same as any other from then on: the same Hello and
//! token, heartbeats, data streams with their own credit, and drain.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio_util::sync::CancellationToken;
use tracing::info;
use tunnel_transport::coalesce::CoalescingIo;
use tunnel_transport::websocket::{self, WsIo};

use crate::tunnel::service::TunnelService;

/// Bytes buffered each way in the pipe between Pingora and the tunnel's
/// HTTP/2 connection: HTTP/2's windows and the streams' credit are the
/// flow control; this only needs to hold a few of its frames.
const PIPE_BUFFER: usize = 256 * 1024;

/// What the visitor ports need to take sidecars' WebSockets.
#[derive(Clone)]
pub struct TunnelIngress {
    pub service: TunnelService,
    /// Cancelled when the edge stops serving tunnels (as the tunnel
    /// listener's connections are).
    pub stop: CancellationToken,
}

impl TunnelIngress {
    /// Pingora's upstream for the WebSocket of the sidecar at `peer`.
    pub fn connector(&self, peer: Option<SocketAddr>) -> IngressConnector {
        IngressConnector {
            ingress: self.clone(),
            peer,
        }
    }
}

/// A sidecar's WebSocket as Pingora's upstream: the connection the
/// handshake and the tunnel are served on, in this process.
pub struct IngressConnector {
    ingress: TunnelIngress,
    /// The sidecar's address, for the failed-authentication throttle.
    peer: Option<SocketAddr>,
}

impl std::fmt::Debug for IngressConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressConnector")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl L4Connect for IngressConnector {
    async fn connect(&self, _addr: &PeerAddr) -> pingora_error::Result<Stream> {
        let (pingora_end, tunnel_end) = tokio::io::duplex(PIPE_BUFFER);
        let TunnelIngress { service, stop } = self.ingress.clone();
        let peer = self.peer;
        tokio::spawn(async move {
            let ws =
                tokio_tungstenite::accept_async_with_config(tunnel_end, Some(websocket::config()));
            let ws = match ws.await {
                Ok(ws) => ws,
                Err(e) => return info!(?peer, error = %e, "tunnel WebSocket handshake failed"),
            };
            let io = CoalescingIo::new(WsIo::new(ws));
            service.serve_connection(io, peer, None, stop).await;
        });
        let socket = Pipe(pingora_end);
        Ok(Stream::from(VirtualSocketStream::new(Box::new(socket))))
    }
}

/// Pingora's end of the pipe.
#[derive(Debug)]
struct Pipe(DuplexStream);

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl VirtualSocket for Pipe {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> io::Result<()> {
        Ok(())
    }
}
