//! The header policy as a proxy-wasm HTTP filter (ABI 0.2.1): the same
//! policy the edge applies natively, in Envoy, Istio or the edge's own
//! proxy-wasm host. The plugin configuration is the policy, as YAML or JSON
//! (`docs/header-policy.md`); a policy that does not validate is refused in
//! `on_configure`, every problem logged.
//!
//! What the filter reads from the host, and where hosts differ:
//! - request headers and response headers, read once per phase and edited
//!   with single-header calls (a set is `proxy_replace_header_map_value`:
//!   every value removed, one added, in Envoy and in the edge's host);
//! - method, host and path from the pseudo-headers `:method`, `:authority`,
//!   `:path` (Envoy and the edge's host both have them), else from the
//!   properties `request.method`, `request.host`, `request.path`;
//! - the request id from `x-request-id`, else the property `request.id`;
//! - the client IP from `source.address` (`ip:port`, `[ip]:port`);
//! - the route from `xds.route_name` (Envoy: the route's `name`);
//! - claims from `identity.claims.<name>`, which only the edge's host
//!   provides (Envoy has no such property: `{claim.*}` values are skipped).
//!
//! Only what the policy uses is asked for ([`header_policy::Needs`]).

use std::rc::Rc;

mod host;

use header_policy::{Decision, Headers, Policy, RequestFacts};
use host::{property, HostHeaders};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static TALC: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(PolicyRoot { policy: Rc::new(Policy::default()) })
    });
}}

fn log(level: LogLevel, message: &str) {
    // Logging cannot fail in a way the filter could act on.
    let _ = hostcalls::log(level, message);
}

struct PolicyRoot {
    policy: Rc<Policy>,
}

impl Context for PolicyRoot {}

impl RootContext for PolicyRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let Ok(text) = std::str::from_utf8(&config) else {
            log(
                LogLevel::Error,
                "header policy refused: the plugin configuration is not UTF-8",
            );
            return false;
        };
        match header_policy::from_text(text) {
            Ok(policy) => {
                if policy.is_noop() {
                    log(
                        LogLevel::Warn,
                        "header policy is empty: the filter changes nothing",
                    );
                }
                self.policy = Rc::new(policy);
                true
            }
            Err(problems) => {
                log(
                    LogLevel::Error,
                    &format!("header policy refused: {} problem(s)", problems.len()),
                );
                for p in &problems {
                    log(LogLevel::Error, &format!("header policy: {p}"));
                }
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(PolicyStream {
            policy: self.policy.clone(),
            facts: OwnedFacts::default(),
            answered: false,
        }))
    }
}

/// One request/response pair.
struct PolicyStream {
    policy: Rc<Policy>,
    /// Read in the request phase, used again for the response.
    facts: OwnedFacts,
    /// A local response was sent: the response phase leaves it alone.
    answered: bool,
}

impl Context for PolicyStream {}

impl HttpContext for PolicyStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.policy.is_noop() {
            return Action::Continue;
        }
        let mut headers = HostHeaders::read(MapType::HttpRequestHeaders);
        self.facts = OwnedFacts::read(self.policy.needs(), &headers);
        match self.policy.on_request(&self.facts.facts(), &mut headers) {
            Decision::Continue => Action::Continue,
            Decision::Respond(answer) => {
                let pairs: Vec<(&str, &str)> = answer
                    .headers
                    .iter()
                    .map(|(n, v)| (*n, v.as_str()))
                    .collect();
                self.send_http_response(u32::from(answer.status), pairs, None);
                self.answered = true;
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.answered && self.policy.acts_on_response() {
            let mut headers = HostHeaders::read(MapType::HttpResponseHeaders);
            self.policy.on_response(&self.facts.facts(), &mut headers);
        }
        Action::Continue
    }
}

/// [`RequestFacts`] kept between the two phases, in one buffer.
#[derive(Default)]
struct OwnedFacts {
    buf: String,
    method: (usize, usize),
    host: (usize, usize),
    path: (usize, usize),
    route: Option<(usize, usize)>,
    request_id: Option<(usize, usize)>,
    client_ip: Option<(usize, usize)>,
    origin: Option<(usize, usize)>,
    claims: Vec<(String, String)>,
}

impl OwnedFacts {
    fn read(needs: &header_policy::Needs, headers: &HostHeaders) -> Self {
        let mut facts = OwnedFacts::default();
        let header =
            |name: &'static str| headers.get(name).and_then(|v| std::str::from_utf8(v).ok());
        let keep = |buf: &mut String, value: Option<&str>| {
            value.map(|v| {
                buf.push_str(v);
                (buf.len() - v.len(), buf.len())
            })
        };
        let keep_owned = |buf: &mut String, value: Option<String>| keep(buf, value.as_deref());
        let empty = (0, 0);
        if needs.method {
            facts.method = match header(":method") {
                Some(m) => keep(&mut facts.buf, Some(m)),
                None => keep_owned(&mut facts.buf, property(b"request\0method")),
            }
            .unwrap_or(empty);
        }
        if needs.host {
            facts.host = match header(":authority") {
                Some(h) => keep(&mut facts.buf, Some(h)),
                None => keep_owned(&mut facts.buf, property(b"request\0host")),
            }
            .unwrap_or(empty);
        }
        if needs.path {
            facts.path = match header(":path") {
                Some(p) => keep(&mut facts.buf, Some(p)),
                None => keep_owned(&mut facts.buf, property(b"request\0path")),
            }
            .unwrap_or(empty);
        }
        if needs.route {
            let route = property(b"xds\0route_name").filter(|r| !r.is_empty());
            facts.route = keep_owned(&mut facts.buf, route);
        }
        if needs.request_id {
            facts.request_id = match header("x-request-id") {
                Some(id) => keep(&mut facts.buf, Some(id)),
                None => keep_owned(&mut facts.buf, property(b"request\0id")),
            };
        }
        if needs.client_ip {
            let address = property(b"source\0address");
            facts.client_ip = keep(&mut facts.buf, address.as_deref().map(ip_of));
        }
        if needs.origin {
            facts.origin = keep(
                &mut facts.buf,
                header_policy::single_value(headers, "origin"),
            );
        }
        for name in &needs.claims {
            let path = [&b"identity\0claims\0"[..], name.as_bytes()].concat();
            if let Some(value) = property(&path) {
                facts.claims.push((name.clone(), value));
            }
        }
        facts
    }

    fn facts(&self) -> RequestFacts<'_> {
        let s = |(a, b): (usize, usize)| &self.buf[a..b];
        RequestFacts {
            method: s(self.method),
            host: s(self.host),
            path: s(self.path),
            route: self.route.map(s),
            request_id: self.request_id.map(s),
            client_ip: self.client_ip.map(s),
            origin: self.origin.map(s),
            claims: Some(&self.claims),
        }
    }
}

/// The IP of `ip:port`, `[v6]:port`, or a bare address.
fn ip_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match address.split_once(':') {
        Some((ip, port)) if !port.contains(':') => ip,
        _ => address,
    }
}
