//! The proxy-wasm header filter. Placeholder: built by its own issue.
