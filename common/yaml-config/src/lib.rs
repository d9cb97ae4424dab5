//! YAML configuration plumbing shared by the edge and the sidecar: reading a
//! file, deserializing it (errors carry line and column), folding every
//! validation problem into one error, and the naming and duration rules both
//! configs use. Each binary keeps its own raw and validated types.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

/// Everything wrong with a config file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { file: String, problems: Vec<String> },
}

/// Reads `path`, deserializes it as `Raw`, and validates it into `T`.
pub fn load<Raw, T>(
    path: &Path,
    validate: impl FnOnce(Raw) -> Result<T, Vec<String>>,
) -> Result<T, ConfigError>
where
    Raw: DeserializeOwned,
{
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&text, &file, validate)
}

/// Deserializes YAML `text` as `Raw` and validates it into `T`; `file` names
/// it in errors.
pub fn parse<Raw, T>(
    text: &str,
    file: &str,
    validate: impl FnOnce(Raw) -> Result<T, Vec<String>>,
) -> Result<T, ConfigError>
where
    Raw: DeserializeOwned,
{
    let raw: Raw = serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
        file: file.into(),
        message: e.to_string(),
    })?;
    validate(raw).map_err(|problems| ConfigError::Invalid {
        file: file.into(),
        problems,
    })
}

/// A DNS label: lowercase letters, digits and '-', 1 to 63 characters, no
/// leading or trailing '-'.
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A host name: dot-separated [`is_label`]s, at most 253 characters.
pub fn is_hostname(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

/// An optional duration field (`500ms`, `10s`, `2m`): `default` when absent;
/// a problem recorded against `path` (and `default` returned) when invalid.
pub fn duration(
    value: &Option<String>,
    path: &str,
    default: Duration,
    problems: &mut Vec<String>,
) -> Duration {
    let Some(value) = value else { return default };
    match humantime::parse_duration(value) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            problems.push(format!(
                "{path}: {value:?} is not a duration (expected e.g. 500ms, 10s, 2m)"
            ));
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_label("web-1") && !is_label("-web") && !is_label("Web") && !is_label(""));
        assert!(is_hostname("a.example.com") && !is_hostname("a..com") && !is_hostname("a_b.com"));
    }

    #[test]
    fn durations_default_and_report() {
        let mut problems = Vec::new();
        assert_eq!(
            duration(&None, "x", Duration::from_secs(3), &mut problems),
            Duration::from_secs(3)
        );
        assert_eq!(
            duration(&Some("250ms".into()), "x", Duration::ZERO, &mut problems),
            Duration::from_millis(250)
        );
        duration(&Some("0s".into()), "a.b", Duration::ZERO, &mut problems);
        duration(&Some("soon".into()), "c", Duration::ZERO, &mut problems);
        assert_eq!(problems.len(), 2);
        assert!(problems[0].starts_with("a.b: "));
    }
}
