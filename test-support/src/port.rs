//! A local port nobody answers on.
//!
//! Binding port 0 and dropping the listener frees the port for anyone: a
//! test running in parallel may take it and answer. A [`ClosedPort`] keeps
//! a socket bound to the port without listening on it, for as long as the
//! test holds it: connecting is refused at once (Linux answers a SYN to a
//! port without a listener with RST), and no other socket can bind it (the
//! held one does not set `SO_REUSEADDR`, so even a listener that does is
//! refused).

use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};

/// A loopback port that refuses connections while this value lives.
pub struct ClosedPort {
    pub addr: SocketAddr,
    _held: Socket,
}

impl ClosedPort {
    pub fn new() -> Self {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a TCP socket");
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind a loopback port");
        let addr = socket
            .local_addr()
            .expect("its address")
            .as_socket()
            .expect("an IP address");
        Self {
            addr,
            _held: socket,
        }
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use super::*;

    #[test]
    fn connecting_is_refused() {
        let closed = ClosedPort::new();
        let err = std::net::TcpStream::connect(closed.addr).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    }

    #[test]
    fn nobody_else_can_listen_on_it() {
        let closed = ClosedPort::new();
        // std's listener sets SO_REUSEADDR, as most servers do.
        let err = std::net::TcpListener::bind(closed.addr).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
        let err = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
            .block_on(tokio::net::TcpListener::bind(closed.addr))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
    }
}
