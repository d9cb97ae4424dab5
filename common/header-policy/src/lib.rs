//! Header policy: one policy, written once in YAML, applied the same way by
//! the edge (natively), by the proxy-wasm filter in our edge's host, and by
//! the same filter in Envoy or Istio.
//!
//! A policy sets, appends, removes and renames request and response headers
//! under conditions (host, path prefix, method, route), with values
//! templated from the request (`{request_id}`, `{client_ip}`, `{claim.sub}`,
//! ...); strips headers (`Server`, `X-Powered-By`, internal ones); adds
//! security headers (HSTS, `X-Content-Type-Options`, `Referrer-Policy`,
//! `X-Frame-Options`, CSP `frame-ancestors`); and answers CORS preflights
//! for configured origins. The field reference is `docs/header-policy.md`.
//!
//! Pure logic: no I/O, no proxy types, builds for `wasm32-unknown-unknown`.
//! The host implements [`Headers`] over its header map and fills
//! [`RequestFacts`]; nothing is allocated for a rule that does not apply.
//!
//! # Layout
//! - [`config`]: the YAML/JSON as written (`RawPolicy`), unknown fields refused.
//! - [`validate`]: raw → [`Policy`], every problem with its YAML path.
//! - [`policy`]: the runtime form, [`Policy::on_request`] / [`Policy::on_response`],
//!   layering a route's policy over the default ([`Policy::then`]).
//! - [`headers`]: the [`Headers`] trait, [`HeaderList`], name and value rules.
//! - `template`, `conditions`, `security`, `cors`: the parts a policy is made of.

pub mod conditions;
pub mod config;
mod cors;
pub mod headers;
pub mod policy;
mod security;
pub mod template;
pub mod validate;

pub use config::RawPolicy;
pub use cors::DEFAULT_ALLOW_METHODS;
pub use headers::{
    is_field_value, is_managed, is_token, is_token_bytes, single_value, HeaderList, Headers, Name,
    Value, MANAGED_NAMES,
};
pub use policy::{Claims, Decision, LocalResponse, Needs, Policy, RequestFacts};
pub use security::{
    DEFAULT_HSTS_MAX_AGE, RECOMMENDED_FRAME_ANCESTORS, RECOMMENDED_FRAME_OPTIONS,
    RECOMMENDED_REFERRER_POLICY,
};
pub use validate::compile;

/// Reads a policy written as JSON (text starting with `{`) or YAML
/// (anything else); empty text is the empty policy. The error is the
/// parser's message, with line and column.
#[cfg(all(feature = "yaml", feature = "json"))]
pub fn parse(text: &str) -> Result<RawPolicy, String> {
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Ok(RawPolicy::default());
    }
    if trimmed.starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("JSON: {e}"))
    } else {
        serde_saphyr::from_str(text).map_err(|e| format!("YAML: {e}"))
    }
}

/// [`parse`] then [`RawPolicy::validate`] at the top of the text: what the
/// proxy-wasm filter does with its plugin configuration.
#[cfg(all(feature = "yaml", feature = "json"))]
pub fn from_text(text: &str) -> Result<Policy, Vec<String>> {
    parse(text).map_err(|e| vec![e])?.validate("")
}

#[cfg(all(test, feature = "yaml", feature = "json"))]
mod tests;
