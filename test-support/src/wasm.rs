//! The header-policy filter module for tests: `$HEADER_POLICY_WASM` if set
//! (`scripts/test` builds it first), else built once per test binary by
//! `scripts/build-wasm` into the running test's target directory (a second
//! of cargo when nothing changed).
//!
//! Only `std`: the wasm host's own tests include this file by path rather
//! than depend on this crate (which pulls in the edge and the sidecar).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The target directory the running test executable lives in
/// (`target/<profile>/deps/<test>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// The path of the built `header-policy.wasm`.
pub fn header_policy_wasm() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("HEADER_POLICY_WASM") {
            return p.into();
        }
        // The crate that includes this file is somewhere under the root.
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|dir| dir.join("scripts/build-wasm"))
            .find(|script| script.exists())
            .expect("scripts/build-wasm above the crate");
        let out = Command::new(script)
            .env("CARGO_TARGET_DIR", target_dir())
            .output()
            .expect("run scripts/build-wasm");
        assert!(
            out.status.success(),
            "scripts/build-wasm failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}
