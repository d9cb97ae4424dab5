//! Who may reach a route or an environment: a level, narrowed by allow
//! rules on subject, email, email domain and groups.

use super::Identity;

/// How much identity a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Anyone, with or without a token (a token sent is still checked).
    Public,
    /// A valid token from a trusted issuer, within the allow rules.
    Authenticated,
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
    pub fn decide(&self, who: Option<&Identity>) -> Decision {
        match (self.level, who) {
            (Level::Public, _) => Decision::Allow,
            (Level::Authenticated, None) => Decision::Unauthenticated,
            (Level::Authenticated, Some(who)) if self.allow.admits(who) => Decision::Allow,
            (Level::Authenticated, Some(_)) => Decision::Forbidden,
        }
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
            claims: vec![],
            headers: vec![],
        }
    }

    #[test]
    fn levels_and_allow_rules() {
        let public = Access {
            level: Level::Public,
            allow: Allow::default(),
            pass_authorization: false,
        };
        assert_eq!(public.decide(None), Decision::Allow);
        let any = Access {
            level: Level::Authenticated,
            ..public.clone()
        };
        assert_eq!(any.decide(None), Decision::Unauthenticated);
        assert_eq!(any.decide(Some(&who("u", None, &[]))), Decision::Allow);
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
            assert_eq!(team.decide(Some(&id)), want, "{id:?}");
        }
    }
}
