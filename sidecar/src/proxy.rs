//! Reaching the edge through an HTTP proxy (`CONNECT`), as networks that
//! let only HTTPS out require: `proxy:` in the config, else `HTTPS_PROXY`
//! (or `https_proxy`) from the environment, minus the hosts `NO_PROXY`
//! names and this machine.

use std::net::SocketAddr;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Secret;

/// A TCP connection to the edge at `host:port` (or the replica's
/// `address`), through `proxy` when it is for that host, without Nagle's
/// delay (small frames go out at once).
pub async fn dial(
    proxy: Option<&Proxy>,
    host: &str,
    port: u16,
    address: Option<SocketAddr>,
) -> Result<TcpStream, String> {
    let stream = match proxy.filter(|p| p.applies_to(host)) {
        Some(proxy) => return proxy.connect(host, port, address).await,
        None => match address {
            Some(address) => TcpStream::connect(address).await,
            None => TcpStream::connect((host, port)).await,
        },
    }
    .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Most bytes of the proxy's answer to `CONNECT` read before giving up.
const MAX_ANSWER: usize = 8 * 1024;

/// An HTTP proxy and which edges it is for.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// `host:port` of the proxy.
    pub address: String,
    /// `Proxy-Authorization` from the URL's `user:password@`.
    authorization: Option<Secret>,
    /// From the environment: not for this machine, nor for `NO_PROXY`'s
    /// hosts. A configured proxy is for every edge.
    from_env: Option<Vec<String>>,
}

impl Proxy {
    /// `http://[user:password@]host[:port]` (port 80 unless given).
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{url:?} must be an http:// URL (http://proxy.example.com:3128)")
        })?;
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        if hostport.is_empty() || hostport.contains('/') {
            return Err(format!("{url:?} must be http://host:port, with no path"));
        }
        let address = match hostport.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || hostport.starts_with('[') => {
                if host.is_empty() || port.parse::<u16>().is_err() {
                    return Err(format!("{url:?}: {hostport:?} is not host:port"));
                }
                hostport.to_string()
            }
            _ => format!("{hostport}:80"),
        };
        let authorization = userinfo.map(|u| {
            let token = base64::engine::general_purpose::STANDARD.encode(u);
            Secret::new(format!("Basic {token}"))
        });
        Ok(Self {
            address,
            authorization,
            from_env: None,
        })
    }

    /// The proxy `configured` names (its setting called `setting` in
    /// errors), else the one the environment names, if any.
    pub fn chosen(configured: Option<&str>, setting: &str) -> Result<Option<Self>, String> {
        match configured {
            Some(url) => Self::parse(url)
                .map(Some)
                .map_err(|e| format!("{setting}: {e}")),
            None => Self::from_env()
                .transpose()
                .map_err(|e| format!("HTTPS_PROXY (environment): {e}")),
        }
    }

    /// The proxy `HTTPS_PROXY` (or `https_proxy`) names, if any, with
    /// `NO_PROXY`'s exceptions.
    pub fn from_env() -> Option<Result<Self, String>> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let url = var("HTTPS_PROXY").or_else(|| var("https_proxy"))?;
        let no_proxy = var("NO_PROXY")
            .or_else(|| var("no_proxy"))
            .unwrap_or_default();
        let exceptions = no_proxy
            .split(',')
            .map(|h| h.trim().trim_start_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        Some(Self::parse(&url).map(|mut proxy| {
            proxy.from_env = Some(exceptions);
            proxy
        }))
    }

    /// Whether the edge at `host` is reached through this proxy.
    pub fn applies_to(&self, host: &str) -> bool {
        let Some(exceptions) = &self.from_env else {
            return true;
        };
        let local = crate::tls::is_loopback(host);
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        let excepted = exceptions.iter().any(|e| {
            e == "*"
                || host == *e
                || host
                    .strip_suffix(e.as_str())
                    .is_some_and(|h| h.ends_with('.'))
        });
        !local && !excepted
    }

    /// A connection to `target` (`host:port`, or the replica's `address`)
    /// through the proxy: `CONNECT`, then the bytes are the edge's.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        address: Option<SocketAddr>,
    ) -> Result<TcpStream, String> {
        let target = match address {
            Some(a) => a.to_string(),
            None if host.contains(':') => format!("[{host}]:{port}"),
            None => format!("{host}:{port}"),
        };
        let mut stream = TcpStream::connect(&self.address)
            .await
            .map_err(|e| format!("cannot connect to the proxy {}: {e}", self.address))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = &self.authorization {
            request.push_str(&format!("Proxy-Authorization: {}\r\n", auth.expose()));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("the proxy {} closed: {e}", self.address))?;
        // Byte by byte: what follows the answer's head is the edge's.
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\n") {
            if answer.len() >= MAX_ANSWER {
                return Err(format!(
                    "the proxy {}'s answer to CONNECT has no end",
                    self.address
                ));
            }
            let byte = stream.read_u8().await.map_err(|e| {
                format!(
                    "the proxy {} closed before answering CONNECT {target}: {e}",
                    self.address
                )
            })?;
            answer.push(byte);
        }
        let status_line = String::from_utf8_lossy(&answer);
        let status_line = status_line.lines().next().unwrap_or_default();
        let status = status_line.split_whitespace().nth(1).unwrap_or_default();
        match status {
            "200" => Ok(stream),
            "407" => Err(format!(
                "the proxy {} wants credentials ({status_line}): write them in its URL, http://user:password@host:port",
                self.address
            )),
            _ => Err(format!(
                "the proxy {} refused CONNECT {target}: {status_line}",
                self.address
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_are_checked() {
        let p = Proxy::parse("http://proxy.corp:3128").unwrap();
        assert_eq!(p.address, "proxy.corp:3128");
        assert!(p.authorization.is_none());
        assert_eq!(
            Proxy::parse("http://proxy.corp/").unwrap().address,
            "proxy.corp:80"
        );
        let p = Proxy::parse("http://alice:s3cret@[::1]:8080").unwrap();
        assert_eq!(p.address, "[::1]:8080");
        assert_eq!(
            p.authorization.unwrap().expose(),
            "Basic YWxpY2U6czNjcmV0" // alice:s3cret
        );
        for bad in [
            "proxy:3128",
            "https://proxy:3128",
            "http://",
            "http://p:x",
            "http://p:1/path",
        ] {
            assert!(Proxy::parse(bad).is_err(), "{bad}");
        }
    }

    /// A proxy from the environment skips this machine and `NO_PROXY`'s
    /// hosts (and their subdomains); a configured one is for every edge.
    #[test]
    fn environment_proxies_skip_their_exceptions() {
        let mut p = Proxy::parse("http://proxy:3128").unwrap();
        assert!(p.applies_to("127.0.0.1"));
        p.from_env = Some(vec!["internal.corp".into()]);
        assert!(p.applies_to("edge.example.com"));
        assert!(!p.applies_to("localhost"));
        assert!(!p.applies_to("[::1]"));
        assert!(!p.applies_to("internal.corp"));
        assert!(!p.applies_to("edge.internal.corp"));
        assert!(p.applies_to("notinternal.corp"));
    }
}
