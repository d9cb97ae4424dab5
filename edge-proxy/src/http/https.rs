//! HTTPS policy for visitors: redirecting plain HTTP to HTTPS (except the
//! paths that must stay plain, like ACME HTTP-01 challenges) and
//! `Strict-Transport-Security` on HTTPS responses. Pure decisions; the proxy
//! writes the headers.

use crate::config::EdgeConfig;

/// Whether plain-HTTP requests may be redirected at all (cheap; checked
/// before the request's host is looked at).
pub fn redirects(config: &EdgeConfig, https_port: Option<u16>) -> bool {
    https_port.is_some() && config.tls.as_ref().is_some_and(|t| t.redirect_http)
}

/// Where a plain-HTTP request should go instead, if anywhere.
/// `https_port` is the port the HTTPS listener is bound to (`None`: no
/// HTTPS listener).
pub fn redirect_location(
    config: &EdgeConfig,
    https_port: Option<u16>,
    host: &str,
    path_and_query: &str,
) -> Option<String> {
    if !redirects(config, https_port) {
        return None;
    }
    let tls = config.tls.as_ref()?;
    if tls
        .plain_paths
        .iter()
        .any(|p| path_and_query.starts_with(p.as_str()))
    {
        return None;
    }
    let port = tls.redirect_port.or(https_port)?;
    let authority = if port == 443 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    Some(format!("https://{authority}{path_and_query}"))
}

/// The `Strict-Transport-Security` value for an HTTPS response to a request
/// for `host` (normalized), if a rule covers it.
pub fn hsts(config: &EdgeConfig, host: &str) -> Option<String> {
    let rules = &config.tls.as_ref()?.hsts;
    let rule = rules.iter().find(|r| r.host.matches(host))?;
    let mut value = format!("max-age={}", rule.max_age.as_secs());
    if rule.include_subdomains {
        value.push_str("; includeSubDomains");
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(tls_extra: &str) -> EdgeConfig {
        // Read at parse: the directory can go when this returns.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (cert, key) = self_signed(dir);
        let yaml = format!(
            "listen: {{ http: 127.0.0.1:80, https: 127.0.0.1:8443, tunnel: 127.0.0.1:7000 }}\npreview: {{ domains: [preview.test] }}\ntls:\n  certificates: [{{ cert: {cert}, key: {key} }}]\n{tls_extra}"
        );
        EdgeConfig::parse(&yaml, dir.join("edge.yaml").to_str().unwrap()).unwrap()
    }

    pub(super) fn self_signed(dir: &std::path::Path) -> (String, String) {
        // A fixed test certificate for test.preview.test (made with `dev-certs`).
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, TEST_CERT).unwrap();
        std::fs::write(&key, TEST_KEY).unwrap();
        (cert.display().to_string(), key.display().to_string())
    }

    #[test]
    fn redirects_plain_http_except_plain_paths() {
        let c = config("");
        assert_eq!(
            redirect_location(&c, Some(8443), "a.preview.test", "/x?y=1").as_deref(),
            Some("https://a.preview.test:8443/x?y=1")
        );
        assert_eq!(
            redirect_location(
                &c,
                Some(8443),
                "a.preview.test",
                "/.well-known/acme-challenge/t"
            ),
            None
        );
        let c = config("  redirect_port: 443\n");
        assert_eq!(
            redirect_location(&c, Some(8443), "a.preview.test", "/").as_deref(),
            Some("https://a.preview.test/")
        );
        let c = config("  redirect_http: false\n");
        assert_eq!(
            redirect_location(&c, Some(8443), "a.preview.test", "/"),
            None
        );
    }

    #[test]
    fn hsts_for_matching_hosts_only() {
        let c = config(
            "  hsts:\n    - { host: '*.preview.test', max_age: 1d, include_subdomains: true }\n",
        );
        assert_eq!(
            hsts(&c, "a.preview.test").as_deref(),
            Some("max-age=86400; includeSubDomains")
        );
        assert_eq!(hsts(&c, "preview.test"), None);
        assert_eq!(hsts(&c, "other.test"), None);
    }

    const TEST_CERT: &str = include_str!("../../tests/fixtures/test-cert.pem");
    const TEST_KEY: &str = include_str!("../../tests/fixtures/test-key.pem");
}
