//! `telework-agent`: the office-PC agent's command line.
#![forbid(unsafe_code)]

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use telework_agent::state::{AgentSettings, DataDir};
use telework_agent::{Agent, DEFAULT_TARGET};
use telework_protocol::e2e::pake::PasswordRecord;
use telework_protocol::{CertFingerprint, ComputerId};

/// The telework agent for the office PC: registers with the relay, keeps a connection open,
/// and lets employees who know the connection password reach this PC's remote desktop.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register this PC on a relay under a computer ID.
    Register {
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        /// The relay, host:port.
        #[arg(long)]
        relay: String,
        /// Pin the relay's self-signed certificate (from 'telework-relay fingerprint').
        #[arg(long, value_name = "sha256:HEX")]
        relay_fingerprint: Option<CertFingerprint>,
        /// Trust a private CA for the relay's certificate (PEM).
        #[arg(long, conflicts_with = "relay_fingerprint")]
        relay_ca: Option<PathBuf>,
        /// Enrolment token from the relay operator.
        #[arg(long, env = "TELEWORK_ENROLMENT_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The computer ID to claim [default: from the host name].
        #[arg(long)]
        id: Option<ComputerId>,
    },
    /// Set the connection password employees type. It stays on this PC.
    SetPassword {
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Stay connected to the relay and serve sessions.
    Run {
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        /// The local desktop service to forward to.
        #[arg(long, default_value = DEFAULT_TARGET)]
        target: String,
    },
}

/// Shortest connection password accepted.
const MIN_PASSWORD_LEN: usize = 8;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("telework-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Register {
            data_dir,
            relay,
            relay_fingerprint,
            relay_ca,
            token,
            id,
        } => {
            let data = DataDir::open(&data_dir)?;
            let id = match id {
                Some(id) => id,
                None => suggested_id()?,
            };
            relay
                .parse::<telework_protocol::net::connect::RelayAddr>()
                .map_err(|e| anyhow::anyhow!("--relay {relay}: {e}"))?;
            let settings = AgentSettings {
                computer_id: id,
                relay,
                relay_fingerprint: relay_fingerprint.map(|f| f.to_string()),
                relay_ca,
            };
            let id =
                runtime()?.block_on(telework_agent::register::register(&data, &settings, token))?;
            println!("registered as computer ID: {id}");
            if data.password()?.is_none() {
                println!("next: set the connection password with 'telework-agent set-password --data-dir {}'", data_dir.display());
            }
            Ok(())
        }
        Command::SetPassword {
            data_dir,
            password_stdin,
        } => {
            let data = DataDir::open(&data_dir)?;
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("reading the password from standard input")?;
                zeroize::Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                let first = zeroize::Zeroizing::new(rpassword::prompt_password(
                    "New connection password: ",
                )?);
                let again = zeroize::Zeroizing::new(rpassword::prompt_password("Repeat it: ")?);
                if *first != *again {
                    bail!("the two passwords differ; nothing was changed");
                }
                first
            };
            if password.chars().count() < MIN_PASSWORD_LEN {
                bail!("the password needs at least {MIN_PASSWORD_LEN} characters; nothing was changed");
            }
            let record =
                PasswordRecord::create(password.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
            data.save_password(&record)?;
            println!("connection password set (stored as an OPAQUE record; the password itself is not kept)");
            Ok(())
        }
        Command::Run { data_dir, target } => {
            let data = DataDir::open(&data_dir)?;
            if data.password()?.is_none() {
                tracing::warn!("no connection password is set: every login will be refused until 'telework-agent set-password'");
            }
            let agent = Agent::load(data, target)?;
            println!("telework-agent: serving computer ID {}", agent.id());
            runtime()?.block_on(agent.run(shutdown_signal()))?;
            Ok(())
        }
    }
}

fn suggested_id() -> anyhow::Result<ComputerId> {
    let host = std::env::var("COMPUTERNAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    ComputerId::suggest_from_hostname(host.trim()).with_context(|| {
        format!("cannot make a computer ID from the host name {host:?}; pass --id")
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
