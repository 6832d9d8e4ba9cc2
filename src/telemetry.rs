//! Logging: `RUST_LOG`-style filters, plain or JSON lines.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// The format of log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// Logs for a person at a terminal, on stderr so they never mix with a command's own output
/// (`dps-operator local`): `RUST_LOG` when set, else `default_filter`.
pub fn init_on_stderr(default_filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| default_filter.to_owned());
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = fmt::layer().compact().with_ansi(ansi).with_writer(std::io::stderr);
    let _ = tracing_subscriber::registry().with(filter).with(layer).try_init();
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
