//! Checks on the crate's shape: rooms use only the rooms below them, and no
//! two modules import each other, directly or around a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each room and the rooms it may use (see the table in `lib.rs`).
const ROOMS: &[(&str, &[&str])] = &[
    ("limits", &[]),
    ("admin", &[]),
    ("metrics", &[]),
    ("auth", &[]),
    ("idp", &["auth"]),
    ("routing", &["auth", "limits"]),
    ("tls", &[]),
    ("config", &["auth", "idp", "limits", "routing", "tls"]),
    ("traces", &["config"]),
    ("shared", &["limits", "auth", "config"]),
    ("tunnel", &["auth", "routing", "tls", "config"]),
    (
        "http",
        &[
            "auth", "idp", "limits", "routing", "tls", "config", "shared", "tunnel", "metrics",
            "traces",
        ],
    ),
    (
        "tcp_ports",
        &["limits", "routing", "config", "tunnel", "http", "metrics"],
    ),
    (
        "reload",
        &[
            "auth", "limits", "routing", "tls", "config", "shared", "tunnel", "metrics",
        ],
    ),
    (
        "inspect",
        &[
            "admin", "auth", "limits", "routing", "tls", "config", "shared", "tunnel", "http",
            "metrics",
        ],
    ),
    (
        "server",
        &[
            "auth",
            "idp",
            "limits",
            "routing",
            "tls",
            "config",
            "shared",
            "tunnel",
            "http",
            "reload",
            "admin",
            "metrics",
            "inspect",
            "traces",
            "tcp_ports",
        ],
    ),
];

/// Every module of the crate (`http::phases`, `config`, ...) with the
/// modules its code names through `crate::` or `super::`, test code aside.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        if module.is_empty() || module == "main" || module == "tests" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
        let mut uses = BTreeSet::new();
        for (prefix, base) in [("crate::", ""), ("super::", parent)] {
            for (i, _) in code.match_indices(prefix) {
                let path: String = code[i + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let full = if base.is_empty() {
                    path
                } else {
                    format!("{base}::{path}")
                };
                // The longest prefix of the path that is a module.
                let mut parts: Vec<&str> = full.split("::").filter(|p| !p.is_empty()).collect();
                while !parts.is_empty() && !modules.contains(&parts.join("::")) {
                    parts.pop();
                }
                let target = parts.join("::");
                if !target.is_empty() && target != module && !module.starts_with(&target) {
                    uses.insert(target);
                }
            }
        }
        graph.insert(module, uses);
    }
    graph
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p != "mod" && p != "lib")
        .collect();
    parts.join("::")
}

fn room_of(module: &str) -> &str {
    module.split("::").next().unwrap()
}

#[test]
fn rooms_use_only_the_rooms_below() {
    let graph = module_graph();
    assert!(
        graph.contains_key("http::phases"),
        "the scan found the modules"
    );
    let mut wrong = Vec::new();
    for (module, uses) in &graph {
        let room = room_of(module);
        let (_, allowed) = ROOMS
            .iter()
            .find(|(r, _)| *r == room)
            .unwrap_or_else(|| panic!("module {module} is in no room: add its room to ROOMS"));
        for used in uses {
            let other = room_of(used);
            if other != room && !allowed.contains(&other) {
                wrong.push(format!("{module} uses {used}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "rooms used from below:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_module_imports_in_a_circle() {
    let graph = module_graph();
    // Depth-first search; a module met again while still on the path closes
    // a circle.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| *p == m) {
            let mut circle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
            circle.push(m.to_string());
            return Some(circle);
        }
        if !done.insert(m) {
            return None;
        }
        path.push(m);
        for next in graph.get(m).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(circle) = visit(module, &graph, &mut Vec::new(), &mut done) {
            panic!("modules import each other: {}", circle.join(" → "));
        }
    }
}
