//! Where a request goes, as pure decisions: the host a request names
//! ([`host`]), preview URLs (`<service>-<port>-<env>.<domain>`,
//! [`preview`]), custom-domain rules indexed by host and path ([`rules`]),
//! and how the edge speaks to a service ([`upstream`]).
//!
//! Uses only the values of `auth` (access rules) and `limits` (a route's
//! own limits): no I/O, no config loading, no sessions. The config
//! builds these values; `http` applies them to requests.

pub mod host;
pub mod preview;
pub mod rules;
pub mod upstream;
