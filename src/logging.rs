//! Logging setup: structured `tracing` events to stderr, as text or JSON lines.
//!
//! Colour (ANSI escapes) only when stderr is a terminal and `NO_COLOR` is unset or empty
//! (<https://no-color.org>): in a container stderr is a pipe, and escapes there end up verbatim
//! in `kubectl logs` and in whatever collects them.

use std::io::IsTerminal;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `--log-format`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Whether log lines to stderr may carry colour.
pub fn use_colour() -> bool {
    colour_allowed(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

fn colour_allowed(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.map_or(true, |v| v.is_empty())
}

/// The log filter: `--log-level`, else `RUST_LOG`, else `info`; a filter that does not parse
/// means `info`, as it did with env-filter. `Targets` parses the same directives (`debug`,
/// `sidecap=trace,warn`) without env-filter's regex engine, ~400 KB of the image (docs/image.md).
pub fn filter(level: Option<&str>) -> Targets {
    let env = std::env::var("RUST_LOG").ok();
    level
        .or(env.as_deref())
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO))
}

pub fn init(format: LogFormat, level: Option<&str>) {
    install(format, filter(level), crate::term::LogWriter, use_colour());
}

/// Installs the global subscriber: `format` lines through `writer`, decided by `filter` alone
/// (the builder's own level cap is lifted). The capture and `upload` differ only in the writer
/// and in colour. A second install (tests calling run() twice) is harmless and ignored.
pub fn install<W>(format: LogFormat, filter: Targets, writer: W, ansi: bool)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.finish().with(filter).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(filter)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use tracing::Level;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_allowed(true, None));
        assert!(colour_allowed(true, Some(OsStr::new(""))));
        assert!(!colour_allowed(true, Some(OsStr::new("1"))));
        assert!(!colour_allowed(false, None));
    }

    #[test]
    fn filter_reads_rust_log_directives() {
        let f = filter(Some("debug"));
        assert!(f.would_enable("sidecap::capture", &Level::DEBUG));
        assert!(!f.would_enable("sidecap::capture", &Level::TRACE));
        let f = filter(Some("sidecap=trace,warn"));
        assert!(f.would_enable("sidecap::upload", &Level::TRACE));
        assert!(f.would_enable("hyper", &Level::WARN));
        assert!(!f.would_enable("hyper", &Level::INFO));
        let f = filter(Some("off"));
        assert!(!f.would_enable("sidecap", &Level::ERROR));
        // Not a filter: info, as with env-filter.
        let f = filter(Some("sidecap=loud"));
        assert!(f.would_enable("sidecap", &Level::INFO));
        assert!(!f.would_enable("sidecap", &Level::DEBUG));
    }
}
