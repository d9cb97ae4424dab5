//! Header values with placeholders (`{request_id}`, `{claim.sub}`), parsed
//! at load and rendered per request.

use std::borrow::Cow;

use crate::headers::{is_field_value, Value};
use crate::RequestFacts;

/// The placeholders a template may use, for error messages.
pub const PLACEHOLDERS: &str =
    "request_id, client_ip, route, host, method, path, claim.<name>; write {{ and }} for braces";

/// A parsed header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    /// The value when it has no placeholder (the common case: no rendering).
    fixed: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    RequestId,
    ClientIp,
    Route,
    Host,
    Method,
    Path,
    Claim(String),
}

impl Template {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            literal.push_str(&rest[..i]);
            let brace = rest.as_bytes()[i];
            let after = &rest[i + 1..];
            if after.as_bytes().first() == Some(&brace) {
                literal.push(brace as char);
                rest = &after[1..];
                continue;
            }
            if brace == b'}' {
                return Err("unmatched '}' (write }} for a literal brace)".into());
            }
            let Some(end) = after.find('}') else {
                return Err("unclosed '{' (write {{ for a literal brace)".into());
            };
            let name = &after[..end];
            let part = match name {
                "request_id" => Part::RequestId,
                "client_ip" => Part::ClientIp,
                "route" => Part::Route,
                "host" => Part::Host,
                "method" => Part::Method,
                "path" => Part::Path,
                _ => match name.strip_prefix("claim.") {
                    Some(claim) if is_claim_name(claim) => Part::Claim(claim.to_owned()),
                    _ => {
                        return Err(format!(
                            "unknown placeholder {{{name}}} (known: {PLACEHOLDERS})"
                        ))
                    }
                },
            };
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = &after[end + 1..];
        }
        literal.push_str(rest);
        let fixed = parts.is_empty().then(|| literal.clone());
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        let printable = |t: &str| t.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
        if !parts
            .iter()
            .all(|p| !matches!(p, Part::Text(t) if !printable(t)))
        {
            return Err("not a valid header value (printable ASCII only)".into());
        }
        if let Some(value) = &fixed {
            if !is_field_value(value) {
                return Err(
                    "not a valid header value (printable ASCII, no leading or trailing space)"
                        .into(),
                );
            }
        }
        Ok(Self {
            parts,
            fixed: fixed.map(Value::new),
        })
    }

    /// The value when it has no placeholder.
    pub fn fixed(&self) -> Option<&str> {
        self.fixed.as_deref()
    }

    /// [`Template::fixed`], prepared for hosts.
    pub fn fixed_value(&self) -> Option<&Value> {
        self.fixed.as_ref()
    }

    /// The value for this request, or `None` when a placeholder has no value
    /// here (no identity, no such claim, no request id, no route) or the
    /// result is not a valid header value; the header is then left alone.
    pub fn render<'a>(&'a self, facts: &RequestFacts<'_>) -> Option<Cow<'a, str>> {
        if let Some(fixed) = &self.fixed {
            return Some(Cow::Borrowed(fixed));
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::RequestId => out.push_str(facts.request_id?),
                Part::ClientIp => out.push_str(facts.client_ip?),
                Part::Route => out.push_str(facts.route?),
                Part::Host => {
                    let host = facts.host_without_port();
                    if host.is_empty() {
                        return None;
                    }
                    out.extend(host.chars().map(|c| c.to_ascii_lowercase()));
                }
                Part::Method => out.push_str(nonempty(facts.method)?),
                Part::Path => out.push_str(nonempty(facts.path)?),
                Part::Claim(name) => out.push_str(facts.claims?.claim(name)?),
            }
        }
        let trimmed = out.trim_matches([' ', '\t']);
        if !is_field_value(trimmed) {
            return None;
        }
        if trimmed.len() != out.len() {
            out = trimmed.to_owned();
        }
        Some(Cow::Owned(out))
    }

    /// The claims this template reads.
    pub(crate) fn claims(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Claim(c) => Some(c.as_str()),
            _ => None,
        })
    }

    pub(crate) fn uses(&self, what: Uses) -> bool {
        self.parts.iter().any(|p| {
            matches!(
                (p, what),
                (Part::RequestId, Uses::RequestId)
                    | (Part::ClientIp, Uses::ClientIp)
                    | (Part::Route, Uses::Route)
                    | (Part::Host, Uses::Host)
                    | (Part::Method, Uses::Method)
                    | (Part::Path, Uses::Path)
            )
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Uses {
    RequestId,
    ClientIp,
    Route,
    Host,
    Method,
    Path,
}

fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// A claim name: letters, digits, `_`, `-`, `.`, `:`, `/` (JWT claims are
/// often URLs or namespaced).
fn is_claim_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn facts<'a>(claims: &'a BTreeMap<String, String>) -> RequestFacts<'a> {
        RequestFacts {
            method: "GET",
            host: "App.Example.com:8443",
            path: "/a?b",
            route: Some("web"),
            request_id: Some("r-1"),
            client_ip: Some("192.0.2.7"),
            claims: Some(claims),
            ..Default::default()
        }
    }

    #[test]
    fn renders_every_placeholder() {
        let claims = BTreeMap::from([("sub".to_string(), "u-42".to_string())]);
        let t = Template::parse(
            "{request_id} {client_ip} {route} {host} {method} {path} {claim.sub} {{x}}",
        )
        .unwrap();
        assert_eq!(
            t.render(&facts(&claims)).unwrap(),
            "r-1 192.0.2.7 web app.example.com GET /a?b u-42 {x}"
        );
        assert_eq!(t.claims().collect::<Vec<_>>(), ["sub"]);
    }

    #[test]
    fn fixed_values_borrow() {
        let t = Template::parse("no placeholders, {{braces}}").unwrap();
        assert_eq!(t.fixed(), Some("no placeholders, {braces}"));
        let claims = BTreeMap::new();
        assert!(matches!(t.render(&facts(&claims)), Some(Cow::Borrowed(_))));
    }

    #[test]
    fn missing_values_skip_the_header() {
        let claims = BTreeMap::new();
        let t = Template::parse("user={claim.email}").unwrap();
        assert_eq!(t.render(&facts(&claims)), None);
        let t = Template::parse("{request_id}").unwrap();
        let f = RequestFacts::default();
        assert_eq!(t.render(&f), None);
    }

    #[test]
    fn rendered_values_are_checked_and_trimmed() {
        let claims = BTreeMap::from([
            ("bad".to_string(), "a\r\nx-injected: 1".to_string()),
            ("utf8".to_string(), "Zoë".to_string()),
            ("padded".to_string(), "  v ".to_string()),
        ]);
        let f = facts(&claims);
        assert_eq!(Template::parse("{claim.bad}").unwrap().render(&f), None);
        assert_eq!(Template::parse("{claim.utf8}").unwrap().render(&f), None);
        assert_eq!(
            Template::parse("{claim.padded}")
                .unwrap()
                .render(&f)
                .unwrap(),
            "v"
        );
    }

    #[test]
    fn parse_errors() {
        for (text, want) in [
            ("{nope}", "unknown placeholder {nope}"),
            ("{claim.}", "unknown placeholder {claim.}"),
            ("{claim.a b}", "unknown placeholder"),
            ("a{b", "unclosed"),
            ("a}b", "unmatched"),
            ("x\ny", "not a valid header value"),
            (" lead", "not a valid header value"),
        ] {
            let err = Template::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
