//! Raw → validated: compiles a [`RawPolicy`] into a [`Policy`] and reports
//! every problem with its YAML path, e.g.
//! `header_policy.response[0].set["x bad"]: not a valid header name`.

use crate::conditions::{Conditions, HostPattern};
use crate::config::{FieldMap, OneOrMany, RawPolicy, RawRule, Seconds, Switch};
use crate::headers::{is_managed, is_token, Name};
use crate::policy::{CorsSetting, Direction, Policy, Rule};
use crate::template::Template;

impl RawPolicy {
    /// Validates the block found at `path` (e.g. `header_policy` or
    /// `routes[2].header_policy`; empty for a file that is only a policy).
    pub fn validate(&self, path: &str) -> Result<Policy, Vec<String>> {
        let mut problems = Vec::new();
        let policy = compile(self, path, &mut problems);
        if problems.is_empty() {
            Ok(policy)
        } else {
            Err(problems)
        }
    }
}

/// Compiles `raw`, pushing every problem onto `problems` (for callers that
/// validate a larger file); the policy returned is only meaningful when no
/// problem was pushed.
pub fn compile(raw: &RawPolicy, path: &str, problems: &mut Vec<String>) -> Policy {
    let (strip_req, prefixes_req) =
        strip_list(&raw.strip.request, &at(path, "strip.request"), problems);
    let (strip_resp, prefixes_resp) =
        strip_list(&raw.strip.response, &at(path, "strip.response"), problems);
    let request = Direction {
        strip: strip_req,
        strip_prefixes: prefixes_req,
        rules: rules(&raw.request, &at(path, "request"), problems),
    };
    let response = Direction {
        strip: strip_resp,
        strip_prefixes: prefixes_resp,
        rules: rules(&raw.response, &at(path, "response"), problems),
    };
    let security = raw
        .security_headers
        .as_ref()
        .map(|s| crate::security::compile(s, &at(path, "security_headers"), problems))
        .unwrap_or_default();
    let cors = match &raw.cors {
        None => CorsSetting::Inherit,
        Some(Switch::Off) => CorsSetting::Off,
        Some(Switch::Recommended) => {
            problems.push(format!(
                "{}: true is not enough: give allow_origins (e.g. cors: {{allow_origins: [https://app.example.com]}})",
                at(path, "cors")
            ));
            CorsSetting::Off
        }
        Some(Switch::On(c)) => CorsSetting::On(Box::new(crate::cors::compile(
            c,
            &at(path, "cors"),
            problems,
        ))),
    };
    Policy::assemble(request, response, security, cors)
}

/// `path.field`, or `field` at the top of a file.
fn at(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// Why `name` cannot be a header a policy writes, if it cannot.
fn name_problem(name: &str) -> Option<String> {
    if !is_token(name) {
        return Some("not a valid header name".into());
    }
    if is_managed(name) {
        return Some(format!(
            "{} is managed by the proxy (framing, hop-by-hop or routing) and cannot be changed by a header policy",
            name.to_ascii_lowercase()
        ));
    }
    None
}

fn strip_list(list: &[String], path: &str, problems: &mut Vec<String>) -> (Vec<Name>, Vec<String>) {
    let mut names = Vec::new();
    let mut prefixes = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        if let Some(prefix) = entry.strip_suffix('*') {
            if prefix.is_empty() {
                problems.push(format!("{path}[{i}]: \"*\" would remove every header"));
            } else if !is_token(prefix) || prefix.contains('*') {
                problems.push(format!(
                    "{path}[{i}]: {entry:?} is not a header name or a prefix ending in * (e.g. x-internal-*)"
                ));
            } else {
                prefixes.push(prefix.to_ascii_lowercase());
            }
        } else if let Some(p) = name_problem(entry) {
            problems.push(format!("{path}[{i}]: {entry:?}: {p}"));
        } else {
            names.push(Name::new(entry.to_ascii_lowercase()));
        }
    }
    (names, prefixes)
}

fn rules(raw: &[RawRule], path: &str, problems: &mut Vec<String>) -> Vec<Rule> {
    raw.iter()
        .enumerate()
        .map(|(i, r)| rule(r, &format!("{path}[{i}]"), problems))
        .collect()
}

fn rule(raw: &RawRule, path: &str, problems: &mut Vec<String>) -> Rule {
    if raw.remove.is_empty()
        && raw.rename.0.is_empty()
        && raw.set.0.is_empty()
        && raw.append.0.is_empty()
    {
        problems.push(format!(
            "{path}: the rule does nothing (give remove, rename, set or append)"
        ));
    }
    let when = raw
        .when
        .as_ref()
        .map(|w| {
            let wp = format!("{path}.when");
            let hosts = each(&w.host, &wp, "host", problems, |h| HostPattern::parse(h));
            let paths = each(&w.path, &wp, "path", problems, |p| {
                if !p.starts_with('/') || p.contains(['?', '#']) || p.contains(char::is_whitespace)
                {
                    Err(format!(
                        "{p:?} is not a path prefix (starts with /, no query)"
                    ))
                } else {
                    Ok(p.clone())
                }
            });
            let methods = each(&w.method, &wp, "method", problems, |m| {
                if is_token(m) && !m.bytes().any(|b| b.is_ascii_lowercase()) {
                    Ok(m.clone())
                } else {
                    Err(format!("{m:?} is not a method (uppercase, e.g. GET)"))
                }
            });
            let routes = each(&w.route, &wp, "route", problems, |r| {
                if r.is_empty() {
                    Err("must not be empty".into())
                } else {
                    Ok(r.clone())
                }
            });
            Conditions {
                hosts,
                paths,
                methods,
                routes,
            }
        })
        .unwrap_or_default();
    let mut remove = Vec::new();
    for (i, name) in raw.remove.iter().enumerate() {
        match name_problem(name) {
            Some(p) => problems.push(format!("{path}.remove[{i}]: {name:?}: {p}")),
            None => remove.push(Name::new(name.to_ascii_lowercase())),
        }
    }
    let mut rename = Vec::new();
    check_duplicates(&raw.rename, &format!("{path}.rename"), problems);
    for (from, to) in &raw.rename.0 {
        let p = format!("{path}.rename[{from:?}]");
        let mut ok = true;
        if let Some(why) = name_problem(from) {
            problems.push(format!("{p}: {why}"));
            ok = false;
        }
        if let Some(why) = name_problem(to) {
            problems.push(format!("{p}: {to:?}: {why}"));
            ok = false;
        }
        if ok && from.eq_ignore_ascii_case(to) {
            problems.push(format!("{p}: renames a header to itself"));
            ok = false;
        }
        if ok {
            rename.push((
                Name::new(from.to_ascii_lowercase()),
                Name::new(to.to_ascii_lowercase()),
            ));
        }
    }
    let set = values(&raw.set, &format!("{path}.set"), problems);
    let append = values(&raw.append, &format!("{path}.append"), problems);
    Rule {
        when,
        remove,
        rename,
        set,
        append,
    }
}

fn values(map: &FieldMap, path: &str, problems: &mut Vec<String>) -> Vec<(Name, Template)> {
    check_duplicates(map, path, problems);
    let mut out = Vec::new();
    for (name, value) in &map.0 {
        let p = format!("{path}[{name:?}]");
        let name_ok = match name_problem(name) {
            Some(why) => {
                problems.push(format!("{p}: {why}"));
                false
            }
            None => true,
        };
        match Template::parse(value) {
            Ok(t) if name_ok => out.push((Name::new(name.to_ascii_lowercase()), t)),
            Ok(_) => {}
            Err(e) => problems.push(format!("{p}: {value:?}: {e}")),
        }
    }
    out
}

fn check_duplicates(map: &FieldMap, path: &str, problems: &mut Vec<String>) {
    for (i, (a, _)) in map.0.iter().enumerate() {
        if let Some((b, _)) = map.0[..i].iter().find(|(b, _)| b.eq_ignore_ascii_case(a)) {
            problems.push(format!(
                "{path}[{a:?}]: listed twice (also as {b:?}; header names ignore case)"
            ));
        }
    }
}

/// Each value of a condition, parsed; problems name `when.host` for a
/// single value and `when.host[1]` in a list.
fn each<T>(
    field: &Option<OneOrMany>,
    path: &str,
    name: &str,
    problems: &mut Vec<String>,
    parse: impl Fn(&String) -> Result<T, String>,
) -> Vec<T> {
    let Some(field) = field else {
        return Vec::new();
    };
    if field.values.is_empty() {
        problems.push(format!(
            "{path}.{name}: must not be empty (omit it to match any)"
        ));
    }
    let mut out = Vec::new();
    for (i, v) in field.values.iter().enumerate() {
        match parse(v) {
            Ok(x) => out.push(x),
            Err(e) if field.single => problems.push(format!("{path}.{name}: {e}")),
            Err(e) => problems.push(format!("{path}.{name}[{i}]: {e}")),
        }
    }
    out
}

/// A duration in whole seconds (`10m`, `365d`, or a number).
pub(crate) fn seconds(value: &Seconds, path: &str, problems: &mut Vec<String>) -> Option<u64> {
    match value {
        Seconds::Number(n) => Some(*n),
        Seconds::Text(t) => match humantime::parse_duration(t) {
            Ok(d) => Some(d.as_secs()),
            Err(_) => {
                problems.push(format!(
                    "{path}: {t:?} is not a duration (e.g. 10m, 365d, or seconds)"
                ));
                None
            }
        },
    }
}
