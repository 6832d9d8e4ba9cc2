//! Logging: `RUST_LOG`-style filters, plain or JSON lines.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// The format of log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// Installs the global logger; `filter` is a `RUST_LOG`-style directive such as `info` or
/// `dps_operator=debug,kube=info`.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    // Colours only for a person at a terminal, never into a log collector's file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let _ = match format {
        LogFormat::Plain => registry.with(fmt::layer().compact().with_ansi(ansi)).try_init(),
        LogFormat::Json => registry.with(fmt::layer().json().flatten_event(true)).try_init(),
    };
}
