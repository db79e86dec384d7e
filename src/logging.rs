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
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The log filter: `--log-level` (or `SIDECAP_LOG_LEVEL`), else `RUST_LOG`, else `info`.
/// `Targets` parses the same directives as env-filter (`debug`, `sidecap=trace,warn`) without
/// its regex engine, ~400 KB of the image (docs/image.md). A malformed `--log-level` is the
/// user's typo and an error (exit 3, see `main`); a malformed `RUST_LOG` may be meant for another
/// program in the same environment, so it falls back to `info` with a warning.
pub fn filter(level: Option<&str>) -> Result<Targets, String> {
    if let Some(l) = level {
        let hint = "use a level (off, error, warn, info, debug, trace) or directives like \
                    sidecap=debug,warn";
        // `Targets` reads a bare word as a target at trace level, so a mistyped level
        // (`--log-level inf0`) would silence every line of sidecap's own.
        if let Some(w) = l.split(',').find(|d| bare_non_level(d)) {
            return Err(format!(
                "--log-level {l:?}: {w:?} is not a level; {hint} (a target alone: {w}=trace)"
            ));
        }
        return l
            .parse()
            .map_err(|e| format!("--log-level {l:?}: {e}; {hint}"));
    }
    let fallback = Targets::new().with_default(LevelFilter::INFO);
    match std::env::var("RUST_LOG") {
        Ok(env) => match env.parse() {
            Ok(t) => Ok(t),
            Err(e) => {
                // The subscriber is not installed yet: a plain line.
                eprintln!("sidecap: warning: RUST_LOG {env:?} ignored ({e}); logging at info");
                Ok(fallback)
            }
        },
        Err(_) => Ok(fallback),
    }
}

/// A directive with no `=` that is not a level name: a typo, or a target written without its level.
fn bare_non_level(directive: &str) -> bool {
    let d = directive.trim();
    !d.is_empty() && !d.contains('=') && d.parse::<LevelFilter>().is_err()
}

pub fn init(format: LogFormat, filter: Targets) {
    install(format, filter, crate::term::LogWriter, use_colour());
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
    fn filter_reads_directives_and_refuses_what_is_not_one() {
        let filter = |l| super::filter(Some(l)).expect("a valid filter");
        let f = filter("debug");
        assert!(f.would_enable("sidecap::capture", &Level::DEBUG));
        assert!(!f.would_enable("sidecap::capture", &Level::TRACE));
        let f = filter("sidecap=trace,warn");
        assert!(f.would_enable("sidecap::upload", &Level::TRACE));
        assert!(f.would_enable("hyper", &Level::WARN));
        assert!(!f.would_enable("hyper", &Level::INFO));
        let f = filter("off");
        assert!(!f.would_enable("sidecap", &Level::ERROR));
        let f = filter("WARN,sidecap::capture=debug");
        assert!(f.would_enable("sidecap::capture", &Level::DEBUG));
        assert!(!f.would_enable("sidecap::upload", &Level::INFO));
        for bad in ["sidecap=loud", "inf0", "debug,sidecap", "info,warnn"] {
            let e = super::filter(Some(bad)).expect_err(bad);
            assert!(
                e.contains("--log-level") && e.contains("sidecap=debug,warn"),
                "{e}"
            );
        }
    }
}
