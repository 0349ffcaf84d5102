//! `telework`: the employee's command.
#![forbid(unsafe_code)]

#[cfg(feature = "app")]
mod app;
mod config;
mod connect;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use telework_client::profile::{self, Profile};
use telework_net::logging::LogFormat;
use telework_protocol::ComputerId;

/// Reach your office PC from home: `telework config import tw-relay:…` once, then
/// `telework connect <computer-id>`, or `telework app` for the window.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How to write logs on standard error: text, or one JSON object per line.
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to an office PC and open its desktop in your RDP client.
    Connect(connect::ConnectArgs),
    /// Open the telework window: type the computer ID and password, press Connect.
    #[cfg(feature = "app")]
    App(app::AppArgs),
    /// Show or change the saved relay and proxy, so that 'connect' needs only the computer ID.
    Config(config::ConfigArgs),
    /// Forget an office PC's pinned identity key (after IT staff confirm it was reinstalled).
    Forget {
        /// The office PC's computer ID.
        id: ComputerId,
        /// Profile directory [default: the user's config dir].
        #[arg(long, env = "TELEWORK_CONFIG_DIR")]
        config_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    telework_net::glibc_tuning::reexec_if_needed();
    let cli = Cli::parse();
    let format = cli.log_format;
    // winit's warnings (a virtual display's size, no XSETTINGS) mean nothing to an employee.
    telework_net::logging::init(format, "warn,winit=error");
    let result = match cli.command {
        Command::Connect(args) => connect::connect(args),
        #[cfg(feature = "app")]
        Command::App(args) => app::run(args),
        Command::Config(args) => config::run(args),
        Command::Forget { id, config_dir } => forget(&id, config_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            telework_net::logging::report_error(format, "telework", &format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// The profile in `config_dir`, else in the user's config directory.
fn open_profile(config_dir: Option<PathBuf>) -> anyhow::Result<Profile> {
    let dir = config_dir
        .or_else(profile::default_config_dir)
        .context("cannot find a config directory: pass --config-dir")?;
    Profile::open(&dir).with_context(|| format!("opening the profile in {}", dir.display()))
}

fn forget(id: &ComputerId, config_dir: Option<PathBuf>) -> anyhow::Result<()> {
    if open_profile(config_dir)?.forget(id)? {
        println!("forgot the pinned key of {id}: the next connection pins the key it presents");
    } else {
        println!("no key was pinned for {id}");
    }
    Ok(())
}
