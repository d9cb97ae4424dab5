//! How the edge and the sidecar log: `tracing` events to standard output,
//! filtered by `RUST_LOG` (default `info`), as text for people or as one
//! JSON object per line for collectors (`--log-format json`). Colour only
//! when standard output is a terminal: log files and collectors get no
//! escape codes.

pub mod admin;

use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One line per event, fields as `key=value`.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`,
    /// `fields` (with `message`), and the spans.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?}: text or json")),
        }
    }
}

/// Installs the global subscriber. Call once, first thing.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_named_text_and_json_and_nothing_else() {
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert!("JSON"
            .parse::<LogFormat>()
            .unwrap_err()
            .contains("text or json"));
    }
}
