//! The examples in `configs/` work: the policy validates and loads in our
//! host, the Envoy bootstrap passes `envoy --mode validate` with the built
//! module (and fails with the filter's reason when the policy is bad), and
//! the Istio WasmPlugin's `pluginConfig`, delivered as JSON as Istio does,
//! is a valid policy.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use wasm_host::{LoadError, PluginSpec, WasmFilter};

fn config(name: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

#[test]
fn the_example_policy_validates_and_loads_in_our_host() {
    let (_, text) = config("header-policy.yaml");
    let policy = header_policy::from_text(&text).unwrap_or_else(|p| panic!("{p:#?}"));
    assert!(!policy.is_noop());
    common::load_policy(&text);
}

#[test]
fn our_host_refuses_a_bad_policy_with_the_filter_s_reasons() {
    let err = WasmFilter::new(
        common::filter_module(),
        PluginSpec {
            name: "header-policy".into(),
            configuration: b"response: [{set: {'x bad': v}}]\nstrip: {request: ['*']}".to_vec(),
            ..Default::default()
        },
    )
    .err()
    .expect("refused");
    let LoadError::Refused { log } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        log,
        &[
            "header policy refused: 2 problem(s)",
            "header policy: strip.request[0]: \"*\" would remove every header",
            "header policy: response[0].set[\"x bad\"]: not a valid header name",
        ]
    );
}

/// `envoy --mode validate` on the bootstrap with the module path set to the
/// built module and, if given, the policy replaced.
fn envoy_validate(policy: Option<&str>) -> (bool, String) {
    let (_, mut text) = config("envoy-header-policy.yaml");
    text = text.replace(
        "/etc/envoy/header_policy_filter.wasm",
        &common::filter_wasm_path().display().to_string(),
    );
    if let Some(policy) = policy {
        let start = text.find("value: |").expect("the policy block");
        let end = text[start..].find("vm_config:").expect("vm_config") + start;
        text.replace_range(
            start..end,
            &format!(
                "value: {}\n                ",
                serde_json::to_string(policy).unwrap()
            ),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envoy.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(common::envoy::envoy_binary())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "info",
            "-c",
        ])
        .arg(&file)
        .output()
        .expect("run envoy");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), log)
}

#[test]
fn the_envoy_example_validates_with_the_built_module() {
    let (ok, log) = envoy_validate(None);
    assert!(ok, "envoy --mode validate failed:\n{log}");
}

#[test]
fn envoy_refuses_a_bad_policy_with_the_filter_s_reason() {
    let (ok, log) = envoy_validate(Some("cors: {allow_origins: [app.example.com]}"));
    assert!(!ok, "a bad policy passed validation:\n{log}");
    assert!(
        log.contains(
            r#"header policy: cors.allow_origins[0]: "app.example.com" is not an origin (no scheme"#
        ),
        "the filter's reason is not in Envoy's output:\n{log}"
    );
}

#[test]
fn the_istio_plugin_config_is_a_valid_policy_as_json() {
    let (_, text) = config("istio-wasmplugin.yaml");
    let plugin: serde_json::Value = serde_saphyr::from_str(&text).expect("YAML");
    assert_eq!(plugin["kind"], "WasmPlugin");
    // Istio passes pluginConfig (a protobuf Struct) to the filter as JSON.
    let json = serde_json::to_string(&plugin["spec"]["pluginConfig"]).unwrap();
    assert!(json.starts_with('{'));
    header_policy::from_text(&json).unwrap_or_else(|p| panic!("{p:#?}"));
    common::load_policy(&json);
}
