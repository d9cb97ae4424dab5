//! Visitors' tokens for `sidecar access`, pasted once
//! (`sidecar access login DOMAIN`) and kept in the user's config
//! directory: one file per domain, readable by the user alone (0600, in a
//! 0700 directory), as ssh and kubectl keep credentials. A service host
//! uses the token of the longest domain it is under, so one login covers
//! every preview of an edge.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where tokens are kept.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$XDG_CONFIG_HOME/preview-edge/tokens`, else
    /// `$HOME/.config/preview-edge/tokens`.
    pub fn for_user() -> Result<Self, String> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let config = match (var("XDG_CONFIG_HOME"), var("HOME")) {
            (Some(config), _) => PathBuf::from(config),
            (None, Some(home)) => Path::new(&home).join(".config"),
            (None, None) => return Err("neither XDG_CONFIG_HOME nor HOME is set".into()),
        };
        Ok(Self::at(config.join("preview-edge").join("tokens")))
    }

    /// Saves `token` for `domain` (and the hosts under it); returns the file.
    pub fn save(&self, domain: &str, token: &str) -> Result<PathBuf, String> {
        let domain = checked_domain(domain)?;
        let token = token.trim();
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(
                "the token is empty or has spaces in it: paste it whole, on one line".into(),
            );
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot restrict {}: {e}", self.dir.display()))?;
        let path = self.dir.join(&domain);
        let partial = self.dir.join(format!(".{domain}.partial"));
        let _ = std::fs::remove_file(&partial);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        file.write_all(format!("{token}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        std::fs::rename(&partial, &path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// The token saved for `host` or the nearest domain above it, with
    /// that domain. A file others may read is refused, not used.
    pub fn find(&self, host: &str) -> Result<Option<(String, String)>, String> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let mut domain = host.as_str();
        loop {
            let path = self.dir.join(domain);
            if checked_domain(domain).is_ok() {
                if let Ok(meta) = std::fs::metadata(&path) {
                    if meta.permissions().mode() & 0o077 != 0 {
                        return Err(format!(
                            "{} may be read by others: `chmod 600` it, or log in again",
                            path.display()
                        ));
                    }
                    let token = std::fs::read_to_string(&path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    return Ok(Some((domain.to_string(), token.trim().to_string())));
                }
            }
            match domain.split_once('.') {
                Some((_, parent)) if parent.contains('.') => domain = parent,
                _ => return Ok(None),
            }
        }
    }

    /// Forgets the token of `domain`; whether there was one.
    pub fn remove(&self, domain: &str) -> Result<bool, String> {
        let path = self.dir.join(checked_domain(domain)?);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
        }
    }
}

/// A host name usable as a file name: DNS labels, lowercase.
fn checked_domain(domain: &str) -> Result<String, String> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if !yaml_config::is_hostname(&domain) {
        return Err(format!(
            "{domain:?} is not a domain name (e.g. preview.example.com)"
        ));
    }
    Ok(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token saved for a domain serves the hosts under it, the nearest
    /// domain winning; files are 0600 in a 0700 directory, and a file
    /// opened to others is refused.
    #[test]
    fn saved_tokens_serve_their_domain_and_stay_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("tokens"));
        let path = store.save("Preview.Example.com", " t0k3n \n").unwrap();
        assert_eq!(path, dir.path().join("tokens/preview.example.com"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("tokens")), 0o700);

        let found = store
            .find("postgres-5432-demo.preview.example.com")
            .unwrap();
        assert_eq!(found, Some(("preview.example.com".into(), "t0k3n".into())));
        assert_eq!(store.find("other.example.org").unwrap(), None);
        assert_eq!(store.find("example.com").unwrap(), None);

        store.save("demo.preview.example.com", "nearer").unwrap();
        let found = store.find("db-1-demo.demo.preview.example.com").unwrap();
        assert_eq!(found.unwrap().1, "nearer");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = store.find("x.preview.example.com").unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");

        assert!(store.remove("preview.example.com").unwrap());
        assert!(!store.remove("preview.example.com").unwrap());
    }

    #[test]
    fn bad_domains_and_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        for domain in ["../etc", "a/b", "", "-x.com", "x..com"] {
            assert!(store.save(domain, "t").is_err(), "{domain}");
        }
        assert!(store.save("ok.example.com", "two words").is_err());
        assert!(store.save("ok.example.com", "  ").is_err());
    }
}
