//! Who may reach a route or an environment: a level (public,
//! authenticated, shared with the owning organization, personal to the
//! environment's owner), narrowed by allow rules on subject, email, email
//! domain and groups. Admins pass the shared and personal levels.

use super::Identity;

/// How much identity a request needs, from the loosest to the strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Anyone, with or without a token (a token sent is still checked).
    Public,
    /// A valid identity from a trusted issuer.
    Authenticated,
    /// A member of the organization that owns the cluster (its
    /// organization claim holds the cluster's `organization`).
    Shared,
    /// The environment's owner (by subject or email).
    Personal,
}

impl Level {
    pub fn parse(name: &str) -> Option<Level> {
        Some(match name {
            "public" => Level::Public,
            "authenticated" => Level::Authenticated,
            "shared" => Level::Shared,
            "personal" => Level::Personal,
            _ => return None,
        })
    }
}

/// What the shared and personal levels compare an identity with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Owners<'a> {
    /// The cluster's organization.
    pub organization: Option<&'a str>,
    /// The environment's owner: a subject or an email.
    pub owner: Option<&'a str>,
    /// Who passes shared and personal levels anyway.
    pub admins: Option<&'a Allow>,
}

/// Allow rules: an identity passes when it matches any rule, or when
/// there are none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    pub subjects: Vec<String>,
    /// Compared ignoring case.
    pub emails: Vec<String>,
    /// `example.com` allows `a@example.com`, not `a@sub.example.com`.
    pub email_domains: Vec<String>,
    pub groups: Vec<String>,
}

impl Allow {
    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
            && self.emails.is_empty()
            && self.email_domains.is_empty()
            && self.groups.is_empty()
    }

    fn admits(&self, who: &Identity) -> bool {
        if self.is_empty() {
            return true;
        }
        let email = who.email.as_deref();
        self.subjects.contains(&who.subject)
            || email.is_some_and(|e| self.emails.iter().any(|a| a.eq_ignore_ascii_case(e)))
            || email
                .and_then(|e| e.rsplit_once('@'))
                .is_some_and(|(_, d)| self.email_domains.iter().any(|a| a.eq_ignore_ascii_case(d)))
            || who.groups.iter().any(|g| self.groups.contains(g))
    }
}

/// The access rule in force for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub level: Level,
    pub allow: Allow,
    /// Send the visitor's `Authorization` header on to the service.
    pub pass_authorization: bool,
    /// With `personal`: the owner, when the YAML names one (else the one
    /// the sidecar registered).
    pub owner: Option<String>,
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// No identity where one is needed.
    Unauthenticated,
    /// An identity the rule does not admit.
    Forbidden,
}

impl Access {
    pub fn decide(&self, who: Option<&Identity>, owners: &Owners) -> Decision {
        let who = match (self.level, who) {
            (Level::Public, _) => return Decision::Allow,
            (_, None) => return Decision::Unauthenticated,
            (_, Some(who)) => who,
        };
        let admin = || {
            owners
                .admins
                .is_some_and(|a| !a.is_empty() && a.admits(who))
        };
        let level = match self.level {
            Level::Public | Level::Authenticated => true,
            Level::Shared => {
                owners
                    .organization
                    .is_some_and(|org| who.organizations.iter().any(|o| o == org))
                    || admin()
            }
            Level::Personal => {
                let owner = self.owner.as_deref().or(owners.owner);
                owner.is_some_and(|owner| {
                    who.subject == owner
                        || who
                            .email
                            .as_deref()
                            .is_some_and(|e| e.eq_ignore_ascii_case(owner))
                }) || admin()
            }
        };
        if level && self.allow.admits(who) {
            Decision::Allow
        } else {
            Decision::Forbidden
        }
    }

    /// This rule, or a stricter one a sidecar asked for its environment
    /// (a looser one is never taken).
    pub fn at_least(self: &std::sync::Arc<Self>, level: Level) -> std::sync::Arc<Self> {
        if level <= self.level {
            return self.clone();
        }
        std::sync::Arc::new(Access {
            level,
            ..(**self).clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(sub: &str, email: Option<&str>, groups: &[&str]) -> Identity {
        Identity {
            issuer: "i".into(),
            subject: sub.into(),
            email: email.map(Into::into),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            organizations: vec![],
            claims: vec![],
            assertions: Default::default(),
            headers: vec![],
        }
    }

    #[test]
    fn levels_and_allow_rules() {
        let public = Access {
            level: Level::Public,
            allow: Allow::default(),
            pass_authorization: false,
            owner: None,
        };
        let none = Owners::default();
        assert_eq!(public.decide(None, &none), Decision::Allow);
        let any = Access {
            level: Level::Authenticated,
            ..public.clone()
        };
        assert_eq!(any.decide(None, &none), Decision::Unauthenticated);
        assert_eq!(
            any.decide(Some(&who("u", None, &[])), &none),
            Decision::Allow
        );
        let team = Access {
            allow: Allow {
                email_domains: vec!["example.com".into()],
                groups: vec!["eng".into()],
                subjects: vec!["robot".into()],
                emails: vec!["Guest@Other.org".into()],
            },
            ..any
        };
        for (id, ok) in [
            (who("u", Some("a@EXAMPLE.com"), &[]), true),
            (who("u", Some("a@sub.example.com"), &[]), false),
            (who("u", Some("a@example.com.evil"), &[]), false),
            (who("u", Some("guest@other.org"), &[]), true),
            (who("u", None, &["eng"]), true),
            (who("u", None, &["engineering"]), false),
            (who("robot", None, &[]), true),
            (who("u", None, &[]), false),
        ] {
            let want = if ok {
                Decision::Allow
            } else {
                Decision::Forbidden
            };
            assert_eq!(team.decide(Some(&id), &none), want, "{id:?}");
        }
    }

    #[test]
    fn shared_and_personal_levels() {
        let rule = |level| Access {
            level,
            allow: Allow::default(),
            pass_authorization: false,
            owner: None,
        };
        let admins = Allow {
            groups: vec!["platform".into()],
            ..Allow::default()
        };
        let owners = Owners {
            organization: Some("acme"),
            owner: Some("Alice@Example.com"),
            admins: Some(&admins),
        };
        let mut member = who("m", Some("m@acme.test"), &[]);
        member.organizations = vec!["acme".into()];
        let mut stranger = who("s", None, &[]);
        stranger.organizations = vec!["other".into()];
        let alice = who("a", Some("alice@example.com"), &[]);
        let admin = who("root", None, &["platform"]);
        let shared = rule(Level::Shared);
        assert_eq!(shared.decide(Some(&member), &owners), Decision::Allow);
        assert_eq!(shared.decide(Some(&stranger), &owners), Decision::Forbidden);
        assert_eq!(shared.decide(Some(&admin), &owners), Decision::Allow);
        assert_eq!(shared.decide(None, &owners), Decision::Unauthenticated);
        let personal = rule(Level::Personal);
        assert_eq!(personal.decide(Some(&alice), &owners), Decision::Allow);
        assert_eq!(personal.decide(Some(&member), &owners), Decision::Forbidden);
        assert_eq!(personal.decide(Some(&admin), &owners), Decision::Allow);
        // No owner known: admins only.
        let nobody = Owners {
            owner: None,
            ..owners
        };
        assert_eq!(personal.decide(Some(&alice), &nobody), Decision::Forbidden);
        // The YAML's owner wins over the sidecar's.
        let yaml_owner = Access {
            owner: Some("m".into()),
            ..personal.clone()
        };
        assert_eq!(yaml_owner.decide(Some(&member), &owners), Decision::Allow);
        assert_eq!(
            yaml_owner.decide(Some(&alice), &owners),
            Decision::Forbidden
        );
        // Stricter on request, never looser.
        let any = std::sync::Arc::new(rule(Level::Authenticated));
        assert_eq!(any.at_least(Level::Personal).level, Level::Personal);
        assert_eq!(any.at_least(Level::Public).level, Level::Authenticated);
    }
}
