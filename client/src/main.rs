//! `telework`: the employee's command.
#![forbid(unsafe_code)]

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::sync::Arc;
use telework_client::launch::{self, LaunchChoice, Os};
use telework_client::local_peer::{self, LocalAccess};

use telework_client::profile::{self, Profile};
use telework_client::session::TotpSource;
use telework_client::{ClientError, LoginOptions, Session, Target};
use telework_net::connect::RelayAddr;
use telework_net::logging::LogFormat;
use telework_net::proxy::{ProxyConfigError, ProxyEnv, ProxySetting, ProxyUrl};
use telework_net::tls::RelayTrust;
use telework_net::transport::TransportChoice;
use telework_protocol::{CertFingerprint, ComputerId};
use zeroize::Zeroizing;

/// Reach your office PC from home: `telework connect <computer-id> --relay <host:port>`.
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
    Connect(ConnectArgs),
    /// Forget an office PC's pinned identity key (after IT staff confirm it was reinstalled).
    Forget {
        /// The office PC's computer ID.
        id: ComputerId,
        /// Profile directory [default: the user's config dir].
        #[arg(long, env = "TELEWORK_CONFIG_DIR")]
        config_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ConnectArgs {
    /// The office PC's computer ID.
    id: ComputerId,
    /// The relay, host:port.
    #[arg(long, env = "TELEWORK_RELAY")]
    relay: RelayAddr,
    /// Pin the relay's self-signed certificate (sha256:HEX from the operator).
    #[arg(long, env = "TELEWORK_RELAY_FINGERPRINT")]
    relay_fingerprint: Option<CertFingerprint>,
    /// Trust a private CA for the relay's certificate (PEM file).
    #[arg(long, conflicts_with = "relay_fingerprint")]
    relay_ca: Option<PathBuf>,
    /// How to reach the relay: QUIC with a TLS/TCP fallback, or only one of them.
    #[arg(long, value_enum, default_value_t = TransportChoice::Auto)]
    transport: TransportChoice,
    /// Reach the relay through this HTTP proxy, http://[user:password@]host:port, or 'none'
    /// for a direct connection [default: HTTPS_PROXY or ALL_PROXY unless NO_PROXY names the
    /// relay].
    #[arg(long, value_name = "URL")]
    proxy: Option<String>,
    /// Local address for your RDP client to connect to (loopback only, unless --allow-remote).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Allow a --listen address that is not loopback. Anyone who can reach it (other
    /// computers, other users of this one) gets your office desktop without a password.
    #[arg(long)]
    allow_remote: bool,
    /// Read the connection password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Which RDP client to start.
    #[arg(long, value_enum, default_value_t = LaunchChoice::Auto)]
    launch: LaunchChoice,
    /// Keep the session open after the RDP client that telework started exits (by default
    /// the session ends with it).
    #[arg(long)]
    keep_open: bool,
    /// The one-time code from your authenticator app, if the office PC asks for one
    /// (otherwise you are asked when needed).
    #[arg(long)]
    totp: Option<String>,
    /// Profile directory for this device's key and pinned office-PC keys
    /// [default: the user's config dir].
    #[arg(long, env = "TELEWORK_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// If the office PC is asleep, ask a PC in its office to wake it (Wake-on-LAN), wait for
    /// it, then connect (without this, a terminal asks).
    #[arg(long)]
    wake: bool,
    /// Seconds to wait for a woken office PC to come online (at most 600).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=600))]
    wake_timeout: u64,
}

/// Interactive password tries before giving up (the office PC has its own, stricter count).
const PROMPT_TRIES: u32 = 3;

fn main() -> ExitCode {
    telework_net::glibc_tuning::reexec_if_needed();
    let cli = Cli::parse();
    let format = cli.log_format;
    telework_net::logging::init(format, "warn");
    let result = match cli.command {
        Command::Connect(args) => connect(args),
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

fn read_password(args: &ConnectArgs) -> anyhow::Result<Zeroizing<String>> {
    if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        Ok(Zeroizing::new(
            line.trim_end_matches(['\r', '\n']).to_owned(),
        ))
    } else {
        let prompt = format!("Connection password for {}: ", args.id);
        Ok(Zeroizing::new(
            rpassword::prompt_password(prompt).context("reading the password")?,
        ))
    }
}

fn profile(config_dir: Option<PathBuf>) -> anyhow::Result<Profile> {
    let dir = config_dir
        .or_else(profile::default_config_dir)
        .context("cannot find a config directory: pass --config-dir")?;
    Profile::open(&dir).with_context(|| format!("opening the profile in {}", dir.display()))
}

fn forget(id: &ComputerId, config_dir: Option<PathBuf>) -> anyhow::Result<()> {
    if profile(config_dir)?.forget(id)? {
        println!("forgot the pinned key of {id}: the next connection pins the key it presents");
    } else {
        println!("no key was pinned for {id}");
    }
    Ok(())
}

fn login_options(args: &ConnectArgs) -> anyhow::Result<LoginOptions> {
    let profile = profile(args.config_dir.clone())?;
    let device = profile.device_key()?;
    let device_name = std::env::var("COMPUTERNAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "home-pc".to_owned());
    let totp: TotpSource = match args.totp.clone() {
        Some(code) => Arc::new(move || Some(code.clone())),
        None => Arc::new(|| {
            rpassword::prompt_password("One-time code from your authenticator app: ")
                .ok()
                .map(|c| c.trim().to_owned())
        }),
    };
    Ok(LoginOptions {
        proxy: proxy(args)?,
        device: Arc::new(device),
        device_name,
        profile: Some(profile),
        totp: Some(totp),
        ..LoginOptions::default()
    })
}

/// The proxy to go through: `--proxy`, else the environment. Checked before the password is
/// asked for; no error repeats the proxy text, which may hold a password.
fn proxy(args: &ConnectArgs) -> anyhow::Result<Option<ProxyUrl>> {
    let flag = args
        .proxy
        .as_deref()
        .map(str::parse::<ProxySetting>)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--proxy: {e}"))?;
    let proxy = telework_net::proxy::choose(
        flag.as_ref(),
        None,
        &ProxyEnv::from_process(),
        args.relay.host(),
    )?;
    match &proxy {
        Some(p) if args.transport == TransportChoice::Quic => {
            Err(ProxyConfigError::QuicThroughProxy(p.to_string()).into())
        }
        _ => Ok(proxy),
    }
}

/// Wakes the office PC through the relay and waits for it, saying each step.
async fn wake(args: &ConnectArgs, target: &Target, options: &LoginOptions) -> anyhow::Result<()> {
    let wait = std::time::Duration::from_secs(args.wake_timeout);
    telework_client::wake::wake_and_wait(target, options, wait, |step| {
        telework_net::say!("{}", step.sentence(&args.id));
    })
    .await?;
    Ok(())
}

fn connect(args: ConnectArgs) -> anyhow::Result<()> {
    let access = local_peer::listen_policy(args.listen, args.allow_remote)?;
    match access {
        LocalAccess::Anyone => telework_net::say!(
            "telework: WARNING: listening on {} (--allow-remote): anyone who can reach this \
             address gets your office desktop without a password",
            args.listen
        ),
        LocalAccess::SameUser if !local_peer::OWNER_CHECKED => telework_net::say!(
            "telework: WARNING: on this operating system telework cannot check who connects to \
             its local port: other users of this computer can use it while the session is open"
        ),
        LocalAccess::SameUser => {}
    }
    let trust = match (&args.relay_fingerprint, &args.relay_ca) {
        (Some(fp), _) => RelayTrust::Fingerprint(*fp),
        (None, Some(ca)) => RelayTrust::ca_file(ca)?,
        (None, None) => RelayTrust::SystemRoots,
    };
    let target = Target {
        relay: args.relay.clone(),
        trust,
        transport: args.transport,
        id: args.id.clone(),
    };
    let options = login_options(&args)?;
    // One thread: a client serves one person's session, and a single-threaded runtime
    // avoids cross-thread wake-ups on every record (lower latency, less CPU). Argon2id runs
    // on the blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let mut tries = 0;
        // With --wake the PC boots while the employee types the password.
        let mut woken = false;
        if args.wake {
            wake(&args, &target, &options).await?;
            woken = true;
        }
        let mut pending = None;
        let session = loop {
            let password = match pending.take() {
                Some(password) => password,
                None => read_password(&args)?,
            };
            match &options.proxy {
                Some(proxy) => telework_net::say!(
                    "connecting to {} through {} (via the proxy {proxy}) …",
                    args.id, args.relay
                ),
                None => telework_net::say!("connecting to {} through {} …", args.id, args.relay),
            }
            match Session::login_with(&target, password.as_bytes(), &options).await {
                Ok(s) => break s,
                Err(e)
                    if e.is_wrong_password()
                        && !args.password_stdin
                        && tries + 1 < PROMPT_TRIES =>
                {
                    telework_net::say!("telework: {e}");
                    tries += 1;
                }
                Err(e) if e.is_offline() && !woken => {
                    if !telework_client::wake::ask_on_terminal(args.wake, &args.id)? {
                        anyhow::bail!(
                            "{} is offline; 'telework connect {} --wake' asks a PC in its office \
                             to wake it",
                            args.id,
                            args.id
                        );
                    }
                    wake(&args, &target, &options).await?;
                    woken = true;
                    pending = Some(password);
                }
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(fingerprint) = session.pinned_now() {
            telework_net::say!(
                "first connection to {} through {}: pinned its identity key {fingerprint}. From now \
                 on telework refuses anyone pretending to be this office PC before your password \
                 is used. On this first connection only, a relay pretending to be it could have \
                 tested your password once; if IT staff gave you the key's fingerprint, check that \
                 it matches.",
                args.id, args.relay
            );
        }
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr()?;
        println!(
            "connected to {} over {}: point your RDP client at {local}",
            args.id,
            session.transport()
        );
        // Held until the session ends, then removed with the .rdp file in it.
        let rdp_dir =
            launch::private_dir().context("creating a private directory for the .rdp file")?;
        let mut rdp_client = None;
        match launch::plan(
            args.launch,
            Os::current(),
            local,
            args.id.as_str(),
            rdp_dir.path(),
            launch::find_on_path,
        ) {
            Ok(Some(plan)) => match launch::launch(&plan) {
                Ok(child) => {
                    telework_net::say!("started {}", plan.program.display());
                    if plan.ends_session_on_exit(args.keep_open) {
                        rdp_client = Some((child, plan.program));
                    }
                }
                Err(e) => telework_net::say!("telework: could not start {}: {e}", plan.program.display()),
            },
            Ok(None) => {}
            Err(e) => telework_net::say!("telework: {e}"),
        }
        match &rdp_client {
            Some((_, program)) => telework_net::say!(
                "press Ctrl-C or close {} to end the session",
                program.display()
            ),
            None => telework_net::say!("press Ctrl-C to end the session"),
        }
        let stop = async move {
            let Some((mut child, program)) = rdp_client else {
                return telework_net::signal::shutdown_signal().await;
            };
            tokio::select! {
                () = telework_net::signal::shutdown_signal() => {}
                status = child.wait() => {
                    let how = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    telework_net::say!("telework: {} exited ({how}): ending the session", program.display());
                }
            }
        };
        match session.serve_with(listener, stop, access).await {
            Ok(_) => {
                println!("session closed");
                Ok(())
            }
            Err(e @ ClientError::Ended(_)) => {
                println!("{e}");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    })
}
