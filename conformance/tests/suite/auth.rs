//! Visitor authentication through the real binaries (`auth:`,
//! `routes[].access:`): bearer JWTs from a configured issuer, the 401/403
//! outcomes with their `WWW-Authenticate`, what reaches the service
//! (identity headers, never the visitor's credentials or spoofed identity
//! headers), and bad issuer configs refused by `check-config`.

use std::path::PathBuf;

use conformance::{check_config, exchange, header, Stack};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const ISS: &str = "https://id.example.test";

pub(crate) fn keys_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../test-support/jwt-keys"
    ))
}

pub(crate) fn auth_yaml() -> String {
    let keys = keys_dir();
    format!(
        r#"auth:
  issuers:
    - issuer: {ISS}
      algorithms: [ES256, RS256]
      keys: [{ec}, {rsa}]
      audiences: [preview]
  access:
    default: authenticated
routes:
  - {{ name: open, host: open.example.test, target: demo/hello:8080, access: public }}
  - name: team
    host: team.example.test
    target: demo/hello:8080
    access: {{ email_domains: [example.com], groups: [admins] }}
  - name: pass
    host: pass.example.test
    target: demo/hello:8080
    access: {{ level: authenticated, pass_authorization: true }}
"#,
        ec = keys.join("ec.pub").display(),
        rsa = keys.join("rsa.pub").display(),
    )
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A test issuer's signing key.
pub(crate) fn encoding_key(alg: Algorithm, file: &str) -> EncodingKey {
    let pem = std::fs::read(keys_dir().join(file)).unwrap();
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    }
}

pub(crate) fn token(alg: Algorithm, key: &str, claims: Value) -> String {
    let key = encoding_key(alg, key);
    encode(&Header::new(alg), &claims, &key).unwrap()
}

pub(crate) fn claims(email: &str) -> Value {
    json!({ "iss": ISS, "aud": "preview", "sub": "u-42", "email": email,
            "groups": ["eng"], "exp": now() + 600 })
}

fn code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON: {body}"));
    v["error"]["code"].as_str().unwrap().to_owned()
}

#[test]
fn a_preview_needs_a_valid_token_and_the_service_learns_who() {
    let stack = Stack::start_with_edge_yaml(&auth_yaml());
    let host = stack.preview_host();

    let (status, headers, body) = exchange(&stack, &host, "/headers", &[]);
    assert_eq!(status, 401, "{body}");
    assert_eq!(code(&body), "UNAUTHENTICATED");
    assert_eq!(
        header(&headers, "www-authenticate"),
        Some("Bearer realm=\"preview\"")
    );

    let good = token(Algorithm::ES256, "ec.key", claims("a@example.com"));
    let bearer = format!("Authorization: Bearer {good}");
    let (status, _, body) = exchange(
        &stack,
        &host,
        "/headers",
        &[
            "-H",
            &bearer,
            "-H",
            "X-Auth-Request-User: admin",
            "-H",
            "X-Auth-Request-Extra: x",
        ],
    );
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["x-auth-request-user"], "u-42", "{seen}");
    assert_eq!(seen["x-auth-request-email"], "a@example.com");
    assert_eq!(seen["x-auth-request-groups"], "eng");
    assert!(
        seen.get("x-auth-request-extra").is_none(),
        "spoofed: {seen}"
    );
    assert!(
        seen.get("authorization").is_none(),
        "the token stays at the edge: {seen}"
    );
    // The request's log line names who it was (the subject), never the token.
    let logged = stack
        .edge
        .wait_line("subject=\"u-42\"", std::time::Duration::from_secs(10));
    assert!(logged.contains("status=200"), "{logged}");
    assert!(!stack.edge.output().contains(&good));

    // RS256 from the same issuer works too; the token is only read from
    // the Authorization header.
    let rs = token(Algorithm::RS256, "rsa.key", claims("a@example.com"));
    let (status, _, _) = exchange(
        &stack,
        &host,
        "/headers",
        &["-H", &format!("Authorization: Bearer {rs}")],
    );
    assert_eq!(status, 200);
    let (status, _, body) = exchange(&stack, &host, &format!("/headers?access_token={good}"), &[]);
    assert_eq!(status, 401, "{body}");
}

#[test]
fn refused_tokens_say_why_and_bad_tokens_fail_even_on_public_routes() {
    let stack = Stack::start_with_edge_yaml(&auth_yaml());
    let host = stack.preview_host();
    let mut expired = claims("a@example.com");
    expired["exp"] = json!(now() - 3600);
    let mut wrong_aud = claims("a@example.com");
    wrong_aud["aud"] = json!("other");
    let none = format!(
        "{}.{}.",
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", "eyJzdWIiOiJ1LTQyIn0"
    );
    for (name, t, reason) in [
        (
            "expired",
            token(Algorithm::ES256, "ec.key", expired),
            "expired",
        ),
        (
            "audience",
            token(Algorithm::ES256, "ec.key", wrong_aud),
            "audience",
        ),
        (
            "foreign key",
            token(Algorithm::RS256, "other-rsa.key", claims("a@example.com")),
            "signature",
        ),
        ("alg none", none, "not a JWT"),
    ] {
        let (status, headers, body) = exchange(
            &stack,
            &host,
            "/",
            &["-H", &format!("Authorization: Bearer {t}")],
        );
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(code(&body), "INVALID_TOKEN", "{name}");
        let challenge = header(&headers, "www-authenticate").unwrap();
        assert!(
            challenge.contains("error=\"invalid_token\"") && challenge.contains(reason),
            "{name}: {challenge}"
        );
        let (status, _, _) = exchange(
            &stack,
            "open.example.test",
            "/",
            &["-H", &format!("Authorization: Bearer {t}")],
        );
        assert_eq!(status, 401, "{name} on a public route");
    }
    let (status, _, _) = exchange(&stack, "open.example.test", "/", &[]);
    assert_eq!(status, 200, "public needs nothing");
}

#[test]
fn allow_rules_give_403_to_identities_they_do_not_admit() {
    let stack = Stack::start_with_edge_yaml(&auth_yaml());
    let outsider = token(Algorithm::ES256, "ec.key", claims("eve@other.org"));
    let (status, headers, body) = exchange(
        &stack,
        "team.example.test",
        "/",
        &["-H", &format!("Authorization: Bearer {outsider}")],
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(code(&body), "FORBIDDEN");
    assert_eq!(header(&headers, "www-authenticate"), None);
    let member = token(Algorithm::ES256, "ec.key", claims("ann@example.com"));
    let (status, _, _) = exchange(
        &stack,
        "team.example.test",
        "/",
        &["-H", &format!("Authorization: Bearer {member}")],
    );
    assert_eq!(status, 200);
    // A route that passes the token on.
    let (status, _, body) = exchange(
        &stack,
        "pass.example.test",
        "/headers",
        &["-H", &format!("Authorization: Bearer {member}")],
    );
    assert_eq!(status, 200);
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["authorization"], format!("Bearer {member}"));
}

#[test]
fn issuer_configs_that_would_be_unsafe_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_dir();
    let issuer = |fields: &str| format!("auth:\n  issuers:\n    - issuer: {ISS}\n{fields}");
    for (fields, expect) in [
        (
            format!(
                "      algorithms: [RS256]\n      keys: [{}]\n",
                keys.join("rsa.key").display()
            ),
            "private key",
        ),
        (
            format!(
                "      algorithms: [RS256, HS256]\n      keys: [{}]\n",
                keys.join("rsa.pub").display()
            ),
            "HS256 has no key of its family",
        ),
        (
            format!(
                "      algorithms: [none]\n      keys: [{}]\n",
                keys.join("rsa.pub").display()
            ),
            "not one of",
        ),
        (
            format!(
                "      algorithms: [RS256]\n      keys: [{}]\n      leeway: 5m\n",
                keys.join("rsa.pub").display()
            ),
            "leeway",
        ),
        ("      algorithms: [RS256]\n".to_owned(), "give keys"),
    ] {
        let (ok, err) = check_config(dir.path(), &issuer(&fields));
        assert!(!ok, "{fields}");
        assert!(
            err.contains("auth.issuers[0]") && err.contains(expect),
            "{expect}: {err}"
        );
    }
    let (ok, err) = check_config(
        dir.path(),
        "routes:\n  - { host: a.example.test, target: demo/hello:8080, access: public }\n",
    );
    assert!(
        !ok && err.contains("routes[0].access: needs auth:"),
        "{err}"
    );
    let (ok, err) = check_config(
        dir.path(),
        &issuer(&format!(
            "      algorithms: [ES256]\n      keys: [{}]\n  access:\n    default: everyone\n",
            keys.join("ec.pub").display()
        )),
    );
    assert!(
        !ok && err.contains("auth.access.default") && err.contains("not an access level"),
        "{err}"
    );
}

/// A JWK for a test key, with a key id.
fn jwk(file: &str, alg: Algorithm, kid: &str) -> Value {
    let key = encoding_key(alg, file);
    let mut jwk =
        serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).unwrap())
            .unwrap();
    jwk["kid"] = json!(kid);
    jwk
}

fn token_with_kid(alg: Algorithm, key: &str, kid: &str, sub: &str) -> String {
    let key = encoding_key(alg, key);
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    let mut claims = claims("a@example.com");
    claims["sub"] = json!(sub);
    encode(&header, &claims, &key).unwrap()
}

#[test]
fn keys_from_a_jwks_url_are_fetched_refreshed_for_new_kids_and_kept_when_the_issuer_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let set = |keys: Vec<Value>| {
        let tmp = dir.path().join("jwks.tmp");
        std::fs::write(&tmp, json!({ "keys": keys }).to_string()).unwrap();
        std::fs::rename(tmp, dir.path().join("jwks.json")).unwrap();
    };
    set(vec![jwk("ec.key", Algorithm::ES256, "k1")]);
    // A real web server for the key set.
    let mut server = conformance::Proc::spawn_program(
        "python3",
        &["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"],
        dir.path(),
    );
    let line = server.wait_line("Serving HTTP on", std::time::Duration::from_secs(10));
    let port = line
        .split("port ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let stack = Stack::start_with_edge_yaml(&format!(
        r#"auth:
  issuers:
    - issuer: {ISS}
      algorithms: [ES256, RS256]
      jwks_url: http://127.0.0.1:{port}/jwks.json
      jwks_refresh: 1s
      audiences: [preview]
"#
    ));
    let host = stack.preview_host();
    let call = |t: &str| {
        exchange(
            &stack,
            &host,
            "/",
            &["-H", &format!("Authorization: Bearer {t}")],
        )
    };
    let (status, _, body) = call(&token_with_kid(Algorithm::ES256, "ec.key", "k1", "u1"));
    assert_eq!(status, 200, "fetched on first use: {body}");

    // A key the set does not have yet: refused, until the issuer publishes it.
    let rotated = token_with_kid(Algorithm::RS256, "rsa.key", "k2", "u2");
    let (status, _, body) = call(&rotated);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("key id"), "{body}");
    set(vec![
        jwk("ec.key", Algorithm::ES256, "k1"),
        jwk("rsa.key", Algorithm::RS256, "k2"),
    ]);
    // Refetches for unknown keys are spaced by a floor (here 1 s, the
    // refresh period): once it has passed, the next token with the new key
    // makes the edge fetch the set before answering.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (status, _, body) = call(&rotated);
    assert_eq!(status, 200, "refetched for a new key id: {body}");

    // The issuer goes down: keys already fetched keep verifying new tokens.
    server.kill();
    let (status, _, body) = call(&token_with_kid(Algorithm::ES256, "ec.key", "k1", "u3"));
    assert_eq!(status, 200, "stale keys served: {body}");
}

#[test]
fn shared_and_personal_levels_and_a_sidecar_may_only_tighten_them() {
    let yaml = conformance::edge_yaml(&format!(
        r#"auth:
  issuers:
    - {{ issuer: {ISS}, algorithms: [ES256], keys: [{ec}], audiences: [preview] }}
  admins: {{ groups: [platform] }}
  access:
    environments:
      demo: shared
routes:
  - name: mine
    host: mine.example.test
    target: demo/hello:8080
    access: {{ level: personal, owner: alice@example.com }}
"#,
        ec = keys_dir().join("ec.pub").display()
    ))
    .replace(
        "    environments: [demo]\n",
        "    environments: [demo]\n    organization: acme\n",
    );
    let mut stack = Stack::start_with_edge_yaml("");
    stack.write_edge_yaml(&yaml);
    stack
        .edge
        .wait_line("config reloaded", std::time::Duration::from_secs(10));
    let who = |sub: &str, email: &str, org: &str, groups: &[&str]| {
        token(
            Algorithm::ES256,
            "ec.key",
            json!({ "iss": ISS, "aud": "preview", "sub": sub, "email": email,
                    "org": org, "groups": groups, "exp": now() + 600 }),
        )
    };
    let member = who("m", "m@acme.test", "acme", &[]);
    let outsider = who("o", "o@other.test", "other", &[]);
    let admin = who("root", "root@ops.test", "ops", &["platform"]);
    let alice = who("alice", "alice@example.com", "other", &[]);
    let carol = who("carol", "carol@other.test", "other", &[]);
    let status = |stack: &Stack, host: &str, t: &str| {
        exchange(
            stack,
            host,
            "/",
            &["-H", &format!("Authorization: Bearer {t}")],
        )
        .0
    };
    let preview = stack.preview_host();
    for (name, t, want) in [
        ("member", &member, 200),
        ("outsider", &outsider, 403),
        ("admin", &admin, 200),
        ("alice", &alice, 403),
    ] {
        assert_eq!(status(&stack, &preview, t), want, "shared preview, {name}");
    }
    for (name, t, want) in [
        ("alice", &alice, 200),
        ("member", &member, 403),
        ("admin", &admin, 200),
    ] {
        assert_eq!(
            status(&stack, "mine.example.test", t),
            want,
            "personal route, {name}"
        );
    }

    // The sidecar asks for its environment to be personal to carol: the
    // organization's members are out, carol and the admins in.
    let restart_sidecar = |stack: &mut Stack, extra: &str| {
        let down = |lines: &[String]| lines.iter().filter(|l| l.contains("tunnel down")).count();
        let before = stack
            .edge
            .wait_output("", std::time::Duration::ZERO, |l| Some(down(l)));
        let mut old = stack.sidecar.take().unwrap();
        old.kill();
        // Both of its sessions gone before the new sidecar registers.
        stack.edge.wait_output(
            "both sessions down",
            std::time::Duration::from_secs(10),
            |l| (down(l) >= before + 2).then_some(()),
        );
        let path = stack.sidecar_yaml();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(extra);
        std::fs::write(&path, text).unwrap();
        let sidecar =
            conformance::Proc::spawn("sidecar", &["run", "--config", path.to_str().unwrap()]);
        sidecar.wait_lines("tunnel up", 2, std::time::Duration::from_secs(10));
        stack.sidecar = Some(sidecar);
    };
    restart_sidecar(&mut stack, "access: personal\nowner: carol\n");
    for (name, t, want) in [
        ("carol", &carol, 200),
        ("member", &member, 403),
        ("admin", &admin, 200),
    ] {
        assert_eq!(
            status(&stack, &preview, t),
            want,
            "tightened by the sidecar, {name}"
        );
    }
    // Asking for less than the YAML gives changes nothing.
    restart_sidecar(&mut stack, "access: authenticated\n");
    assert_eq!(
        status(&stack, &preview, &outsider),
        403,
        "loosening is ignored"
    );
    assert_eq!(status(&stack, &preview, &member), 200);
}
