//! Agent mode: a sidecar that takes its routes from a namespace's Ingress
//! objects and annotated Services, through the real binaries, against
//! test-support's Kubernetes API server (list, watch, `410 Gone`, dropped
//! watches, Ingress status). No kube-apiserver can be installed here.

use std::time::Duration;

use conformance::{edge_yaml, free_port, http_status, start_edge_file, Proc, TOKEN};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use serde_json::json;
use test_support::kube_api::{Kind, KubeApi};
use test_support::wait::until_blocking;

const NAMESPACE: &str = "team1";

fn upstream() -> (Proc, u16) {
    let proc = Proc::spawn(
        "sample-upstream",
        &["--listen", "127.0.0.1:0", "--log-events"],
    );
    let line = proc.wait_line("listening ", Duration::from_secs(10));
    let port = line.rsplit_once(':').unwrap().1.trim().parse().unwrap();
    (proc, port)
}

/// A Service at the upstream's port on 127.0.0.1 (its "cluster IP").
fn service(name: &str, port: u16, expose: bool) -> serde_json::Value {
    let annotations = match expose {
        true => json!({ "preview.dev/expose": "true" }),
        false => json!({}),
    };
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "annotations": annotations },
        "spec": { "clusterIP": "127.0.0.1", "ports": [{ "name": "http", "port": port }] },
    }))
    .unwrap();
    serde_json::to_value(service).unwrap()
}

/// An Ingress of class `preview`: `(host, path, exact, service, port)` rules.
fn ingress(name: &str, rules: &[(&str, &str, bool, &str, u16)]) -> serde_json::Value {
    let rules: Vec<_> = rules
        .iter()
        .map(|(host, path, exact, service, port)| {
            json!({ "host": host, "http": { "paths": [{
                "path": path,
                "pathType": if *exact { "Exact" } else { "Prefix" },
                "backend": { "service": { "name": service, "port": { "number": port } } },
            }] } })
        })
        .collect();
    let ingress: Ingress = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": { "name": name },
        "spec": { "ingressClassName": "preview", "rules": rules },
    }))
    .unwrap();
    serde_json::to_value(ingress).unwrap()
}

fn status(port: u16, host: &str, path: &str) -> String {
    let url = format!("http://127.0.0.1:{port}{path}");
    http_status(&["-H", &format!("Host: {host}"), &url])
}

/// The harness's edge YAML, its cluster owning `team1.example.test`.
fn edge_yaml_with_domains() -> String {
    edge_yaml("").replace(
        "    environments: [demo]\n",
        "    environments: [demo]\n    domains: [team1.example.test]\n",
    )
}

/// Starts an agent for [`NAMESPACE`] through `dir`'s kubeconfig, tunneled
/// to `tunnel`, `more` appended to its `kubernetes:` section; waits for
/// its two sessions.
fn start_agent(dir: &std::path::Path, tunnel: &str, more: &str) -> Proc {
    let yaml = format!(
        "edge: http://{tunnel}\ntoken: {TOKEN}\nenvironment: demo\nreconnect:\n  min: 50ms\n  max: 200ms\nkubernetes:\n  namespace: {NAMESPACE}\n{more}"
    );
    let config = dir.join("agent.yaml");
    std::fs::write(&config, yaml).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let agent = Proc::spawn_env(
        "sidecar",
        &["run", "--config", config.to_str().unwrap()],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    agent.wait_lines("tunnel up", 2, Duration::from_secs(20));
    agent
}

/// Waits until `host` `path` answers `want`.
fn routed(port: u16, host: &str, path: &str, want: &str) {
    until_blocking(&format!("{host}{path} answers {want}"), || {
        status(port, host, path) == want
    });
}

#[test]
fn an_agent_routes_its_namespaces_ingresses_and_keeps_them_in_sync() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(NAMESPACE);
    api.write_kubeconfig(&dir.path().join("kubeconfig"));
    let ((web, web_port), (docs, docs_port)) = (upstream(), upstream());
    api.apply(Kind::Service, service("web", web_port, false));
    api.apply(Kind::Service, service("docs", docs_port, true));
    api.apply(Kind::Service, service("db", 5432, false));
    api.apply(
        Kind::Ingress,
        ingress(
            "site",
            &[("app.team1.example.test", "/", false, "web", web_port)],
        ),
    );

    std::fs::write(dir.path().join("edge.yaml"), edge_yaml_with_domains()).unwrap();
    let (edge, http_port, tunnel) = start_edge_file(dir.path());
    let agent = start_agent(
        dir.path(),
        &tunnel,
        "  publish_address: edge.example.test\n",
    );

    // The Ingress's host reaches its backend; the annotated Service has a
    // preview URL, and so has the Ingress's backend (a route); the other
    // Service has none (the agent may dial it, nobody routes to it).
    assert_eq!(status(http_port, "app.team1.example.test", "/"), "200");
    web.wait_line("request GET /", Duration::from_secs(5));
    let docs_host = format!("docs-{docs_port}-demo.preview.localhost");
    assert_eq!(status(http_port, &docs_host, "/"), "200");
    docs.wait_line("request GET /", Duration::from_secs(5));
    let web_preview = format!("web-{web_port}-demo.preview.localhost");
    assert_eq!(status(http_port, &web_preview, "/"), "200");
    assert_eq!(
        status(http_port, "db-5432-demo.preview.localhost", "/"),
        "404"
    );

    // Status, as ingress controllers set it.
    until_blocking("the ingress status names the edge", || {
        api.get(Kind::Ingress, "site").unwrap()["status"]
            == json!({ "loadBalancer": { "ingress": [{ "hostname": "edge.example.test" }] } })
    });

    // Changed: a second rule, an exact path to another Service.
    api.apply(
        Kind::Ingress,
        ingress(
            "site",
            &[
                ("app.team1.example.test", "/", false, "web", web_port),
                (
                    "app.team1.example.test",
                    "/headers",
                    true,
                    "docs",
                    docs_port,
                ),
            ],
        ),
    );
    // The old rule answers 200 too: wait for the request to reach docs.
    until_blocking("app.team1.example.test/headers reaches docs", || {
        status(http_port, "app.team1.example.test", "/headers") == "200"
            && docs.output().contains("request GET /headers")
    });
    // Exact means exact: /headers/x is web's (which has no such page).
    assert_eq!(
        status(http_port, "app.team1.example.test", "/headers/x"),
        "404"
    );
    web.wait_line("request GET /headers/x", Duration::from_secs(5));

    // A host outside the cluster's domains is refused, with the reason in
    // both logs; the others stand.
    api.apply(
        Kind::Ingress,
        ingress(
            "stolen",
            &[("shop.team2.example.test", "/", false, "web", web_port)],
        ),
    );
    let refused = edge.wait_line("host rule refused", Duration::from_secs(20));
    assert!(refused.contains("shop.team2.example.test"), "{refused}");
    assert!(
        refused.contains("not within this cluster's domains"),
        "{refused}"
    );
    agent.wait_line("the edge refused a host rule", Duration::from_secs(20));
    assert_eq!(status(http_port, "shop.team2.example.test", "/"), "404");
    assert_eq!(status(http_port, "app.team1.example.test", "/"), "200");

    // The watch connections dropped: the agent resumes from the version it
    // had, without listing again, and misses nothing.
    let count = |prefix: &str| {
        api.requests()
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count()
    };
    let (listed, watched) = (count("list ingresses"), count("watch ingresses from "));
    // A Service changes: the Ingress watch sees nothing of it, but the
    // bookmark that follows brings it to that version.
    api.apply(Kind::Service, service("db", 5433, false));
    api.bookmark();
    let bookmarked = api.revision();
    api.drop_watches();
    api.delete(Kind::Ingress, "stolen");
    api.apply(
        Kind::Ingress,
        ingress(
            "more",
            &[("more.team1.example.test", "/", false, "docs", docs_port)],
        ),
    );
    routed(http_port, "more.team1.example.test", "/", "200");
    assert_eq!(count("list ingresses"), listed, "{:#?}", api.requests());
    assert!(
        count("watch ingresses from ") > watched,
        "{:#?}",
        api.requests()
    );
    let resumed = format!("watch ingresses from {bookmarked}");
    assert!(
        api.requests().contains(&resumed),
        "{resumed}: {:#?}",
        api.requests()
    );

    // 410 Gone: the history is forgotten; the agent lists again and the
    // routes follow what is there now.
    api.expire();
    api.delete(Kind::Ingress, "more");
    routed(http_port, "more.team1.example.test", "/", "404");
    assert!(count("list ingresses") > listed, "{:#?}", api.requests());

    // Deleted: the route goes with it.
    api.delete(Kind::Ingress, "site");
    routed(http_port, "app.team1.example.test", "/", "404");
    // The annotated Service keeps its preview URL.
    assert_eq!(status(http_port, &docs_host, "/"), "200");
}

#[test]
fn a_restarted_edge_gets_the_agents_routes_in_its_new_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(NAMESPACE);
    api.write_kubeconfig(&dir.path().join("kubeconfig"));
    let (_web, web_port) = upstream();
    api.apply(Kind::Service, service("web", web_port, false));
    api.apply(
        Kind::Ingress,
        ingress(
            "site",
            &[("app.team1.example.test", "/", false, "web", web_port)],
        ),
    );
    let tunnel = format!("127.0.0.1:{}", free_port());
    let yaml = edge_yaml_with_domains()
        .replace("  tunnel: 127.0.0.1:0\n", &format!("  tunnel: {tunnel}\n"));
    std::fs::write(dir.path().join("edge.yaml"), &yaml).unwrap();
    let (mut edge, http_port, _) = start_edge_file(dir.path());
    let agent = start_agent(dir.path(), &tunnel, "");
    assert_eq!(status(http_port, "app.team1.example.test", "/"), "200");
    // Without publish_address, the status shows the edge URL's host.
    until_blocking("the ingress status names the edge's host", || {
        api.get(Kind::Ingress, "site").unwrap()["status"]["loadBalancer"]["ingress"][0]["ip"]
            == "127.0.0.1"
    });

    // A new edge at the same tunnel address knows nothing; the agent's
    // new sessions bring the routes and host rules in Hello.
    edge.kill();
    let (_edge, http_port, _) = start_edge_file(dir.path());
    agent.wait_lines("tunnel up", 4, Duration::from_secs(20));
    routed(http_port, "app.team1.example.test", "/", "200");
    assert_eq!(
        api.requests()
            .iter()
            .filter(|r| *r == "list ingresses")
            .count(),
        1,
        "the edge restarting is no reason to list again: {:#?}",
        api.requests()
    );
}
