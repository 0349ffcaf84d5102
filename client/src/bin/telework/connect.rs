//! `telework connect ID`: the relay and proxy from the flags or the saved settings, the
//! password from the terminal, then the library's connection, step by step on the terminal.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use telework_client::connection::{self, DesktopOptions, Progress, ProgressSink};
use telework_client::launch::LaunchChoice;
use telework_client::local_peer::{self, LocalAccess};
use telework_client::resolve::{device_name, proxy, relay_and_trust};
use telework_client::session::TotpSource;
use telework_client::{ClientError, LoginOptions, Target};
use telework_net::connect::RelayAddr;
use telework_net::transport::TransportChoice;
use telework_protocol::{CertFingerprint, ComputerId};
use zeroize::Zeroizing;

#[derive(clap::Args)]
pub struct ConnectArgs {
    /// The office PC's computer ID.
    id: ComputerId,
    /// The relay, host:port [default: the saved one, see 'telework config'].
    #[arg(long, env = "TELEWORK_RELAY")]
    relay: Option<RelayAddr>,
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
    /// for a direct connection [default: the saved one, else HTTPS_PROXY or ALL_PROXY unless
    /// NO_PROXY names the relay].
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
    /// Profile directory for settings, this device's key and pinned office-PC keys
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

/// Each step on the terminal: the address for the RDP client on standard output (scripts
/// read it), everything else on standard error.
fn terminal_progress() -> ProgressSink {
    Arc::new(|step| match step {
        Progress::Connected { .. } => println!("{step}"),
        Progress::ClientStarted { .. }
        | Progress::ClientNotStarted(_)
        | Progress::ClientExited { .. } => {
            telework_net::say!("telework: {step}");
        }
        _ => telework_net::say!("{step}"),
    })
}

pub fn connect(args: ConnectArgs) -> anyhow::Result<()> {
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
    let profile = crate::open_profile(args.config_dir.clone())?;
    let settings = profile.settings()?;
    let (relay, trust) = relay_and_trust(
        args.relay.as_ref(),
        args.relay_fingerprint.as_ref(),
        args.relay_ca.as_deref(),
        &settings,
    )?;
    let target = Target {
        relay,
        trust,
        transport: args.transport,
        id: args.id.clone(),
    };
    let totp: TotpSource = match args.totp.clone() {
        Some(code) => Arc::new(move || Some(code.clone())),
        None => Arc::new(|| {
            rpassword::prompt_password("One-time code from your authenticator app: ")
                .ok()
                .map(|c| c.trim().to_owned())
        }),
    };
    let progress = terminal_progress();
    let options = LoginOptions {
        proxy: proxy(
            args.proxy.as_deref(),
            &settings,
            &target.relay,
            args.transport,
        )?,
        device: Arc::new(profile.device_key()?),
        device_name: device_name(),
        profile: Some(profile),
        totp: Some(totp),
        progress: progress.clone(),
        ..LoginOptions::default()
    };
    let desktop = DesktopOptions {
        listen: args.listen,
        access,
        launch: args.launch,
        keep_open: args.keep_open,
    };
    // One thread: a client serves one person's session, and a single-threaded runtime
    // avoids cross-thread wake-ups on every record (lower latency, less CPU). Argon2id runs
    // on the blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let mut tries = 0;
        let wait = std::time::Duration::from_secs(args.wake_timeout);
        // With --wake the PC boots while the employee types the password.
        let mut woken = args.wake;
        if args.wake {
            telework_client::wake::wake_up(&target, &options, wait).await?;
        }
        let mut pending = None;
        let session = loop {
            let password = match pending.take() {
                Some(password) => password,
                None => read_password(&args)?,
            };
            match connection::log_in(&target, password.as_bytes(), &options).await {
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
                    telework_client::wake::wake_up(&target, &options, wait).await?;
                    woken = true;
                    pending = Some(password);
                }
                Err(e) => return Err(e.into()),
            }
        };
        telework_net::say!("press Ctrl-C to end the session");
        let stop = telework_net::signal::shutdown_signal();
        match connection::open_desktop(session, &args.id, &desktop, stop, &progress).await {
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
