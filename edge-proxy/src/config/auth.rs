//! `auth:` and `routes[].access:` → the verifier and the access rules.
//! With `auth:` configured nothing is public unless the YAML says so.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::{self, keys, Access, Allow, Issuer, Level, Verifier};

/// The YAML as written.
pub mod raw {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Auth {
        pub issuers: Vec<Issuer>,
        #[serde(default)]
        pub access: AccessTable,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Issuer {
        /// `iss` as the tokens carry it.
        pub issuer: String,
        pub algorithms: Vec<String>,
        /// Public-key files: PEM, a JWK or a JWK set.
        #[serde(default)]
        pub keys: Vec<String>,
        /// An HMAC secret's file (HS256/384/512).
        pub secret_file: Option<String>,
        #[serde(default)]
        pub audiences: Vec<String>,
        pub leeway: Option<String>,
        #[serde(default)]
        pub claims: Claims,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Claims {
        pub email: Option<String>,
        pub groups: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AccessTable {
        pub default: Option<Access>,
        #[serde(default)]
        pub environments: std::collections::BTreeMap<String, Access>,
    }

    /// `public`, `authenticated`, or a mapping with allow rules.
    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    pub enum Access {
        Level(String),
        Rule(AccessRule),
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AccessRule {
        pub level: Option<String>,
        #[serde(default)]
        pub subjects: Vec<String>,
        #[serde(default)]
        pub emails: Vec<String>,
        #[serde(default)]
        pub email_domains: Vec<String>,
        #[serde(default)]
        pub groups: Vec<String>,
        #[serde(default)]
        pub pass_authorization: bool,
    }
}

/// Visitor authentication, validated.
#[derive(Debug)]
pub struct AuthSettings {
    pub verifier: Verifier,
    /// For requests no more specific rule covers.
    pub default: Arc<Access>,
    pub environments: HashMap<String, Arc<Access>>,
}

/// `auth:` → settings, or problems.
pub fn validate(
    raw: &raw::Auth,
    environments: &[&str],
    base: &Path,
    problems: &mut Vec<String>,
) -> Arc<AuthSettings> {
    if raw.issuers.is_empty() {
        problems.push("auth.issuers: give at least one issuer".into());
    }
    let issuers = (raw.issuers.iter().enumerate())
        .filter_map(|(i, r)| issuer(r, &format!("auth.issuers[{i}]"), base, problems))
        .collect();
    let default = match &raw.access.default {
        Some(a) => access(a, "auth.access.default", problems),
        None => Access {
            level: Level::Authenticated,
            allow: Allow::default(),
            pass_authorization: false,
        },
    };
    let mut by_env = HashMap::new();
    for (env, a) in &raw.access.environments {
        let path = format!("auth.access.environments.{env}");
        if !environments.contains(&env.as_str()) {
            problems.push(format!(
                "{path}: {env:?} is not listed in any clusters[].environments"
            ));
        }
        by_env.insert(env.clone(), Arc::new(access(a, &path, problems)));
    }
    Arc::new(AuthSettings {
        verifier: Verifier::new(issuers),
        default: Arc::new(default),
        environments: by_env,
    })
}

fn issuer(
    raw: &raw::Issuer,
    path: &str,
    base: &Path,
    problems: &mut Vec<String>,
) -> Option<Issuer> {
    let before = problems.len();
    if raw.issuer.trim().is_empty() {
        problems.push(format!("{path}.issuer: must not be empty"));
    }
    let mut algorithms = Vec::new();
    for (i, name) in raw.algorithms.iter().enumerate() {
        match jsonwebtoken::Algorithm::from_str(name) {
            Ok(a) if !algorithms.contains(&a) => algorithms.push(a),
            Ok(_) => problems.push(format!("{path}.algorithms[{i}]: {name:?} is listed twice")),
            Err(_) => problems.push(format!(
                "{path}.algorithms[{i}]: {name:?} is not one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
            )),
        }
    }
    if raw.algorithms.is_empty() {
        problems.push(format!(
            "{path}.algorithms: give the algorithms its tokens use (e.g. [RS256])"
        ));
    }
    let mut keys = Vec::new();
    for (i, file) in raw.keys.iter().enumerate() {
        let at = format!("{path}.keys[{i}]");
        match std::fs::read(base.join(file)) {
            Ok(bytes) => match keys::public_keys(&bytes) {
                Ok(k) => keys.extend(k),
                Err(e) => problems.push(format!("{at}: {file}: {e}")),
            },
            Err(e) => problems.push(format!("{at}: cannot read {file}: {e}")),
        }
    }
    if let Some(file) = &raw.secret_file {
        let at = format!("{path}.secret_file");
        match std::fs::read(base.join(file)) {
            Ok(bytes) => match keys::secret(&bytes) {
                Ok(k) => keys.push(k),
                Err(e) => problems.push(format!("{at}: {file}: {e}")),
            },
            Err(e) => problems.push(format!("{at}: cannot read {file}: {e}")),
        }
    }
    if raw.keys.is_empty() && raw.secret_file.is_none() {
        problems.push(format!(
            "{path}: give keys (public-key files) or secret_file"
        ));
    }
    // Every algorithm needs a key of its family, and every key an
    // algorithm: an HMAC algorithm beside only public keys would be the
    // classic confusion, and is refused here as well as at verification.
    for a in &algorithms {
        if !keys.is_empty() && !keys.iter().any(|k| k.fits(*a)) {
            problems.push(format!(
                "{path}.algorithms: {a:?} has no key of its family among the issuer's keys"
            ));
        }
    }
    let leeway = yaml_config::duration(
        &raw.leeway,
        &format!("{path}.leeway"),
        Duration::from_secs(auth::DEFAULT_LEEWAY_SECS),
        problems,
    );
    if leeway.as_secs() > auth::MAX_LEEWAY_SECS {
        problems.push(format!(
            "{path}.leeway: {leeway:?} is more than the {}s allowed",
            auth::MAX_LEEWAY_SECS
        ));
    }
    if problems.len() > before || algorithms.is_empty() {
        return None;
    }
    Some(Issuer {
        issuer: raw.issuer.clone(),
        keys,
        validation: auth::validation(&raw.issuer, algorithms, &raw.audiences, leeway.as_secs()),
        email_claim: raw.claims.email.clone().unwrap_or_else(|| "email".into()),
        groups_claim: raw.claims.groups.clone().unwrap_or_else(|| "groups".into()),
    })
}

/// An `access:` value at `path`.
pub fn access(raw: &raw::Access, path: &str, problems: &mut Vec<String>) -> Access {
    let level = |name: &str, problems: &mut Vec<String>| match name {
        "public" => Level::Public,
        "authenticated" => Level::Authenticated,
        other => {
            problems.push(format!(
                "{path}: {other:?} is not an access level (public or authenticated)"
            ));
            Level::Authenticated
        }
    };
    match raw {
        raw::Access::Level(name) => Access {
            level: level(name, problems),
            allow: Allow::default(),
            pass_authorization: false,
        },
        raw::Access::Rule(r) => {
            let allow = Allow {
                subjects: r.subjects.clone(),
                emails: r.emails.clone(),
                email_domains: r.email_domains.clone(),
                groups: r.groups.clone(),
            };
            let level = level(r.level.as_deref().unwrap_or("authenticated"), problems);
            if level == Level::Public && !allow.is_empty() {
                problems.push(format!(
                    "{path}: allow rules on a public level would never apply"
                ));
            }
            Access {
                level,
                allow,
                pass_authorization: r.pass_authorization,
            }
        }
    }
}
