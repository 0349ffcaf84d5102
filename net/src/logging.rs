//! Log set-up shared by the three programs: `RUST_LOG` filtering, on standard error, as text
//! for people or as one JSON object per line for log collectors (`--log-format json`).
//!
//! What a program tells its user on standard error (`connecting to …`, `press Ctrl-C …`) goes
//! through [`say!`](crate::say): a plain line with text logs, a JSON line (target
//! [`USER_TARGET`], level `INFO`, shown whatever `RUST_LOG` says) with JSON logs, so that every
//! line on standard error parses. Standard output is left to the programs.

use std::sync::atomic::{AtomicBool, Ordering};

/// The target of the log events that carry messages for the user in the JSON format.
pub const USER_TARGET: &str = "telework::user";

static JSON: AtomicBool = AtomicBool::new(false);

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
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    if format == LogFormat::Json {
        JSON.store(true, Ordering::Relaxed);
        if let Ok(user) = format!("{USER_TARGET}=info").parse() {
            filter = filter.add_directive(user);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// Tells the user `message` on standard error, in the log format chosen at [`init`]. Use
/// [`say!`](crate::say) to format it.
pub fn say(message: std::fmt::Arguments<'_>) {
    if JSON.load(Ordering::Relaxed) {
        tracing::info!(target: "telework::user", "{message}");
    } else {
        eprintln!("{message}");
    }
}

/// `eprintln!` for messages to the user that follows `--log-format` (see the [module
/// docs](crate::logging)).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::logging::say(format_args!($($arg)*))
    };
}

/// Tells the user why `program` is exiting: `program: message` on standard error as text, or
/// one more JSON log line (level `ERROR`) in the JSON format, so that every line a log
/// collector reads parses.
pub fn report_error(format: LogFormat, program: &str, message: &str) {
    match format {
        LogFormat::Text => eprintln!("{program}: {message}"),
        LogFormat::Json => tracing::error!(target: "telework::user", program, "{message}"),
    }
}
