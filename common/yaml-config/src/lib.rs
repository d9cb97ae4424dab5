//! YAML configuration plumbing shared by the edge and the sidecar: reading a
//! file, deserializing it (errors carry line and column), folding every
//! validation problem into one error, and the rules both configs share:
//! names, durations, relative paths, and the closed choices both spell the
//! same way ([`ServiceProtocol`]). Each binary keeps its own raw and
//! validated types.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

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

/// The folder relative paths in the config file at `file` are resolved
/// against (its own folder, as with nginx's or Envoy's `-c FILE`), whatever
/// the working directory.
pub fn config_dir(file: &Path) -> PathBuf {
    file.parent().unwrap_or(Path::new(".")).to_path_buf()
}

/// How the edge speaks to a service, spelled the same in the edge's
/// `routes[].upstream.protocol`, the sidecar's `targets[].protocol` and
/// `sidecar expose --protocol`. An unknown value is the deserializer's
/// error, which lists these with the line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceProtocol {
    /// HTTP/1.1 in clear.
    Http1,
    /// HTTP/2 with prior knowledge (e.g. a gRPC server without TLS).
    H2c,
    /// TLS; HTTP/2 or HTTP/1.1 as ALPN decides.
    Tls,
    /// Raw TCP (a database, SSH): visitors reach it with
    /// `sidecar access tcp`, through a WebSocket.
    Tcp,
}

/// One closed choice (a unit-variant serde enum such as [`ServiceProtocol`])
/// from a plain string, e.g. a command-line flag, with the same spelling
/// and the same error (naming the allowed values) as in the YAML.
pub fn choice<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    use serde::de::value::{Error, StrDeserializer};
    T::deserialize(StrDeserializer::<Error>::new(text)).map_err(|e| e.to_string())
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

/// [`duration`], where `0s` is allowed and means "not at all".
pub fn duration_or_zero(
    value: &Option<String>,
    path: &str,
    default: Duration,
    problems: &mut Vec<String>,
) -> Duration {
    match value.as_deref().map(humantime::parse_duration) {
        Some(Ok(d)) if d.is_zero() => d,
        _ => duration(value, path, default, problems),
    }
}

/// A size as written: a number of bytes, or text with a unit (`64KiB`,
/// `10MiB`, `1GiB`, `500B`; `KB`, `MB` and `GB` are powers of ten).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

/// An optional size field: `default` when absent; a problem recorded
/// against `path` (and `default` returned) when invalid.
pub fn size(value: &Option<Size>, path: &str, default: u64, problems: &mut Vec<String>) -> u64 {
    match value {
        None => default,
        Some(Size::Bytes(n)) => *n,
        Some(Size::Text(text)) => parse_size(text).unwrap_or_else(|| {
            problems.push(format!(
                "{path}: {text:?} is not a size (expected e.g. 64KiB, 10MiB, 1GiB, or bytes)"
            ));
            default
        }),
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    number.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        let mut problems = Vec::new();
        let size = |v: Size, p: &mut Vec<String>| super::size(&Some(v), "x", 7, p);
        use super::Size;
        assert_eq!(size(Size::Bytes(10), &mut problems), 10);
        assert_eq!(size(Size::Text("64KiB".into()), &mut problems), 65536);
        assert_eq!(size(Size::Text("10 MiB".into()), &mut problems), 10 << 20);
        assert_eq!(size(Size::Text("2GB".into()), &mut problems), 2_000_000_000);
        assert!(problems.is_empty());
        assert_eq!(size(Size::Text("ten".into()), &mut problems), 7);
        assert_eq!(size(Size::Text("1PiB".into()), &mut problems), 7);
        assert_eq!(problems.len(), 2);
        assert!(
            problems[0].starts_with("x: \"ten\" is not a size"),
            "{problems:?}"
        );
    }

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
        let zero = Some("0s".into());
        let d = duration_or_zero(&zero, "d", Duration::from_secs(5), &mut problems);
        assert_eq!((d, problems.len()), (Duration::ZERO, 2));
        duration_or_zero(&Some("-1s".into()), "e", Duration::ZERO, &mut problems);
        assert_eq!(problems.len(), 3);
        assert!(problems[0].starts_with("a.b: "));
    }

    #[test]
    fn relative_paths_start_at_the_config_file() {
        assert_eq!(
            config_dir(Path::new("/etc/edge/edge.yaml")),
            Path::new("/etc/edge")
        );
        assert_eq!(
            config_dir(Path::new("edge.yaml")).join("ca.pem"),
            Path::new("ca.pem")
        );
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Target {
        protocol: ServiceProtocol,
    }

    #[test]
    fn service_protocols_are_a_closed_choice() {
        assert_eq!(choice::<ServiceProtocol>("h2c"), Ok(ServiceProtocol::H2c));
        let err = choice::<ServiceProtocol>("h3").unwrap_err();
        assert!(
            err.contains("`h3`") && err.contains("http1") && err.contains("tls"),
            "{err}"
        );

        let t: Target = serde_saphyr::from_str("protocol: tls").unwrap();
        assert_eq!(t.protocol, ServiceProtocol::Tls);
        // Spelled in lowercase only; the error has the allowed values, line and column.
        let err = parse::<Target, Target>("\nprotocol: HTTP1\n", "s.yaml", Ok)
            .unwrap_err()
            .to_string();
        for needle in ["s.yaml:", "`HTTP1`", "http1, h2c, tls", "line 2 column 11"] {
            assert!(err.contains(needle), "missing {needle} in {err}");
        }
    }
}
