//! Logging setup: structured `tracing` events to stderr, as text or JSON lines.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;

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
    let filter = filter(level);
    // The builder's own level cap (default info) is lifted: `filter` alone decides.
    let builder = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_writer(crate::term::LogWriter)
        .with_target(false);
    // A second init (tests calling run() twice) is harmless; ignore it.
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
    use tracing::Level;

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
