//! An HTTP `CONNECT` proxy, as corporate networks put between a sidecar
//! and the internet: it opens a TCP connection to the target a client
//! names and then moves bytes, and it can require credentials. It runs on
//! a thread of its own (tests that use it may have no runtime) and counts
//! the tunnels it opened, by target.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running proxy on `127.0.0.1`; stops when dropped.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ConnectProxy {
    /// A proxy that lets anyone through.
    pub fn start() -> Self {
        Self::spawn(None)
    }

    /// A proxy that wants `Proxy-Authorization: Basic` of `user:password`
    /// (407 without it).
    pub fn with_credentials(user_password: &str) -> Self {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(user_password);
        Self::spawn(Some(format!("Basic {token}")))
    }

    fn spawn(authorization: Option<String>) -> Self {
        let targets = Arc::new(Mutex::new(Vec::new()));
        let (seen, authorization) = (targets.clone(), Arc::new(authorization));
        let (addr, stop) = crate::background::accept_on_thread(move |client| {
            let (seen, authorization) = (seen.clone(), authorization.clone());
            async move {
                let _ = tunnel(client, &authorization, &seen).await;
            }
        });
        Self {
            addr,
            targets,
            _stop: stop,
        }
    }

    /// The targets of the tunnels opened so far, in order.
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }

    /// `http://127.0.0.1:port`, with `user:password@` when given.
    pub fn url(&self, credentials: Option<&str>) -> String {
        match credentials {
            Some(c) => format!("http://{c}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }
}

/// Serves one client: its `CONNECT`, then bytes both ways.
async fn tunnel(
    mut client: TcpStream,
    authorization: &Option<String>,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Ok(());
        }
        head.push(client.read_u8().await?);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut request_line = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (request_line.next(), request_line.next());
    let (Some("CONNECT"), Some(target)) = (method, target) else {
        return client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
    };
    if let Some(wanted) = authorization {
        let given = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("proxy-authorization")
                .then(|| value.trim().to_string())
        });
        if given.as_deref() != Some(wanted.as_str()) {
            return client
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm=\"test\"\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
    };
    seen.lock().unwrap().push(target.to_string());
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
