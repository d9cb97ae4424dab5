//! A visitor's request, from its connection to the log line: the typed
//! request context filled once ([`context`]), Pingora's phases in order
//! ([`phases`]), request → target ([`route`]), what the service is told
//! ([`forwarding`]), HTTPS redirects and HSTS ([`https`]), what went wrong
//! ([`failure`]) and the one place it becomes a response ([`errors`]), the
//! header policy on the way up and back ([`policy`]) and a route's
//! proxy-wasm filter after it ([`wasm`]), rate limits and concurrency caps
//! ([`limits`]), and the visitor's
//! connection itself: protocol sniffing, request-head deadline ([`visitor`]).
//!
//! The top room: may use every other. Capabilities that act on requests
//! (visitor auth, limits, header policy) hang off the context and the
//! phases here.

pub mod auth;
pub mod context;
pub mod errors;
pub mod failure;
pub mod forwarding;
pub mod https;
pub mod limits;
pub mod login;
pub mod phases;
pub mod policy;
pub mod route;
pub mod visitor;
pub mod wasm;
pub mod websocket;
