//! The runtime form of a policy and what it does to one request and its
//! response.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::conditions::Conditions;
use crate::cors::Cors;
use crate::headers::{is_managed, Headers, Name, Value};
use crate::security::SecurityHeaders;
use crate::template::{Template, Uses};

/// What a policy knows about a request: filled by the host from the
/// request as the visitor sent it, before the policy changes any header,
/// and passed again for the response.
#[derive(Clone, Copy, Default)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// `Host` / `:authority` as sent, with or without a port.
    pub host: &'a str,
    /// The request target's path, with or without the query.
    pub path: &'a str,
    /// The edge route's name (`xds.route_name` in Envoy).
    pub route: Option<&'a str>,
    pub request_id: Option<&'a str>,
    /// The visitor's address, without a port.
    pub client_ip: Option<&'a str>,
    /// The request's `Origin` (see [`crate::single_value`]).
    pub origin: Option<&'a str>,
    /// The visitor's identity, for `{claim.<name>}`.
    pub claims: Option<&'a dyn Claims>,
}

impl<'a> RequestFacts<'a> {
    /// The host without its port (`[::1]:8080` → `[::1]`).
    pub fn host_without_port(&self) -> &'a str {
        let host = self.host;
        match host.rfind(':') {
            Some(i)
                if !host[i + 1..].contains(']')
                    && (!host.starts_with('[') || host[..i].ends_with(']')) =>
            {
                &host[..i]
            }
            _ => host,
        }
    }
}

impl fmt::Debug for RequestFacts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestFacts")
            .field("method", &self.method)
            .field("host", &self.host)
            .field("path", &self.path)
            .field("route", &self.route)
            .field("request_id", &self.request_id)
            .field("client_ip", &self.client_ip)
            .field("origin", &self.origin)
            .field("claims", &self.claims.map(|_| "…"))
            .finish()
    }
}

/// The visitor's identity claims (from the auth step), by name.
pub trait Claims {
    fn claim(&self, name: &str) -> Option<&str>;
}

impl Claims for BTreeMap<String, String> {
    fn claim(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl<S: std::hash::BuildHasher> Claims for HashMap<String, String, S> {
    fn claim(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Claims for Vec<(String, String)> {
    fn claim(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Claims for &[(&str, &str)] {
    fn claim(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// What to do with a request after [`Policy::on_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send it upstream with the (edited) headers.
    Continue,
    /// Answer it here (a CORS preflight); the response phase does not run.
    Respond(LocalResponse),
}

/// A response the policy answers with itself. No body; the host adds
/// framing (`content-length`) and its usual headers (`date`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    /// Lowercase names.
    pub headers: Vec<(&'static str, String)>,
}

/// What the host must tell the policy in [`RequestFacts`]; the rest may
/// stay empty. A host that pays per lookup (the proxy-wasm filter) asks
/// only for these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    pub method: bool,
    pub host: bool,
    pub path: bool,
    pub route: bool,
    pub request_id: bool,
    pub client_ip: bool,
    pub origin: bool,
    /// Claim names used by templates.
    pub claims: Vec<String>,
}

/// One compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) when: Conditions,
    pub(crate) remove: Vec<Name>,
    pub(crate) rename: Vec<(Name, Name)>,
    pub(crate) set: Vec<(Name, Template)>,
    pub(crate) append: Vec<(Name, Template)>,
}

impl Rule {
    fn apply(&self, facts: &RequestFacts<'_>, headers: &mut impl Headers) {
        for name in &self.remove {
            headers.remove_name(name);
        }
        for (from, to) in &self.rename {
            if headers.contains_name(from) {
                let values: Vec<Vec<u8>> = headers.get_all(from).map(<[u8]>::to_vec).collect();
                headers.remove_name(from);
                headers.remove_name(to);
                for v in &values {
                    headers.append_name(to, v);
                }
            }
        }
        for (name, template) in &self.set {
            match template.fixed_value() {
                Some(value) => headers.set_value(name, value),
                None => {
                    if let Some(value) = template.render(facts) {
                        headers.set_name(name, value.as_bytes());
                    }
                }
            }
        }
        for (name, template) in &self.append {
            match template.fixed_value() {
                Some(value) => headers.append_value(name, value),
                None => {
                    if let Some(value) = template.render(facts) {
                        headers.append_name(name, value.as_bytes());
                    }
                }
            }
        }
    }

    fn templates(&self) -> impl Iterator<Item = &Template> {
        self.set.iter().chain(&self.append).map(|(_, t)| t)
    }
}

/// Strip lists and rules for one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Direction {
    pub(crate) strip: Vec<Name>,
    /// Lowercase prefixes, from `x-internal-*`.
    pub(crate) strip_prefixes: Vec<String>,
    pub(crate) rules: Vec<Rule>,
}

impl Direction {
    fn apply(&self, facts: &RequestFacts<'_>, headers: &mut impl Headers) {
        for name in &self.strip {
            headers.remove_name(name);
        }
        if !self.strip_prefixes.is_empty() {
            let mut doomed: Vec<String> = Vec::new();
            for (name, _) in headers.iter() {
                let hit = self.strip_prefixes.iter().any(|p| {
                    name.len() >= p.len()
                        && name.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
                }) && !is_managed(name);
                if hit && !doomed.iter().any(|d| d.eq_ignore_ascii_case(name)) {
                    doomed.push(name.to_owned());
                }
            }
            for name in &doomed {
                headers.remove(name);
            }
        }
        for rule in &self.rules {
            if rule.when.matches(facts) {
                rule.apply(facts, headers);
            }
        }
    }

    fn then(&self, next: &Direction) -> Direction {
        fn cat<T: Clone + PartialEq>(a: &[T], b: &[T]) -> Vec<T> {
            let mut v = a.to_vec();
            v.extend(b.iter().filter(|x| !a.contains(x)).cloned());
            v
        }
        Direction {
            strip: cat(&self.strip, &next.strip),
            strip_prefixes: cat(&self.strip_prefixes, &next.strip_prefixes),
            rules: self.rules.iter().chain(&next.rules).cloned().collect(),
        }
    }

    fn is_noop(&self) -> bool {
        self.strip.is_empty() && self.strip_prefixes.is_empty() && self.rules.is_empty()
    }
}

/// CORS as one layer of policy states it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum CorsSetting {
    #[default]
    Inherit,
    Off,
    On(Box<Cors>),
}

/// A validated policy, ready to apply. Build one with
/// [`crate::RawPolicy::validate`] (or [`crate::from_text`]); layer a route's
/// over the default with [`Policy::then`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub(crate) request: Direction,
    pub(crate) response: Direction,
    pub(crate) security: SecurityHeaders,
    pub(crate) cors: CorsSetting,
    /// Derived from `security`: added when absent.
    pub(crate) security_headers: Vec<(Name, Value)>,
    pub(crate) needs: Needs,
}

impl Policy {
    /// Applies the policy to request headers as they go upstream. A CORS
    /// preflight is answered locally (the headers are then left as they
    /// were); otherwise the request strip list runs, then the request rules
    /// in order.
    pub fn on_request(&self, facts: &RequestFacts<'_>, headers: &mut impl Headers) -> Decision {
        if let Some(answer) = self.preflight(facts, headers) {
            return Decision::Respond(answer);
        }
        self.edit_request(facts, headers);
        Decision::Continue
    }

    /// The first half of [`Policy::on_request`]: the answer to a CORS
    /// preflight, when the request is one. For a host that answers
    /// preflights early and edits the request later, on another header map
    /// (the edge edits its upstream copy).
    pub fn preflight(
        &self,
        facts: &RequestFacts<'_>,
        headers: &impl Headers,
    ) -> Option<LocalResponse> {
        match &self.cors {
            CorsSetting::On(cors) => cors.preflight(facts, headers),
            _ => None,
        }
    }

    /// The second half of [`Policy::on_request`]: the request strip list,
    /// then the request rules in order.
    pub fn edit_request(&self, facts: &RequestFacts<'_>, headers: &mut impl Headers) {
        self.request.apply(facts, headers);
    }

    /// Applies the policy to response headers as they go to the visitor:
    /// the response strip list, the response rules in order, the security
    /// headers that are absent, then CORS. Not for local responses.
    pub fn on_response(&self, facts: &RequestFacts<'_>, headers: &mut impl Headers) {
        self.response.apply(facts, headers);
        for (name, value) in &self.security_headers {
            if !headers.contains_name(name) {
                headers.set_value(name, value);
            }
        }
        if let CorsSetting::On(cors) = &self.cors {
            cors.on_response(facts, headers);
        }
    }

    /// This policy (the edge's default) followed by a route's: request and
    /// response rules run default first, then the route's; strip lists are
    /// joined; each security header the route mentions replaces the
    /// default's (`false` turns it off); a route's `cors` replaces the
    /// default's whole block (`cors: false` turns it off).
    pub fn then(&self, route: &Policy) -> Policy {
        let cors = match &route.cors {
            CorsSetting::Inherit => self.cors.clone(),
            other => other.clone(),
        };
        Policy::assemble(
            self.request.then(&route.request),
            self.response.then(&route.response),
            route.security.over(&self.security),
            cors,
        )
    }

    /// Whether applying the policy can change anything.
    pub fn is_noop(&self) -> bool {
        !self.acts_on_request() && !self.acts_on_response()
    }

    /// Whether [`Policy::on_request`] can do anything (a host may skip
    /// reading the request headers when not).
    pub fn acts_on_request(&self) -> bool {
        !self.request.is_noop() || matches!(self.cors, CorsSetting::On(_))
    }

    /// Whether [`Policy::on_response`] can do anything.
    pub fn acts_on_response(&self) -> bool {
        !self.response.is_noop()
            || !self.security_headers.is_empty()
            || matches!(self.cors, CorsSetting::On(_))
    }

    /// Which facts the policy reads.
    pub fn needs(&self) -> &Needs {
        &self.needs
    }

    pub(crate) fn assemble(
        request: Direction,
        response: Direction,
        security: SecurityHeaders,
        cors: CorsSetting,
    ) -> Policy {
        let mut needs = Needs::default();
        for rule in request.rules.iter().chain(&response.rules) {
            needs.host |= !rule.when.hosts.is_empty();
            needs.path |= !rule.when.paths.is_empty();
            needs.method |= !rule.when.methods.is_empty();
            needs.route |= !rule.when.routes.is_empty();
            for t in rule.templates() {
                needs.request_id |= t.uses(Uses::RequestId);
                needs.client_ip |= t.uses(Uses::ClientIp);
                needs.route |= t.uses(Uses::Route);
                needs.host |= t.uses(Uses::Host);
                needs.method |= t.uses(Uses::Method);
                needs.path |= t.uses(Uses::Path);
                for c in t.claims() {
                    if !needs.claims.iter().any(|x| x == c) {
                        needs.claims.push(c.to_owned());
                    }
                }
            }
        }
        if matches!(cors, CorsSetting::On(_)) {
            needs.origin = true;
            needs.method = true;
        }
        Policy {
            security_headers: security.headers(),
            request,
            response,
            security,
            cors,
            needs,
        }
    }
}
