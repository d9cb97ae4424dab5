//! The header policy as a proxy-wasm HTTP filter (ABI 0.2.1): the same
//! policy the edge applies natively, in Envoy, Istio or the edge's own
//! proxy-wasm host. The plugin configuration is the policy, as YAML or JSON
//! (`docs/header-policy.md`); a policy that does not validate is refused in
//! `on_configure`, every problem logged.
//!
//! What the filter reads from the host, and where hosts differ:
//! - request headers and response headers, read once per phase and edited
//!   with single-header calls (a set is a remove then an add, the same on
//!   every host);
//! - method, host and path from the pseudo-headers when the map has them
//!   (Envoy), else from the properties `request.method`, `request.host`,
//!   `request.path` (the edge's host has no pseudo-headers);
//! - the request id from `x-request-id`, else the property `request.id`;
//! - the client IP from `source.address` (`ip:port`, `[ip]:port`);
//! - the route from `xds.route_name` (Envoy: the route's `name`);
//! - claims from `identity.claims.<name>`, which only the edge's host
//!   provides (Envoy has no such property: `{claim.*}` values are skipped).
//!
//! Only what the policy uses is asked for ([`header_policy::Needs`]).

use std::rc::Rc;

use header_policy::{Decision, HeaderList, Headers, Policy, RequestFacts};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
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
        let mut headers = HostHeaders::read(MapType::HttpRequestHeaders);
        self.facts = OwnedFacts::read(self.policy.needs(), &headers.list);
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
        if !self.answered {
            let mut headers = HostHeaders::read(MapType::HttpResponseHeaders);
            self.policy.on_response(&self.facts.facts(), &mut headers);
        }
        Action::Continue
    }
}

/// [`RequestFacts`] with owned strings, kept between the two phases.
#[derive(Default)]
struct OwnedFacts {
    method: String,
    host: String,
    path: String,
    route: Option<String>,
    request_id: Option<String>,
    client_ip: Option<String>,
    origin: Option<String>,
    claims: Vec<(String, String)>,
}

impl OwnedFacts {
    fn read(needs: &header_policy::Needs, headers: &HeaderList) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned)
        };
        let header_or_property =
            |name: &str, path: &[&str]| header(name).or_else(|| property(path)).unwrap_or_default();
        let mut facts = OwnedFacts::default();
        if needs.method {
            facts.method = header_or_property(":method", &["request", "method"]);
        }
        if needs.host {
            facts.host = header_or_property(":authority", &["request", "host"]);
        }
        if needs.path {
            facts.path = header_or_property(":path", &["request", "path"]);
        }
        if needs.route {
            facts.route = property(&["xds", "route_name"]).filter(|r| !r.is_empty());
        }
        if needs.request_id {
            facts.request_id = header("x-request-id").or_else(|| property(&["request", "id"]));
        }
        if needs.client_ip {
            facts.client_ip = property(&["source", "address"]).map(|a| ip_of(&a).to_owned());
        }
        if needs.origin {
            facts.origin = header_policy::single_value(headers, "origin").map(str::to_owned);
        }
        for name in &needs.claims {
            if let Some(value) = property(&["identity", "claims", name]) {
                facts.claims.push((name.clone(), value));
            }
        }
        facts
    }

    fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            method: &self.method,
            host: &self.host,
            path: &self.path,
            route: self.route.as_deref(),
            request_id: self.request_id.as_deref(),
            client_ip: self.client_ip.as_deref(),
            origin: self.origin.as_deref(),
            claims: Some(&self.claims),
        }
    }
}

/// A string property, `None` when absent or not UTF-8.
fn property(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok()??;
    String::from_utf8(bytes).ok()
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

/// One of the host's header maps: read once, edited through single-header
/// calls so nothing else in the map moves.
struct HostHeaders {
    map: MapType,
    list: HeaderList,
}

impl HostHeaders {
    fn read(map: MapType) -> Self {
        let pairs = hostcalls::get_map_bytes(map).unwrap_or_default();
        HostHeaders {
            map,
            list: HeaderList::from_pairs(pairs),
        }
    }
}

impl Headers for HostHeaders {
    fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.list.get_all(name)
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        Headers::iter(&self.list)
    }

    fn set(&mut self, name: &str, value: &[u8]) {
        self.remove(name);
        self.append(name, value);
    }

    fn append(&mut self, name: &str, value: &[u8]) {
        self.list.append(name, value);
        let _ = hostcalls::add_map_value_bytes(self.map, name, value);
    }

    fn remove(&mut self, name: &str) {
        self.list.remove(name);
        let _ = hostcalls::remove_map_value(self.map, name);
    }
}
