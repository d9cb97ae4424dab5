//! The edge, the tunnel and the sidecar in one process (the harness in
//! `test_support`): one test executable for both modules.

mod protocol;
mod tunnel;
