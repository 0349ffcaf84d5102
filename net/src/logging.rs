//! Log set-up shared by the three programs: `RUST_LOG` filtering, on standard error, as text
//! for people or as one JSON object per line for log collectors (`--log-format json`).

/// How the programs write their logs on standard error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with `timestamp`, `level`, `fields` (among them `message`),
    /// `target` and the current spans.
    Json,
}

/// Installs the global subscriber: the `RUST_LOG` filter, else `default_filter` (`"info"`,
/// `"warn"`), writing to standard error in `format`. Standard output stays for what the
/// program prints to its user.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
    }
}

/// Tells the user why `program` is exiting: `program: message` on standard error as text, or
/// one more JSON log line (level `ERROR`) in the JSON format, so that every line a log
/// collector reads parses.
pub fn report_error(format: LogFormat, program: &str, message: &str) {
    match format {
        LogFormat::Text => eprintln!("{program}: {message}"),
        LogFormat::Json => tracing::error!(program, "{message}"),
    }
}
