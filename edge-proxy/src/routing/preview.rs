//! Preview URLs: `<service>-<port>-<environment>.<preview domain>`.
//!
//! Service names may contain `-`; the last two `-`-separated parts of the
//! first label are the port and the environment.

use yaml_config::is_label;

use super::host::normalize_host;
pub use super::host::HostError;

/// A service as visitors name it: environment, service name and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceRef {
    pub service: String,
    pub port: u16,
    pub environment: String,
}

/// `environment/service:port`, as `routes[].target` names it.
impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.environment, self.service, self.port)
    }
}

impl ServiceRef {
    /// Resolves a `Host` header value (which may carry a port) against the
    /// preview domains.
    pub fn from_preview_host(host: &str, domains: &[String]) -> Result<Self, HostError> {
        Self::from_normalized_host(&normalize_host(host)?, domains)
    }

    /// Like `from_preview_host`, for a host `normalize_host` returned.
    pub fn from_normalized_host(host: &str, domains: &[String]) -> Result<Self, HostError> {
        let label = domains
            .iter()
            .find_map(|d| host.strip_suffix(d.as_str())?.strip_suffix('.'))
            .ok_or(HostError::NotFound)?;
        if label.contains('.') || !is_label(label) {
            return Err(HostError::NotFound);
        }
        let mut parts = label.rsplitn(3, '-');
        let (Some(environment), Some(port), Some(service)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(HostError::NotFound);
        };
        let port: u16 = match port.parse() {
            Ok(p) if p > 0 && !port.starts_with('0') => p,
            _ => return Err(HostError::NotFound),
        };
        if !is_label(service) || environment.is_empty() {
            return Err(HostError::NotFound);
        }
        Ok(Self {
            service: service.into(),
            port,
            environment: environment.into(),
        })
    }

    /// The host name of this preview URL under `domain`.
    pub fn host(&self, domain: &str) -> String {
        format!(
            "{}-{}-{}.{}",
            self.service, self.port, self.environment, domain
        )
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn domains() -> Vec<String> {
        vec!["preview.example.com".into(), "preview.localhost".into()]
    }

    fn parse(host: &str) -> Result<ServiceRef, HostError> {
        ServiceRef::from_preview_host(host, &domains())
    }

    #[test]
    fn parses_service_port_environment() {
        let p = parse("webapp-8080-x7k2p9.preview.example.com").unwrap();
        assert_eq!(
            p,
            ServiceRef {
                service: "webapp".into(),
                port: 8080,
                environment: "x7k2p9".into()
            }
        );
    }

    #[test]
    fn service_names_may_contain_dashes() {
        let p = parse("my-web-app-3000-demo.preview.localhost:8080").unwrap();
        assert_eq!(p.service, "my-web-app");
        assert_eq!(p.port, 3000);
        assert_eq!(p.environment, "demo");
        assert_eq!(
            p.host("preview.localhost"),
            "my-web-app-3000-demo.preview.localhost"
        );
    }

    #[test]
    fn host_is_case_insensitive_and_may_end_with_a_dot() {
        let p = parse("WebApp-80-Demo.Preview.Localhost.").unwrap();
        assert_eq!(
            (p.service.as_str(), p.environment.as_str()),
            ("webapp", "demo")
        );
        assert_eq!(
            normalize_host("A.Preview.Localhost.:80").unwrap(),
            "a.preview.localhost"
        );
        // Already normal: borrowed, not copied.
        assert!(matches!(
            normalize_host("a.preview.localhost:80").unwrap(),
            Cow::Borrowed("a.preview.localhost")
        ));
    }

    #[test]
    fn unknown_hosts_are_not_found() {
        for host in [
            "example.com",
            "preview.localhost",
            "webapp-8080.preview.localhost",
            "webapp-0-demo.preview.localhost",
            "webapp-080-demo.preview.localhost",
            "webapp-99999-demo.preview.localhost",
            "webapp-x-demo.preview.localhost",
            "-8080-demo.preview.localhost",
            "a.webapp-8080-demo.preview.localhost",
            "webapp-8080-demo.evilpreview.localhost",
            "[::1]:8080",
        ] {
            assert_eq!(parse(host), Err(HostError::NotFound), "{host}");
        }
    }

    #[test]
    fn malformed_hosts_are_rejected() {
        for host in [
            "a b.preview.localhost",
            "x.preview.localhost:http",
            "a/b",
            "é.preview.localhost",
        ] {
            assert_eq!(parse(host), Err(HostError::Malformed), "{host}");
        }
        assert_eq!(parse(""), Err(HostError::Missing));
    }
}
