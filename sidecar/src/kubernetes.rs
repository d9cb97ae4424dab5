//! Agent mode: one sidecar for a namespace, its allowlist and routes taken
//! from the Kubernetes API rather than from YAML.
//!
//! - The allowlist is the namespace's Services: each TCP port, dialed at
//!   the Service's cluster IP (a headless Service by its DNS name).
//!   ExternalName Services are left out: they name hosts outside the
//!   cluster, which a namespace's users could point anywhere.
//! - The routes registered with the edge are the backends of the
//!   namespace's Ingresses of our class, and every port of the Services
//!   annotated `preview.dev/expose: "true"` (preview URLs).
//! - Each Ingress rule with a host becomes a host rule; the edge takes the
//!   hosts within the cluster's domains and says why it refused others.
//! - Ingresses of our class get `status.loadBalancer` set to the edge's
//!   public address, as ingress controllers do.
//!
//! Both kinds are watched with kube-runtime's watcher: list, then watch
//! from the list's resource version (bookmarks keep it fresh), resuming
//! where it left off after a dropped connection and listing again after
//! `410 Gone`. Every change recomputes the [`Catalog`]; sessions send it
//! to the edge when it differs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{
    Ingress, IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus,
    ServiceBackendPort,
};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::ResourceExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tunnel_proto::{HostRule, UpstreamProtocol};

use crate::catalog::Catalog;
use crate::config::{Allowlist, Target};

/// Services annotated with this (`"true"`) get preview URLs.
pub const EXPOSE_ANNOTATION: &str = "preview.dev/expose";
/// The Ingress class annotation older Ingresses use instead of
/// `spec.ingressClassName`.
const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// `kubernetes:` in the sidecar's YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Default: the namespace of the pod's service account (or the
    /// kubeconfig's).
    pub namespace: Option<String>,
    pub ingress_class: String,
    /// What Ingress status shows; default: the edge URL's host.
    pub publish_address: Option<String>,
}

/// Watches the namespace until `stop`, sending each new catalog. Returns
/// only when stopped, or when the API cannot be configured at all.
pub async fn discover(
    settings: Settings,
    edge_host: String,
    catalogs: watch::Sender<Option<Arc<Catalog>>>,
    stop: CancellationToken,
) -> Result<(), String> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("kubernetes: cannot reach the API server: {e}"))?;
    let namespace = settings
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    info!(%namespace, class = %settings.ingress_class, "discovering Services and Ingresses");
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let ingress_api: Api<Ingress> = Api::namespaced(client, &namespace);
    let (service_store, service_writer) = reflector::store();
    let (ingress_store, ingress_writer) = reflector::store();
    let config = watcher::Config::default();
    let service_events = watcher(services, config.clone())
        .default_backoff()
        .reflect(service_writer)
        .map(|e| e.map(|e| (Listed::Services, changes(&e))));
    let ingress_events = watcher(ingress_api.clone(), config)
        .default_backoff()
        .reflect(ingress_writer)
        .map(|e| e.map(|e| (Listed::Ingresses, changes(&e))));
    let mut events = std::pin::pin!(futures::stream::select(service_events, ingress_events));
    let publish = settings.publish_address.clone().unwrap_or(edge_host);
    let mut listed = BTreeSet::new();
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = stop.cancelled() => return Ok(()),
        };
        match event {
            None => return Ok(()),
            Some(Err(e)) => {
                warn!(error = %e, "kubernetes watch failed; retrying");
                continue;
            }
            Some(Ok((kind, Change::Listed))) => {
                listed.insert(kind);
            }
            Some(Ok((_, Change::Object))) => {}
            Some(Ok((_, Change::None))) => continue,
        }
        // Both listed at least once: until then a catalog would miss routes.
        if listed.len() < 2 {
            continue;
        }
        let (services, ingresses) = (service_store.state(), ingress_store.state());
        let services: Vec<&Service> = services.iter().map(|s| &**s).collect();
        let ingresses: Vec<&Ingress> = ingresses.iter().map(|i| &**i).collect();
        let (catalog, problems) =
            catalog(&namespace, &services, &ingresses, &settings.ingress_class);
        let (targets, routes, host_rules) = (
            catalog.targets.targets().len(),
            catalog.routes.len(),
            catalog.host_rules.len(),
        );
        let changed = catalogs.send_if_modified(|current| {
            let changed = current.as_deref() != Some(&catalog);
            if changed {
                *current = Some(Arc::new(catalog));
            }
            changed
        });
        if changed {
            for problem in &problems {
                warn!(%problem, "kubernetes object not routed");
            }
            info!(
                targets,
                routes, host_rules, "routes from Kubernetes changed"
            );
        }
        for ingress in ingresses
            .iter()
            .filter(|i| of_class(i, &settings.ingress_class))
        {
            publish_status(&ingress_api, ingress, &publish).await;
        }
    }
}

/// The two kinds listed before the first catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Listed {
    Services,
    Ingresses,
}

/// What a watcher event means for the catalog.
enum Change {
    /// A (re)list finished: the store holds the whole set.
    Listed,
    /// An object was added, changed or deleted.
    Object,
    /// Nothing yet (a relist in progress is applied at its end).
    None,
}

fn changes<K>(event: &watcher::Event<K>) -> Change {
    match event {
        watcher::Event::InitDone => Change::Listed,
        watcher::Event::Apply(_) | watcher::Event::Delete(_) => Change::Object,
        watcher::Event::Init | watcher::Event::InitApply(_) => Change::None,
    }
}

/// Sets an Ingress's `status.loadBalancer` to the edge's address, unless it
/// shows that already.
async fn publish_status(api: &Api<Ingress>, ingress: &Ingress, address: &str) {
    let entry = match address.parse::<std::net::IpAddr>() {
        Ok(_) => IngressLoadBalancerIngress {
            ip: Some(address.into()),
            ..Default::default()
        },
        Err(_) => IngressLoadBalancerIngress {
            hostname: Some(address.into()),
            ..Default::default()
        },
    };
    let wanted = IngressStatus {
        load_balancer: Some(IngressLoadBalancerStatus {
            ingress: Some(vec![entry]),
        }),
    };
    if ingress.status.as_ref() == Some(&wanted) {
        return;
    }
    let name = ingress.name_any();
    let patch = serde_json::json!({ "status": wanted });
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => info!(ingress = %name, %address, "ingress status set"),
        Err(e) => warn!(ingress = %name, error = %e, "cannot set ingress status"),
    }
}

/// Whether an Ingress is ours: `spec.ingressClassName`, or the older
/// annotation.
fn of_class(ingress: &Ingress, class: &str) -> bool {
    let named = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref());
    let annotated = ingress
        .annotations()
        .get(CLASS_ANNOTATION)
        .map(String::as_str);
    named.or(annotated) == Some(class)
}

/// The catalog a namespace's objects make, and what could not be routed,
/// each with its reason.
pub fn catalog(
    namespace: &str,
    services: &[&Service],
    ingresses: &[&Ingress],
    class: &str,
) -> (Catalog, Vec<String>) {
    let mut problems = Vec::new();
    let mut targets: BTreeMap<(String, u16), Target> = BTreeMap::new();
    let mut exposed: BTreeSet<(String, u16)> = BTreeSet::new();
    let mut port_names: BTreeMap<(String, String), u16> = BTreeMap::new();
    for service in services {
        let name = service.name_any();
        let Some(spec) = &service.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        if !yaml_config::is_label(&name) {
            problems.push(format!(
                "service {namespace}/{name}: its name cannot be a preview URL label"
            ));
            continue;
        }
        let host = match spec.cluster_ip.as_deref() {
            None | Some("" | "None") => format!("{name}.{namespace}.svc"),
            Some(ip) if ip.contains(':') => format!("[{ip}]"),
            Some(ip) => ip.to_string(),
        };
        let expose = service
            .annotations()
            .get(EXPOSE_ANNOTATION)
            .map(String::as_str)
            == Some("true");
        for port in spec.ports.iter().flatten() {
            if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                continue;
            }
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let mut target = Target::new(name.clone(), number, format!("{host}:{number}"));
            if port.app_protocol.as_deref() == Some("kubernetes.io/h2c") {
                target.protocol = UpstreamProtocol::H2c;
            }
            targets.insert((name.clone(), number), target);
            if let Some(port_name) = &port.name {
                port_names.insert((name.clone(), port_name.clone()), number);
            }
            if expose {
                exposed.insert((name.clone(), number));
            }
        }
    }
    let mut host_rules = Vec::new();
    for ingress in ingresses.iter().filter(|i| of_class(i, class)) {
        let source = format!("ingress {namespace}/{}", ingress.name_any());
        let Some(spec) = &ingress.spec else { continue };
        if spec.default_backend.is_some() {
            problems.push(format!("{source}: a default backend has no host; ignored"));
        }
        for rule in spec.rules.iter().flatten() {
            let Some(host) = rule.host.as_deref().filter(|h| !h.is_empty()) else {
                problems.push(format!(
                    "{source}: a rule without a host; ignored (the edge routes by host)"
                ));
                continue;
            };
            for path in rule.http.iter().flat_map(|h| &h.paths) {
                let Some(backend) = &path.backend.service else {
                    problems.push(format!(
                        "{source}: {host}: a backend that is not a Service; ignored"
                    ));
                    continue;
                };
                let port = match &backend.port {
                    Some(ServiceBackendPort {
                        number: Some(n), ..
                    }) => u16::try_from(*n).ok(),
                    Some(ServiceBackendPort {
                        name: Some(port), ..
                    }) => port_names
                        .get(&(backend.name.clone(), port.clone()))
                        .copied(),
                    _ => None,
                };
                let Some(port) = port.filter(|p| targets.contains_key(&(backend.name.clone(), *p)))
                else {
                    problems.push(format!(
                        "{source}: {host}: service {}:{} is not a TCP port of a Service in {namespace}",
                        backend.name,
                        backend.port.as_ref().map(port_text).unwrap_or_default()
                    ));
                    continue;
                };
                exposed.insert((backend.name.clone(), port));
                host_rules.push(HostRule {
                    host: host.to_ascii_lowercase(),
                    path: path.path.clone().unwrap_or_else(|| "/".into()),
                    exact_path: path.path_type == "Exact",
                    service: backend.name.clone(),
                    port: port.into(),
                    source: source.clone(),
                });
            }
        }
    }
    host_rules
        .sort_by(|a, b| (&a.host, &a.path, a.exact_path).cmp(&(&b.host, &b.path, b.exact_path)));
    let routes = exposed
        .iter()
        .filter_map(|key| targets.get(key))
        .map(Target::route)
        .collect();
    let catalog = Catalog {
        targets: Allowlist::new(targets.into_values()),
        routes,
        host_rules,
    };
    (catalog, problems)
}

fn port_text(port: &ServiceBackendPort) -> String {
    match (&port.number, &port.name) {
        (Some(n), _) => n.to_string(),
        (None, Some(name)) => name.clone(),
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    fn service(name: &str, ip: &str, ports: serde_json::Value, expose: bool) -> Service {
        let annotations = match expose {
            true => serde_json::json!({ EXPOSE_ANNOTATION: "true" }),
            false => serde_json::json!({}),
        };
        from_json(serde_json::json!({
            "metadata": { "name": name, "namespace": "team1", "annotations": annotations },
            "spec": { "clusterIP": ip, "ports": ports },
        }))
    }

    #[test]
    fn services_are_the_allowlist_and_ingresses_the_routes() {
        let services = [
            service(
                "web",
                "10.0.0.5",
                serde_json::json!([{ "name": "http", "port": 80 }, { "port": 53, "protocol": "UDP" }]),
                false,
            ),
            service(
                "api",
                "None",
                serde_json::json!([{ "port": 8080, "appProtocol": "kubernetes.io/h2c" }]),
                false,
            ),
            service(
                "docs",
                "fd00::7",
                serde_json::json!([{ "port": 3000 }]),
                true,
            ),
            service(
                "db",
                "10.0.0.9",
                serde_json::json!([{ "port": 5432 }]),
                false,
            ),
            from_json(serde_json::json!({
                "metadata": { "name": "outside", "annotations": { EXPOSE_ANNOTATION: "true" } },
                "spec": { "type": "ExternalName", "externalName": "example.org", "ports": [{ "port": 443 }] },
            })),
        ];
        let ingress: Ingress = from_json(serde_json::json!({
            "metadata": { "name": "site", "namespace": "team1" },
            "spec": {
                "ingressClassName": "preview",
                "defaultBackend": { "service": { "name": "web", "port": { "number": 80 } } },
                "rules": [
                    { "host": "App.team1.example.com", "http": { "paths": [
                        { "path": "/", "pathType": "Prefix", "backend": { "service": { "name": "web", "port": { "name": "http" } } } },
                        { "path": "/api", "pathType": "Exact", "backend": { "service": { "name": "api", "port": { "number": 8080 } } } },
                        { "path": "/gone", "pathType": "Prefix", "backend": { "service": { "name": "nothere", "port": { "number": 80 } } } },
                    ] } },
                    { "http": { "paths": [
                        { "path": "/", "pathType": "Prefix", "backend": { "service": { "name": "web", "port": { "number": 80 } } } },
                    ] } },
                ],
            },
        }));
        let other: Ingress = from_json(serde_json::json!({
            "metadata": { "name": "nginx-one", "annotations": { CLASS_ANNOTATION: "nginx" } },
            "spec": { "rules": [{ "host": "x.team1.example.com", "http": { "paths": [
                { "path": "/", "pathType": "Prefix", "backend": { "service": { "name": "db", "port": { "number": 5432 } } } },
            ] } }] },
        }));
        let (catalog, problems) = catalog(
            "team1",
            &services.iter().collect::<Vec<_>>(),
            &[&ingress, &other],
            "preview",
        );
        let targets: Vec<_> = catalog
            .targets
            .targets()
            .iter()
            .map(|t| (t.service.as_str(), t.port, t.address.as_str()))
            .collect();
        assert_eq!(
            targets,
            [
                ("api", 8080, "api.team1.svc:8080"),
                ("db", 5432, "10.0.0.9:5432"),
                ("docs", 3000, "[fd00::7]:3000"),
                ("web", 80, "10.0.0.5:80"),
            ],
            "every TCP port of every Service but ExternalName ones"
        );
        let routes: Vec<_> = catalog
            .routes
            .iter()
            .map(|r| (r.service.as_str(), r.port))
            .collect();
        assert_eq!(
            routes,
            [("api", 8080), ("docs", 3000), ("web", 80)],
            "db is only dialable"
        );
        assert_eq!(catalog.routes[0].protocol, UpstreamProtocol::H2c as i32);
        let rules: Vec<_> = catalog
            .host_rules
            .iter()
            .map(|r| {
                (
                    r.host.as_str(),
                    r.path.as_str(),
                    r.exact_path,
                    r.service.as_str(),
                    r.port,
                )
            })
            .collect();
        assert_eq!(
            rules,
            [
                ("app.team1.example.com", "/", false, "web", 80),
                ("app.team1.example.com", "/api", true, "api", 8080),
            ]
        );
        assert_eq!(catalog.host_rules[0].source, "ingress team1/site");
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("default backend"));
        assert!(problems[1].contains("nothere:80 is not a TCP port of a Service in team1"));
        assert!(problems[2].contains("a rule without a host"));
    }
}
