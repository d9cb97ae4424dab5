//! Sidecar injection: what the mutating admission webhook
//! ([`crate::webhook`]) does to a pod created in a namespace that asked
//! for it (the label in the webhook's `namespaceSelector`).
//!
//! The pod gets the sidecar as a native sidecar container (an init
//! container with `restartPolicy: Always`, Kubernetes 1.29+), so it starts
//! before the app and stops after it. Its allowlist is the pod's own
//! declared TCP ports on `127.0.0.1` and nothing else; its token comes from
//! a Secret in the pod's namespace. Annotations on the pod say what it
//! wants:
//!
//! - `preview.dev/inject: "false"`: leave this pod alone.
//! - `preview.dev/environment`: the environment (default: the namespace).
//! - `preview.dev/ports`: which container ports to expose, `8080,9090`
//!   (default: every declared TCP port).
//! - `preview.dev/service`: the service name in preview URLs (default:
//!   the `app.kubernetes.io/name` or `app` label, else the first
//!   container's name).
//! - `preview.dev/access`: `authenticated`, `shared` or `personal`.
//!
//! Pure logic: a review in, a response out; never a panic on bad input.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, Pod, ResourceRequirements, SecretKeySelector,
    SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube_core::DynamicObject;
use serde_json::{json, Value};
use yaml_config::is_label;

/// The injected container's name: also how an injected pod is recognized.
pub const CONTAINER: &str = "preview-sidecar";
pub const ANNOTATION_INJECT: &str = "preview.dev/inject";
pub const ANNOTATION_ENVIRONMENT: &str = "preview.dev/environment";
pub const ANNOTATION_PORTS: &str = "preview.dev/ports";
pub const ANNOTATION_SERVICE: &str = "preview.dev/service";
pub const ANNOTATION_ACCESS: &str = "preview.dev/access";
/// Set on injected pods: the sidecar image they got.
pub const ANNOTATION_INJECTED: &str = "preview.dev/injected";
/// The environment variable the injected sidecar reads its YAML from.
pub const CONFIG_ENV: &str = "SIDECAR_CONFIG";
/// The environment variable holding its token (from the Secret).
pub const TOKEN_ENV: &str = "PREVIEW_SIDECAR_TOKEN";

/// What every injected sidecar gets.
#[derive(Debug, Clone)]
pub struct Injection {
    /// The sidecar's image.
    pub image: String,
    /// The edge's tunnel URL.
    pub edge: String,
    /// The Secret (in the pod's namespace) and its key holding the token.
    pub token_secret: String,
    pub token_key: String,
}

/// Answers one `AdmissionReview` (the request body): the response review
/// as JSON, or why the body is not a review (for a 400).
pub fn review(body: &[u8], injection: &Injection) -> Result<Vec<u8>, String> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| "an AdmissionReview without a request".to_string())?;
    let response = respond(&request, injection);
    let mut review = serde_json::to_value(response.into_review()).map_err(|e| e.to_string())?;
    // kube-core writes the patch as an array of numbers, which Go's JSON
    // decoder takes; the API documents base64, as Go writes `[]byte`.
    if let Some(patch) = review.pointer_mut("/response/patch") {
        let bytes: Vec<u8> = serde_json::from_value(patch.take()).map_err(|e| e.to_string())?;
        use base64::Engine;
        *patch = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    serde_json::to_vec(&review).map_err(|e| e.to_string())
}

/// The response to one request: a patch adding the sidecar, nothing (not
/// a pod being created, opted out, injected already), or a refusal that
/// says what is wrong with the pod's annotations.
pub fn respond(
    request: &AdmissionRequest<DynamicObject>,
    injection: &Injection,
) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod || request.operation != Operation::Create {
        return allowed;
    }
    let Some(object) = &request.object else {
        return allowed;
    };
    let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(pod) => pod,
        Err(e) => return allowed.deny(format!("the pod could not be read: {e}")),
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    match patch(&pod, &namespace, injection) {
        Ok(None) => allowed,
        Ok(Some(patch)) => match serde_json::from_value::<json_patch::Patch>(patch) {
            Ok(patch) => allowed
                .with_patch(patch)
                .unwrap_or_else(|e| AdmissionResponse::from(request).deny(e.to_string())),
            Err(e) => AdmissionResponse::from(request).deny(e.to_string()),
        },
        Err(problem) => allowed.deny(format!("{problem} (sidecar injection)")),
    }
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The JSON patch injecting the sidecar into `pod`, `None` when it is not
/// to be injected, or what is wrong with its annotations.
pub fn patch(pod: &Pod, namespace: &str, injection: &Injection) -> Result<Option<Value>, String> {
    if annotation(pod, ANNOTATION_INJECT).is_some_and(|v| v.eq_ignore_ascii_case("false")) {
        return Ok(None);
    }
    let Some(spec) = &pod.spec else {
        return Ok(None);
    };
    let injected = |c: &Container| c.name == CONTAINER;
    if spec.init_containers.iter().flatten().any(injected) || spec.containers.iter().any(injected) {
        return Ok(None);
    }
    let config = sidecar_yaml(pod, namespace, injection)?;
    let container = container(config, injection);
    let container = serde_json::to_value(container).map_err(|e| e.to_string())?;
    let mut ops = Vec::new();
    match &spec.init_containers {
        None => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [container]}))
        }
        // First: a native sidecar is up before the init containers after it.
        Some(_) => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": container}))
        }
    }
    match &pod.metadata.annotations {
        None => ops.push(json!({"op": "add", "path": "/metadata/annotations",
                                "value": {ANNOTATION_INJECTED: injection.image}})),
        Some(_) => ops.push(json!({"op": "add",
                                   "path": format!("/metadata/annotations/{}", ANNOTATION_INJECTED.replace('/', "~1")),
                                   "value": injection.image})),
    }
    Ok(Some(Value::Array(ops)))
}

/// The sidecar's YAML for `pod`: the edge, the token from the
/// environment, the environment, and the pod's ports on loopback.
fn sidecar_yaml(pod: &Pod, namespace: &str, injection: &Injection) -> Result<String, String> {
    let spec = pod.spec.as_ref().ok_or("a pod without a spec")?;
    let declared: Vec<u16> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    let ports = match annotation(pod, ANNOTATION_PORTS) {
        None => {
            let mut ports = declared.clone();
            ports.sort_unstable();
            ports.dedup();
            ports
        }
        Some(list) => {
            let mut ports = Vec::new();
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let port: u16 = item
                    .parse()
                    .map_err(|_| format!("{ANNOTATION_PORTS}: {item:?} is not a port number"))?;
                if !declared.contains(&port) {
                    return Err(format!(
                        "{ANNOTATION_PORTS}: {port} is not a TCP port a container of this pod declares"
                    ));
                }
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
            ports
        }
    };
    if ports.is_empty() {
        return Err(format!(
            "the pod declares no TCP container port to expose (containers[].ports, or {ANNOTATION_PORTS})"
        ));
    }
    let labels = pod.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    let service = annotation(pod, ANNOTATION_SERVICE)
        .or_else(|| label("app.kubernetes.io/name"))
        .or_else(|| label("app"))
        .or_else(|| spec.containers.first().map(|c| c.name.as_str()))
        .unwrap_or_default();
    if !is_label(service) {
        return Err(format!(
            "the service name {service:?} is not a lowercase DNS label: set {ANNOTATION_SERVICE}"
        ));
    }
    let environment = annotation(pod, ANNOTATION_ENVIRONMENT).unwrap_or(namespace);
    if !is_label(environment) || environment.contains('-') {
        return Err(format!(
            "the environment {environment:?} is not lowercase letters and digits: set {ANNOTATION_ENVIRONMENT}"
        ));
    }
    let access = match annotation(pod, ANNOTATION_ACCESS) {
        None => String::new(),
        Some(level @ ("authenticated" | "shared" | "personal")) => format!("access: {level}\n"),
        Some(other) => {
            return Err(format!(
                "{ANNOTATION_ACCESS}: {other:?} is not authenticated, shared or personal"
            ))
        }
    };
    let targets: String = ports
        .iter()
        .map(|port| {
            format!("  - {{ service: {service}, port: {port}, address: \"127.0.0.1:{port}\" }}\n")
        })
        .collect();
    Ok(format!(
        "edge: {edge}\ntoken_env: {TOKEN_ENV}\nenvironment: {environment}\n{access}targets:\n{targets}",
        edge = serde_json::to_string(&injection.edge).map_err(|e| e.to_string())?,
    ))
}

/// The native sidecar container: unprivileged, read-only, small.
fn container(config: String, injection: &Injection) -> Container {
    let quantity = |q: &str| Quantity(q.to_string());
    Container {
        name: CONTAINER.into(),
        image: Some(injection.image.clone()),
        args: Some(vec!["run".into(), "--config-env".into(), CONFIG_ENV.into()]),
        env: Some(vec![
            EnvVar {
                name: CONFIG_ENV.into(),
                value: Some(config),
                ..Default::default()
            },
            EnvVar {
                name: TOKEN_ENV.into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: injection.token_secret.clone(),
                        key: injection.token_key.clone(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        restart_policy: Some("Always".into()),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".into(), quantity("10m")),
                    ("memory".into(), quantity("16Mi")),
                ]
                .into(),
            ),
            limits: Some([("memory".into(), quantity("128Mi"))].into()),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injection() -> Injection {
        Injection {
            image: "img".into(),
            edge: "https://edge:7000".into(),
            token_secret: "s".into(),
            token_key: "token".into(),
        }
    }

    fn review_of(pod: Value) -> Value {
        let body = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team1", "operation": "CREATE", "userInfo": {},
                "object": pod, "dryRun": false,
            }
        });
        let answer = review(&serde_json::to_vec(&body).unwrap(), &injection()).unwrap();
        serde_json::from_slice(&answer).unwrap()
    }

    #[test]
    fn a_pod_with_ports_gets_a_patch() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-"},
            "spec": {"containers": [{"name": "web", "ports": [{"containerPort": 8080}]}]}});
        let answer = review_of(pod);
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        assert!(
            answer["response"]["patch"].is_string(),
            "base64, as the API documents: {answer}"
        );
    }
}
