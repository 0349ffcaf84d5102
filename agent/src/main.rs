//! `telework-agent`: the office-PC agent's command line.
#![forbid(unsafe_code)]

mod setup;
mod wake_cli;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use telework_agent::devices::DeviceStatus;
use telework_agent::password;
use telework_agent::state::{AgentSettings, DataDir};
use telework_agent::totp_enrol::Enrolment;
use telework_agent::{Agent, RunOptions, DEFAULT_TARGET};
use telework_net::logging::LogFormat;
use telework_net::proxy::{ProxyEnv, ProxySetting};
use telework_net::signal::shutdown_signal;
use telework_net::transport::TransportChoice;
use telework_protocol::e2e::pake::PasswordRecord;
use telework_protocol::{CertFingerprint, ComputerId};

/// The telework agent for the office PC: registers with the relay, keeps a connection open,
/// and lets employees who know the connection password reach this PC's remote desktop.
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
    /// Set up this office PC in one step: relay, enrolment token, computer ID, connection
    /// password, one-time codes, service. Asks for what the flags do not say.
    Setup(setup::SetupArgs),
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
        /// How to reach the relay: QUIC with a TLS/TCP fallback, or only one of them (saved
        /// in the settings for 'run').
        #[arg(long, value_enum, default_value_t = TransportChoice::Auto)]
        transport: TransportChoice,
        /// Reach the relay through this HTTP proxy, http://[user:password@]host:port, or
        /// 'none' to ignore HTTPS_PROXY and ALL_PROXY (saved in the settings for 'run')
        /// [default: HTTPS_PROXY or ALL_PROXY unless NO_PROXY names the relay].
        #[arg(long, value_name = "URL")]
        proxy: Option<String>,
    },
    /// Set the connection password employees type. It stays on this PC, and this PC keeps
    /// its identity key, so employees' pins stay valid.
    SetPassword {
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Make a new identity key on purpose (and set the password), for a PC whose data dir may
    /// have been copied. Every employee must then run 'telework forget ID'.
    RotateKey {
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Require a one-time code (TOTP) from an authenticator app as a second factor.
    #[command(subcommand)]
    Totp(TotpCommand),
    /// Manage which client devices may connect.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Show or change the access policy (approved devices, idle timeout, session length).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Wake-on-LAN: which sleeping PCs of this office LAN this (always-on) PC may wake.
    #[command(subcommand)]
    Wake(wake_cli::WakeCommand),
    /// Clear a lockout after too many wrong passwords (the running agent takes it at once).
    Unlock {
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Stay connected to the relay and serve sessions.
    Run {
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        /// The local desktop service to forward to.
        #[arg(long, default_value = DEFAULT_TARGET)]
        target: String,
        /// How to reach the relay [default: the setting saved by 'register', else auto].
        #[arg(long, value_enum)]
        transport: Option<TransportChoice>,
        /// Reach the relay through this HTTP proxy, http://[user:password@]host:port, or
        /// 'none' for a direct connection [default: the setting saved by 'register', else
        /// HTTPS_PROXY or ALL_PROXY unless NO_PROXY names the relay].
        #[arg(long, value_name = "URL")]
        proxy: Option<String>,
    },
}

#[derive(Subcommand)]
enum TotpCommand {
    /// Create a secret and show it as text and as a QR code for an authenticator app.
    Enable {
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Stop asking for one-time codes.
    Disable {
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// List known devices and their status.
    List {
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Let a device connect (give its whole fingerprint, 32 hex digits).
    Approve {
        /// Device fingerprint (32 hex digits; spaces and colons are ignored).
        device: String,
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Stop a device from connecting; its open sessions end within seconds.
    Revoke {
        /// Device fingerprint (32 hex digits; spaces and colons are ignored).
        device: String,
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the policy.
    Show {
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Change the policy (only the options given).
    Set {
        /// The agent's data directory.
        #[arg(long, env = "TELEWORK_AGENT_DATA_DIR")]
        data_dir: PathBuf,
        /// Only approved devices may connect.
        #[arg(long)]
        require_approved_devices: Option<bool>,
        /// End sessions without desktop traffic for this long (90s, 30m, 8h; 0 = never).
        #[arg(long, value_parser = telework_agent::policy::parse_duration)]
        idle_timeout: Option<std::time::Duration>,
        /// End sessions after this long, then the password is asked again (default 24h).
        #[arg(long, value_parser = telework_agent::policy::parse_duration)]
        max_session: Option<std::time::Duration>,
    },
}

fn main() -> ExitCode {
    telework_net::glibc_tuning::reexec_if_needed();
    let cli = Cli::parse();
    let format = cli.log_format;
    telework_net::logging::init(format, "info");
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            telework_net::logging::report_error(format, "telework-agent", &format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // One thread: an office PC serves a handful of sessions, and a single-threaded runtime
    // avoids cross-thread wake-ups on every record (lower latency, less CPU).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Setup(args) => setup::run(args),
        Command::Wake(command) => wake_cli::run(command),
        Command::Register {
            data_dir,
            relay,
            relay_fingerprint,
            relay_ca,
            token,
            id,
            transport,
            proxy,
        } => {
            // Checked before anything is written; the text is kept as given for 'run'.
            proxy_flag(proxy.as_deref())?;
            let data = DataDir::open(&data_dir)?;
            let id = match id {
                Some(id) => id,
                None => suggested_id()?,
            };
            relay
                .parse::<telework_net::connect::RelayAddr>()
                .map_err(|e| anyhow::anyhow!("--relay {relay}: {e}"))?;
            let settings = AgentSettings {
                computer_id: id,
                relay,
                relay_fingerprint: relay_fingerprint.map(|f| f.to_string()),
                relay_ca,
                transport,
                proxy,
            };
            let id = runtime()?.block_on(telework_agent::register::register_with(
                &data,
                &settings,
                token,
                &ProxyEnv::from_process(),
            ))?;
            println!("registered as computer ID: {id}");
            if data.password()?.is_none() {
                println!("next: set the connection password with 'telework-agent set-password --data-dir {}'", data_dir.display());
            }
            Ok(())
        }
        Command::SetPassword {
            data_dir,
            password_stdin,
        } => set_password(&data_dir, password_stdin),
        Command::RotateKey {
            data_dir,
            password_stdin,
        } => rotate_key(&data_dir, password_stdin),
        Command::Totp(TotpCommand::Enable { data_dir }) => {
            let data = DataDir::open(&data_dir)?;
            let enrolment = Enrolment::for_data_dir(&data)?;
            enrolment.save(&data)?;
            println!("{}", enrolment.instructions());
            println!("From now on every login also asks for the app's 6-digit code.");
            Ok(())
        }
        Command::Totp(TotpCommand::Disable { data_dir }) => {
            DataDir::open(&data_dir)?.save_totp(None)?;
            println!("one-time codes are no longer required");
            Ok(())
        }
        Command::Devices(DevicesCommand::List { data_dir }) => {
            let devices = DataDir::open(&data_dir)?.devices()?;
            if devices.devices.is_empty() {
                println!("no devices have connected yet");
            }
            for d in devices.devices {
                println!(
                    "{}  {:<9} {:<24} first seen unix {}, last seen unix {}",
                    d.fingerprint,
                    format!("{:?}", d.status).to_lowercase(),
                    d.name,
                    d.first_seen,
                    d.last_seen
                );
            }
            Ok(())
        }
        Command::Devices(DevicesCommand::Approve { device, data_dir }) => {
            set_device(&data_dir, &device, DeviceStatus::Approved)
        }
        Command::Devices(DevicesCommand::Revoke { device, data_dir }) => {
            set_device(&data_dir, &device, DeviceStatus::Revoked)
        }
        Command::Policy(PolicyCommand::Show { data_dir }) => {
            let policy = DataDir::open(&data_dir)?.policy()?;
            print!("{}", policy.describe());
            Ok(())
        }
        Command::Unlock { data_dir } => {
            let data = DataDir::open(&data_dir)?;
            let cleared = data.update_lockout(|l| l.unlock())?;
            if cleared == 0 {
                println!("no failed logins were counted; nothing to clear");
            } else {
                println!("cleared {cleared} failed login(s); the office PC accepts logins again");
            }
            Ok(())
        }
        Command::Policy(PolicyCommand::Set {
            data_dir,
            require_approved_devices,
            idle_timeout,
            max_session,
        }) => {
            let data = DataDir::open(&data_dir)?;
            let mut policy = data.policy()?;
            if let Some(v) = require_approved_devices {
                policy.require_approved_devices = v;
            }
            if let Some(d) = idle_timeout {
                policy.idle_timeout_secs = (d.as_secs() > 0).then_some(d.as_secs());
            }
            if let Some(d) = max_session {
                if d.is_zero() {
                    anyhow::bail!(
                        "--max-session must be a length like 8h or 72h: sessions always end \
                         (after {} unless set)",
                        telework_agent::policy::human_duration(
                            telework_agent::policy::DEFAULT_MAX_SESSION
                        )
                    );
                }
                policy.max_session_secs = Some(d.as_secs());
            }
            data.save_policy(&policy)?;
            print!("{}", policy.describe());
            Ok(())
        }
        Command::Run {
            data_dir,
            target,
            transport,
            proxy,
        } => {
            let data = DataDir::open(&data_dir)?;
            if data.password()?.is_none() {
                tracing::warn!("no connection password is set: every login will be refused until 'telework-agent set-password'");
            }
            let options = RunOptions {
                transport,
                proxy: proxy_flag(proxy.as_deref())?,
                proxy_env: ProxyEnv::from_process(),
                ..RunOptions::default()
            };
            let agent = Agent::open(data, target, options)?;
            println!("telework-agent: serving computer ID {}", agent.id());
            runtime()?.block_on(agent.run(shutdown_signal()))?;
            Ok(())
        }
    }
}

/// The `--proxy` flag, checked (the error never repeats the text: it may hold a password).
fn proxy_flag(flag: Option<&str>) -> anyhow::Result<Option<ProxySetting>> {
    flag.map(|text| text.parse().map_err(|e| anyhow::anyhow!("--proxy: {e}")))
        .transpose()
}

/// Reads a new connection password (twice at a prompt, or one line of standard input) and
/// checks its length.
fn read_new_password(password_stdin: bool) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        zeroize::Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_owned())
    } else {
        let first =
            zeroize::Zeroizing::new(rpassword::prompt_password("New connection password: ")?);
        let again = zeroize::Zeroizing::new(rpassword::prompt_password("Repeat it: ")?);
        if *first != *again {
            bail!("the two passwords differ; nothing was changed");
        }
        first
    };
    password::check(&password).map_err(|e| anyhow::anyhow!("{e}; nothing was changed"))?;
    Ok(password)
}

/// `set-password`: a new password under the same identity key (a first password makes the
/// key).
fn set_password(data_dir: &std::path::Path, password_stdin: bool) -> anyhow::Result<()> {
    let data = DataDir::open(data_dir)?;
    password::check_record(&data)?;
    let password = read_new_password(password_stdin)?;
    let set = password::set(&data, &password)?;
    println!(
        "connection password set (stored as an OPAQUE record; the password itself is not kept)"
    );
    let fingerprint = set.fingerprint;
    if set.key_kept {
        println!(
            "identity key {fingerprint} (unchanged: employees' clients keep trusting this PC)"
        );
    } else {
        println!(
            "identity key {fingerprint} (new: employees' clients pin it when they first connect)"
        );
    }
    Ok(())
}

/// `rotate-key`: a new identity key and password, for a PC whose data dir may have been copied.
fn rotate_key(data_dir: &std::path::Path, password_stdin: bool) -> anyhow::Result<()> {
    let data = DataDir::open(data_dir)?;
    // A damaged old record is no obstacle here: it is being replaced.
    let old = data.password().ok().flatten();
    let password = read_new_password(password_stdin)?;
    let record = PasswordRecord::create(password.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    data.save_password(&record)?;
    let id = data
        .settings()
        .map(|s| s.computer_id.to_string())
        .unwrap_or_else(|_| "ID".into());
    let fingerprint = password::fingerprint(&record)?;
    println!("new identity key {fingerprint}; the connection password is set");
    if let Some(old_fp) = old.as_ref().and_then(|o| password::fingerprint(o).ok()) {
        println!("(it replaces identity key {old_fp})");
    }
    println!(
        "Every employee's client now refuses this PC with a warning that its key changed. Tell \
         each employee the new key {fingerprint}; once they have confirmed it with IT staff, \
         they run 'telework forget {id}' and connect again."
    );
    Ok(())
}

fn set_device(
    data_dir: &std::path::Path,
    device: &str,
    status: DeviceStatus,
) -> anyhow::Result<()> {
    let data = DataDir::open(data_dir)?;
    let mut devices = data.lock_devices()?;
    let d = devices.set_status(device, status)?;
    devices.save()?;
    println!(
        "device {} ({}) is now {}",
        d.fingerprint,
        d.name,
        format!("{status:?}").to_lowercase()
    );
    Ok(())
}

fn suggested_id() -> anyhow::Result<ComputerId> {
    telework_agent::register::suggested_id().map_err(|e| anyhow::anyhow!("{e}; pass --id"))
}
