//! The sidecar injection webhook (`sidecar webhook`), as the API server
//! calls it: `AdmissionReview` v1 requests around pods built with
//! `k8s-openapi`, over HTTPS to the running binary; the returned JSON
//! patch applied and the result read back as a `Pod`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use conformance::Proc;
use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);
const IMAGE: &str = "registry.example.com/preview-sidecar:1.2.3";
const EDGE: &str = "https://edge.example.com:7000";

struct Webhook {
    _proc: Proc,
    dir: tempfile::TempDir,
    url: String,
}

impl Webhook {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files =
            test_support::certs::write(&dir.path().join("first"), "", &["127.0.0.1".into()], false)
                .unwrap();
        std::fs::copy(&files.cert, dir.path().join("tls.crt")).unwrap();
        std::fs::copy(&files.key, dir.path().join("tls.key")).unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let args = [
            "webhook",
            "--listen",
            "127.0.0.1:0",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--image",
            IMAGE,
            "--edge",
            EDGE,
        ];
        let proc = Proc::spawn("sidecar", &args);
        let line = proc.wait_line("webhook listening ", WAIT);
        let addr = line.rsplit(' ').next().unwrap().to_string();
        Self {
            _proc: proc,
            url: format!("https://{addr}/inject"),
            dir,
        }
    }

    /// POSTs `body` with curl trusting `ca`; the status and body.
    fn post_with(&self, ca: &Path, body: &[u8]) -> (u16, Vec<u8>) {
        let mut curl = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(ca)
            .args([
                "-H",
                "content-type: application/json",
                "--data-binary",
                "@-",
            ])
            .args(["-w", "\n%{http_code}", &self.url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        curl.stdin.take().unwrap().write_all(body).unwrap();
        let out = curl.wait_with_output().unwrap();
        let text = out.stdout;
        let split = text.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        let status = String::from_utf8_lossy(&text[split..])
            .trim()
            .parse()
            .unwrap_or(0);
        (status, text[..split].to_vec())
    }

    fn post(&self, body: &[u8]) -> (u16, Vec<u8>) {
        self.post_with(&self.dir.path().join("first/ca.pem"), body)
    }

    /// Sends `pod` for creation in `namespace`; the response's `allowed`,
    /// its patch (decoded), and its message.
    fn review(&self, pod: &Pod, namespace: &str) -> (bool, Option<json_patch::Patch>, String) {
        let (status, body) = self.post(&review(pod, namespace));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).unwrap();
        let response = &answer["response"];
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(response["uid"], "7d6a4c1e-1111-2222-3333-444455556666");
        let patch = response["patch"].as_str().map(|p| {
            assert_eq!(response["patchType"], "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
            serde_json::from_slice(&bytes).unwrap()
        });
        let message = response["status"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string();
        (response["allowed"] == true, patch, message)
    }
}

/// An `AdmissionReview` v1 creating `pod`, as the API server sends it.
fn review(pod: &Pod, namespace: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "7d6a4c1e-1111-2222-3333-444455556666",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    }))
    .unwrap()
}

/// A Deployment's pod: two containers, one with two TCP ports and a UDP
/// one, labels, and `annotations`.
fn pod(annotations: &[(&str, &str)]) -> Pod {
    let port = |n: i32, protocol: &str| ContainerPort {
        container_port: n,
        protocol: Some(protocol.into()),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            generate_name: Some("web-7f9c8d-".into()),
            labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
            annotations: (!annotations.is_empty()).then(|| {
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![
                Container {
                    name: "web".into(),
                    image: Some("registry.example.com/web:1".into()),
                    ports: Some(vec![
                        port(8080, "TCP"),
                        port(9090, "TCP"),
                        port(5353, "UDP"),
                    ]),
                    ..Default::default()
                },
                Container {
                    name: "worker".into(),
                    image: Some("registry.example.com/worker:1".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn apply(pod: &Pod, patch: &json_patch::Patch) -> Pod {
    let mut doc = serde_json::to_value(pod).unwrap();
    json_patch::patch(&mut doc, patch).unwrap();
    serde_json::from_value(doc).unwrap()
}

/// A pod in a labeled namespace gets the sidecar as a native sidecar
/// (first init container, `restartPolicy: Always`), unprivileged, its
/// config the pod's own TCP ports on loopback (a config the real binary
/// accepts), its token from the namespace's Secret. Sent again, the
/// injected pod is left alone.
#[test]
fn a_pod_gets_the_native_sidecar_once() {
    let webhook = Webhook::start();
    let original = pod(&[("preview.dev/access", "shared")]);
    let (allowed, patch, _) = webhook.review(&original, "team1");
    assert!(allowed);
    let injected = apply(&original, &patch.expect("a patch"));

    let spec = injected.spec.as_ref().unwrap();
    let inits = spec.init_containers.as_ref().unwrap();
    assert_eq!(inits.len(), 1);
    let sidecar = &inits[0];
    assert_eq!(sidecar.name, "preview-sidecar");
    assert_eq!(sidecar.image.as_deref(), Some(IMAGE));
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(spec.containers.len(), 2, "the app's containers untouched");
    let security = sidecar.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let env = sidecar.env.as_ref().unwrap();
    let token = env
        .iter()
        .find(|e| e.name == "PREVIEW_SIDECAR_TOKEN")
        .unwrap();
    let secret = token
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (secret.name.as_str(), secret.key.as_str()),
        ("preview-sidecar-token", "token")
    );
    let config = env.iter().find(|e| e.name == "SIDECAR_CONFIG").unwrap();
    let yaml = config.value.as_deref().unwrap();
    for expected in [
        "environment: team1",
        "access: shared",
        "{ service: web, port: 8080, address: \"127.0.0.1:8080\" }",
        "{ service: web, port: 9090, address: \"127.0.0.1:9090\" }",
    ] {
        assert!(yaml.contains(expected), "{expected} in\n{yaml}");
    }
    assert!(!yaml.contains("5353"), "UDP is not exposed:\n{yaml}");
    let args: Vec<&str> = sidecar.args.iter().flatten().map(String::as_str).collect();
    assert_eq!(args, ["run", "--config-env", "SIDECAR_CONFIG"]);
    // The real binary takes that config as the injected container would.
    let path = webhook.dir.path().join("injected.yaml");
    std::fs::write(&path, yaml).unwrap();
    let check = Command::new(conformance::bin("sidecar"))
        .args(["check-config", path.to_str().unwrap()])
        .env("PREVIEW_SIDECAR_TOKEN", "from-the-secret")
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let annotations = injected.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["preview.dev/injected"], IMAGE);

    let (allowed, again, _) = webhook.review(&injected, "team1");
    assert!(allowed && again.is_none(), "an injected pod is left alone");
}

/// Opting out, choosing ports and an environment, and annotations that
/// make no sense: an opted-out pod is admitted untouched, chosen ports
/// are the only ones exposed, and a wrong annotation refuses the pod with
/// what to fix (a pod that asked for a sidecar it cannot have).
#[test]
fn annotations_choose_opt_out_or_refuse_with_a_reason() {
    let webhook = Webhook::start();
    let (allowed, patch, _) = webhook.review(&pod(&[("preview.dev/inject", "false")]), "team1");
    assert!(allowed && patch.is_none());

    let chosen = pod(&[
        ("preview.dev/ports", "9090"),
        ("preview.dev/environment", "qa"),
    ]);
    let (_, patch, _) = webhook.review(&chosen, "team1");
    let injected = apply(&chosen, &patch.unwrap());
    let sidecar = &injected.spec.unwrap().init_containers.unwrap()[0];
    let env = sidecar.env.as_ref().unwrap();
    let yaml = env
        .iter()
        .find(|e| e.name == "SIDECAR_CONFIG")
        .unwrap()
        .value
        .clone()
        .unwrap();
    assert!(
        yaml.contains("environment: qa") && yaml.contains("port: 9090"),
        "{yaml}"
    );
    assert!(!yaml.contains("8080"), "{yaml}");

    for (annotations, reason) in [
        (
            vec![("preview.dev/ports", "7000")],
            "not a TCP port a container of this pod declares",
        ),
        (vec![("preview.dev/ports", "http")], "is not a port number"),
        (
            vec![("preview.dev/access", "everyone")],
            "is not authenticated, shared or personal",
        ),
        (
            vec![("preview.dev/service", "Web_1")],
            "not a lowercase DNS label",
        ),
    ] {
        let (allowed, patch, message) = webhook.review(&pod(&annotations), "team1");
        assert!(!allowed && patch.is_none(), "{annotations:?}");
        assert!(message.contains(reason), "{annotations:?}: {message}");
    }
}

/// Malformed reviews get 400 with why, never a crash: the webhook answers
/// the next good one; anything but `POST /inject` is told where to go.
#[test]
fn malformed_reviews_are_refused_with_a_reason() {
    let webhook = Webhook::start();
    for (body, reason) in [
        (&b"not json"[..], "not an AdmissionReview"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "without a request",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":1}}"#,
            "not an AdmissionReview",
        ),
    ] {
        let (status, answer) = webhook.post(body);
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains(reason), "{answer}");
    }
    // A pod whose object does not parse as a pod: refused, with why.
    let mut odd = serde_json::from_slice::<Value>(&review(&pod(&[]), "team1")).unwrap();
    odd["request"]["object"]["spec"]["containers"] = json!("web");
    let (status, answer) = webhook.post(&serde_json::to_vec(&odd).unwrap());
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    assert!(answer["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .contains("could not be read"));

    let (allowed, patch, _) = webhook.review(&pod(&[]), "team1");
    assert!(allowed && patch.is_some(), "still serving");
}

/// The certificate is read again when its files change (cert-manager
/// renewing the Secret): new connections get the new one.
#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let webhook = Webhook::start();
    let body = review(&pod(&[]), "team1");
    assert_eq!(webhook.post(&body).0, 200);

    let renewed = test_support::certs::write(
        &webhook.dir.path().join("second"),
        "",
        &["127.0.0.1".into()],
        false,
    )
    .unwrap();
    for (from, to) in [(&renewed.cert, "tls.crt"), (&renewed.key, "tls.key")] {
        let partial = webhook.dir.path().join(format!("{to}.partial"));
        std::fs::copy(from, &partial).unwrap();
        std::fs::rename(&partial, webhook.dir.path().join(to)).unwrap();
    }
    test_support::wait::until_blocking("the renewed certificate served", || {
        webhook.post_with(&renewed.ca, &body).0 == 200
    });
    assert_eq!(webhook.post(&body).0, 0, "the old CA no longer verifies it");
}

/// The shipped manifest (`configs/k8s/webhook/webhook.yaml`) reads as the API
/// server would read it, with the choices its comments give: only pods
/// being created in labeled namespaces are sent, an opt-out label keeps a
/// pod from being sent, a down webhook never blocks a pod, no side
/// effects, and the webhook's own pod runs unprivileged with no API token.
#[test]
fn the_shipped_manifest_says_what_the_webhook_needs() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::apps::v1::Deployment;

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(root.join("configs/k8s/webhook/webhook.yaml")).unwrap();
    let docs: Vec<Value> = text
        .split("\n---\n")
        .map(|doc| serde_saphyr::from_str(doc).unwrap())
        .collect();
    let of_kind = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap().clone();

    let config: MutatingWebhookConfiguration =
        serde_json::from_value(of_kind("MutatingWebhookConfiguration")).unwrap();
    let hook = &config.webhooks.as_ref().unwrap()[0];
    assert_eq!(
        hook.client_config.service.as_ref().unwrap().path.as_deref(),
        Some("/inject")
    );
    assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(hook.side_effects, "None");
    assert_eq!(hook.reinvocation_policy.as_deref(), Some("IfNeeded"));
    assert_eq!(hook.timeout_seconds, Some(5));
    let labels = hook
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_labels
        .as_ref()
        .unwrap();
    assert_eq!(labels["preview.dev/injection"], "enabled");
    let opt_out = &hook
        .object_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        (opt_out.key.as_str(), opt_out.operator.as_str()),
        ("preview.dev/inject", "NotIn")
    );
    let rule = &hook.rules.as_ref().unwrap()[0];
    assert_eq!(
        rule.operations.as_deref(),
        Some(&["CREATE".to_string()][..])
    );
    assert_eq!(rule.resources.as_deref(), Some(&["pods".to_string()][..]));

    let deployment: Deployment = serde_json::from_value(of_kind("Deployment")).unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    let container = &pod.containers[0];
    let args: Vec<&str> = container
        .args
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(args[0], "webhook");
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
}
