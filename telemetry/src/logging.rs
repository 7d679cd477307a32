//! Logs: the one `tracing` subscriber every Switchyard binary (and the worker SDK's
//! `init_logging`) installs, so that `--log-format` means the same thing everywhere.
//!
//! `text` is for people: colour only when stderr is a terminal, so a file or a pipe gets plain
//! text. `json` is for log shippers: one JSON object per line, with `timestamp`, `level`,
//! `target`, `message` and the event's fields at the top level (`flatten_event`), and the
//! spans it happened in.

use std::{fmt, io::IsTerminal, str::FromStr};

use tracing_subscriber::util::SubscriberInitExt as _;

/// The filter of what is logged, in tracing's `EnvFilter` syntax (`info`,
/// `switchyard_server=debug,warn`). Re-exported so that binaries need no
/// `tracing-subscriber` of their own.
pub use tracing_subscriber::EnvFilter as Filter;
/// Why [`init`] could not install the subscriber: another one is already set.
pub use tracing_subscriber::util::TryInitError;

/// The environment variable that names the format where no flag does.
pub const FORMAT_ENV: &str = "SWITCHYARD_LOG_FORMAT";

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Format {
    /// Every format's name, as `--log-format` accepts it.
    pub const NAMES: [&'static str; 2] = ["text", "json"];

    /// The format `SWITCHYARD_LOG_FORMAT` names; `text` when it is unset or names none (for
    /// programs without flags, such as the worker SDK's users).
    pub fn from_env() -> Format {
        std::env::var(FORMAT_ENV)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or_default()
    }

    pub const fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
        }
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Format, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(format!("{text:?}: expected text or json")),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Installs the process's subscriber: events that pass `filter`, written to stderr in
/// `format`. Fails only if a subscriber is already installed.
pub fn init(format: Format, filter: Filter) -> Result<(), TryInitError> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Its own report of a failed write is `eprintln!`, which panics on a closed stderr
        // (`switchyard ... | head` after `head` exited): a log line lost is the lesser harm.
        .log_internal_errors(false);
    match format {
        Format::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .try_init(),
        // No colour codes inside JSON strings, whatever stderr is.
        Format::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .finish()
            .try_init(),
    }
}

/// Reports the error a binary exits with. In `json`, once the subscriber is installed, it is
/// one more JSON line (level `ERROR`, the error and its causes as the message), so that a log
/// shipper sees why the process ended; otherwise it is written as Rust writes an error that
/// `main` returns (`Error: …` and its causes).
pub fn exit_error(format: Format, error: &(impl fmt::Display + fmt::Debug)) {
    if format == Format::Json && tracing::dispatcher::has_been_set() {
        tracing::error!("{error:#}");
    } else {
        eprintln!("Error: {error:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip_by_name() {
        for name in Format::NAMES {
            let format: Format = name.parse().expect("a format");
            assert_eq!(format.to_string(), name);
        }
        assert_eq!("JSON".parse(), Ok(Format::Json));
        assert!("yaml".parse::<Format>().is_err());
    }
}
