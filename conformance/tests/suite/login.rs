//! Browser sign-in through the real binaries: a real OpenID provider
//! (`oidc-provider`, Node), Chromium driven by Playwright, the edge's
//! session cookies and their attack corpus with curl.
//!
//! Needs `node`, `conformance/browser/node_modules` and `chromium`
//! (`scripts/test` installs them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use conformance::{exchange, header, Proc, Stack};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn browser_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/browser"))
}

/// The provider, the stack with `auth.login` on, and the sign-in host.
struct Login {
    stack: Stack,
    _provider: Proc,
    issuer: String,
    port: u16,
    /// The edge's YAML (another replica runs the same).
    yaml: String,
}

/// The secrets the edge's YAML names, written to `dir`.
fn write_secrets(dir: &Path) {
    std::fs::write(dir.join("client-secret"), "conformance-client-secret\n").unwrap();
    std::fs::write(
        dir.join("session.key"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
}

impl Login {
    fn start() -> Self {
        Self::start_with("")
    }

    /// With `extra` appended to the edge's YAML.
    fn start_with(extra: &str) -> Self {
        let stack = Stack::start();
        let port = stack.http_port;
        let callback = format!("http://auth.preview.localhost:{port}/.edge/callback");
        let provider = Proc::spawn_program(
            "node",
            &[
                "oidc-provider.mjs",
                "edge",
                "conformance-client-secret",
                &callback,
            ],
            &browser_dir(),
        );
        let issuer = provider.wait_line("listening ", WAIT)["listening ".len()..].to_owned();
        write_secrets(stack.dir.path());
        let yaml = conformance::edge_yaml(&format!(
            r#"auth:
  login:
    issuer: {issuer}
    client_id: edge
    client_secret_file: client-secret
    url: http://auth.preview.localhost:{port}
  session: {{ secret_file: session.key }}
  access:
    default: authenticated
    environments:
      demo: {{ level: personal, owner: alice@example.com }}
routes:
  - {{ name: docs, host: docs.preview.localhost, target: demo/hello:8080 }}
  - {{ name: open, host: open.preview.localhost, target: demo/hello:8080, access: public }}
{extra}"#
        ));
        stack.write_edge_yaml(&yaml);
        stack.edge.wait_line("config reloaded", WAIT);
        Login {
            stack,
            _provider: provider,
            issuer,
            port,
            yaml,
        }
    }

    /// Alice signed in through the browser on two previews: what the
    /// browser saw, and its `Cookie` for `docs.preview.localhost`.
    fn signed_in(&self) -> (Value, String) {
        let (first, second) = (
            self.url("hello-8080-demo.preview.localhost", "/headers"),
            self.url("docs.preview.localhost", "/headers"),
        );
        let seen = self.journey("alice", &first, &second, None);
        let value = cookie_for(&seen, "docs.preview.localhost")["value"]
            .as_str()
            .unwrap()
            .to_owned();
        (seen, format!("_preview_session={value}"))
    }

    /// Another replica of the edge: the same YAML and secrets (its own
    /// sidecar and service).
    fn replica(&self) -> Stack {
        let stack = Stack::start();
        write_secrets(stack.dir.path());
        stack.write_edge_yaml(&self.yaml);
        stack.edge.wait_line("config reloaded", WAIT);
        stack
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    /// Runs the browser journey; returns what it saw.
    fn journey(&self, account: &str, first: &str, second: &str, logout: Option<&str>) -> Value {
        let input = serde_json::json!({
            "first": first, "second": second, "logout": logout,
            "account": account, "issuer": self.issuer,
        });
        let out = std::process::Command::new("node")
            .arg("login-journey.mjs")
            .arg(input.to_string())
            .current_dir(browser_dir())
            .output()
            .expect("node is installed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "journey failed: {stdout}\n{}\nedge: {}",
            String::from_utf8_lossy(&out.stderr),
            self.stack.edge.output()
        );
        serde_json::from_str(stdout.lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("journey output {stdout}: {e}"))
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The session cookie the browser holds for `host`.
fn cookie_for<'a>(seen: &'a Value, host: &str) -> &'a Value {
    seen["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "_preview_session" && c["domain"] == host)
        .unwrap_or_else(|| panic!("no session cookie for {host}: {}", seen["cookies"]))
}

/// A JSON API call with `cookie`: the status and body.
fn with_cookie(login: &Login, host: &str, path: &str, cookie: &str) -> (u16, String) {
    with_cookie_on(&login.stack, host, path, cookie)
}

fn with_cookie_on(stack: &Stack, host: &str, path: &str, cookie: &str) -> (u16, String) {
    let cookie = format!("Cookie: {cookie}");
    let (status, _, body) = exchange(
        stack,
        host,
        path,
        &["-H", &cookie, "-H", "Accept: application/json"],
    );
    (status, body)
}

/// The previews of environment `demo` are personal to alice.
#[test]
fn a_browser_signs_in_once_for_every_preview_and_signs_out_everywhere() {
    let login = Login::start();
    let first = login.url("hello-8080-demo.preview.localhost", "/headers");
    let second = login.url("docs.preview.localhost", "/headers?x=1");
    let logout = login.url("hello-8080-demo.preview.localhost", "/.edge/logout");
    let seen = login.journey("alice", &first, &second, Some(&logout));

    // To the provider, signed in, back on the page asked for.
    assert_eq!(seen["first_redirected_to_provider"], true, "{seen}");
    assert_eq!(seen["first"]["url"], first.as_str());
    let service = json(seen["first"]["body"].as_str().unwrap());
    assert_eq!(service["x-auth-request-user"], "alice", "{service}");
    assert_eq!(service["x-auth-request-email"], "alice@example.com");
    assert_eq!(service["x-auth-request-groups"], "eng");
    assert!(
        !service["cookie"]
            .as_str()
            .unwrap_or("")
            .contains("_preview_session"),
        "the session cookie reached the service: {service}"
    );

    // The second preview: no provider page, handed over by the sign-in host.
    assert_eq!(seen["second"]["url"], second.as_str(), "{seen}");
    let visited = seen["second"]["visited"].as_array().unwrap();
    assert!(
        !visited
            .iter()
            .any(|u| u.as_str().unwrap().starts_with(&login.issuer)),
        "a second sign-in: {visited:?}"
    );
    let service = json(seen["second"]["body"].as_str().unwrap());
    assert_eq!(service["x-auth-request-user"], "alice");

    // Host-only, HttpOnly, SameSite=Lax cookies, one per host.
    for host in [
        "hello-8080-demo.preview.localhost",
        "docs.preview.localhost",
        "auth.preview.localhost",
    ] {
        let c = cookie_for(&seen, host);
        assert_eq!(c["httpOnly"], true, "{c}");
        assert_eq!(c["sameSite"], "Lax", "{c}");
    }

    // Signed out: the page says so, the cookie is gone, the API says 401,
    // and the cookies of that sign-in, replayed, are refused on every host.
    assert!(
        seen["logout"]["body"]
            .as_str()
            .unwrap()
            .contains("signed out"),
        "{seen}"
    );
    assert_eq!(seen["after_logout_status"], 401, "{seen}");
    for host in [
        "hello-8080-demo.preview.localhost",
        "docs.preview.localhost",
    ] {
        let value = cookie_for(&seen, host)["value"].as_str().unwrap();
        let (status, body) = with_cookie(
            &login,
            host,
            "/headers",
            &format!("_preview_session={value}"),
        );
        assert_eq!(status, 401, "replayed after logout on {host}: {body}");
    }
}

/// Replicas behind one name share sign-ins (one session key) and, with
/// Redis, sign-outs: signed out on one, the cookie is refused on another
/// at once, and on a replica that starts afterwards.
#[test]
fn with_redis_a_sign_out_on_one_replica_holds_on_every_replica() {
    let redis_dir = tempfile::tempdir().unwrap();
    let _redis = conformance::redis_server(redis_dir.path());
    let login = Login::start_with(&conformance::redis_yaml(redis_dir.path(), ""));
    let (seen, cookie) = login.signed_in();
    let other = login.replica();
    let on_other = || with_cookie_on(&other, "docs.preview.localhost", "/headers", &cookie);
    let (status, body) = on_other();
    assert_eq!(status, 200, "the other replica takes the cookie: {body}");
    // The sign-in ticket that made the cookie was used once, anywhere.
    let handover = seen["second"]["visited"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u.as_str())
        .find(|u| u.contains("docs.preview.localhost") && u.contains("/.edge/session?ticket="))
        .unwrap_or_else(|| panic!("no ticket handover: {seen}"));
    let path = &handover[handover.find("/.edge/").unwrap()..];
    let (status, _, body) = exchange(&other, "docs.preview.localhost", path, &[]);
    assert_eq!(status, 400, "a ticket replayed on another replica: {body}");

    let (status, body) = with_cookie(&login, "docs.preview.localhost", "/.edge/logout", &cookie);
    assert_eq!(status, 200, "{body}");
    test_support::wait::until_blocking("the other replica to learn the sign-out", || {
        on_other().0 == 401
    });

    let late = login.replica();
    late.edge
        .wait_line("following sign-outs of the other replicas", WAIT);
    let (status, body) = with_cookie_on(&late, "docs.preview.localhost", "/headers", &cookie);
    assert_eq!(status, 401, "a replica started after the sign-out: {body}");
}

/// Redis away at the sign-out: the replica signed out on refuses the
/// cookie at once; the others learn it once Redis is back (an empty one,
/// restarted: the sign-out waited for it), with no operator.
#[test]
fn a_sign_out_while_redis_is_away_reaches_the_other_replicas_when_it_returns() {
    let redis_dir = tempfile::tempdir().unwrap();
    let mut redis = conformance::redis_server(redis_dir.path());
    let login = Login::start_with(&conformance::redis_yaml(redis_dir.path(), ""));
    let (_, cookie) = login.signed_in();
    let other = login.replica();
    let on = |stack: &Stack| with_cookie_on(stack, "docs.preview.localhost", "/headers", &cookie).0;
    assert_eq!(on(&other), 200);

    redis.kill();
    let (status, body) = with_cookie(&login, "docs.preview.localhost", "/.edge/logout", &cookie);
    assert_eq!(status, 200, "{body}");
    assert_eq!(on(&login.stack), 401, "signed out here at once");

    let _redis = conformance::redis_server(redis_dir.path());
    test_support::wait::until_ok_blocking_within(
        Duration::from_secs(30),
        "the other replica to learn the sign-out",
        || match on(&other) {
            401 => Ok(()),
            status => Err(status),
        },
    );
    login
        .stack
        .edge
        .wait_line("a sign-out made while redis was away has reached it", WAIT);
}

#[test]
fn session_cookies_tickets_and_return_addresses_resist_tampering() {
    let login = Login::start();
    let hello = "hello-8080-demo.preview.localhost";
    let first = login.url(hello, "/headers");
    let second = login.url("docs.preview.localhost", "/headers");
    let seen = login.journey("alice", &first, &second, None);
    let value = cookie_for(&seen, hello)["value"]
        .as_str()
        .unwrap()
        .to_owned();
    let docs = cookie_for(&seen, "docs.preview.localhost")["value"]
        .as_str()
        .unwrap()
        .to_owned();

    // The genuine cookie works from curl too, and never reaches the
    // service, while the service's own cookies do.
    let (status, body) = with_cookie(
        &login,
        hello,
        "/headers",
        &format!("theme=dark; _preview_session={value}; lang=en"),
    );
    assert_eq!(status, 200, "{body}");
    let service = json(&body);
    assert_eq!(service["x-auth-request-user"], "alice");
    assert_eq!(service["cookie"], "theme=dark; lang=en", "{service}");

    // The identity token the edge signed verifies with jose against the
    // keys the edge publishes, for this host only.
    let token = service["x-preview-jwt-assertion"]
        .as_str()
        .expect("an identity token");
    let (status, headers, jwks) = exchange(&login.stack, hello, "/.well-known/jwks.json", &[]);
    assert_eq!(status, 200, "{jwks}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let issuer = login.url("auth.preview.localhost", "");
    let verify = |audience: &str| {
        std::process::Command::new("node")
            .args(["verify-jwt.mjs", token, &jwks, &issuer, audience])
            .current_dir(browser_dir())
            .output()
            .unwrap()
    };
    let out = verify(hello);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let verified = json(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(verified["claims"]["sub"], "alice", "{verified}");
    assert_eq!(verified["claims"]["email"], "alice@example.com");
    let out = verify("docs.preview.localhost");
    assert!(
        !out.status.success(),
        "a token for one preview is refused by another"
    );
    // A visitor cannot send its own.
    let (_, _, body) = exchange(
        &login.stack,
        "open.preview.localhost",
        "/headers",
        &["-H", "X-Preview-Jwt-Assertion: forged"],
    );
    assert!(
        json(&body).get("x-preview-jwt-assertion").is_none(),
        "{body}"
    );

    // Tampered, truncated, foreign, doubled: each refused.
    let mut tampered = value.clone().into_bytes();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (name, cookie) in [
        ("tampered", format!("_preview_session={tampered}")),
        (
            "truncated",
            format!("_preview_session={}", &value[..value.len() - 5]),
        ),
        ("another preview's", format!("_preview_session={docs}")),
        (
            "doubled",
            format!("_preview_session={value}; _preview_session={docs}"),
        ),
        ("garbage", "_preview_session=%00%ff".into()),
    ] {
        let (status, body) = with_cookie(&login, hello, "/headers", &cookie);
        assert_eq!(status, 401, "{name} cookie: {body}");
    }

    // A browser without a session is sent to sign in, with its address.
    let (status, headers, _) = exchange(
        &login.stack,
        hello,
        "/headers?q=1",
        &["-H", "Accept: text/html"],
    );
    assert_eq!(status, 302);
    let location = header(&headers, "location").unwrap();
    assert!(
        location.starts_with(&login.url("auth.preview.localhost", "/.edge/login?rd=http%3A%2F%2F")),
        "{location}"
    );

    // A sign-in ticket works once.
    let ticket = seen["second"]["visited"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|u| u.contains("/.edge/session?ticket="))
        .expect("the handover went through /.edge/session")
        .to_owned();
    let path = &ticket[ticket.find("/.edge/").unwrap()..];
    let (status, _, body) = exchange(&login.stack, "docs.preview.localhost", path, &[]);
    assert_eq!(status, 400, "a used ticket: {body}");
    let (status, _, _) = exchange(&login.stack, hello, path, &[]);
    assert_eq!(status, 400, "a ticket on another host");

    // The return address must be a host this edge serves.
    let auth = "auth.preview.localhost";
    for rd in [
        "//evil.example",
        "https:evil.example",
        "https%3A%2F%2Fevil.example",
        "https://evil.example/",
        "http://hello-8080-demo.preview.localhost.evil.example/",
        "http://x@evil.example/",
        "javascript:alert(1)",
    ] {
        let (status, _, body) = exchange(&login.stack, auth, &format!("/.edge/login?rd={rd}"), &[]);
        assert_eq!(status, 400, "rd={rd}: {body}");
    }
    let rd = format!("http://{hello}:{}/x", login.port);
    let (status, headers, _) = exchange(&login.stack, auth, &format!("/.edge/login?rd={rd}"), &[]);
    assert_eq!(status, 302);
    let location = header(&headers, "location").unwrap();
    assert!(location.starts_with(&login.issuer), "{location}");
    for part in [
        "code_challenge_method=S256",
        "state=",
        "nonce=",
        "client_id=edge",
    ] {
        assert!(location.contains(part), "{part} in {location}");
    }
    let set = header(&headers, "set-cookie").unwrap();
    assert!(
        set.starts_with("_preview_session_login=") && set.contains("HttpOnly"),
        "{set}"
    );

    // A callback without this browser's sign-in state is refused.
    let (status, _, _) = exchange(&login.stack, auth, "/.edge/callback?code=x&state=y", &[]);
    assert_eq!(status, 400);

    // A service cannot plant the edge's cookie (cookie tossing); its own
    // cookies pass.
    let toss = format!(
        "/set-cookie?_preview_session%3D{docs}%3B+Domain%3Dpreview.localhost&theme%3Dlight"
    );
    let (status, headers, _) = exchange(&login.stack, "open.preview.localhost", &toss, &[]);
    assert_eq!(status, 200);
    let set_cookies: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(set_cookies, ["theme=light"], "{headers:?}");
}

/// The fixture directory must exist for these tests to mean anything.
#[test]
fn the_browser_fixtures_are_installed() {
    let modules = browser_dir().join("node_modules");
    for package in ["oidc-provider", "playwright-core", "jose"] {
        assert!(
            Path::new(&modules.join(package)).exists(),
            "{package} missing: run scripts/test (npm ci in conformance/browser)"
        );
    }
}
