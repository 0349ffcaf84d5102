//! `telework-relay`: the public relay's command line.
#![forbid(unsafe_code)]

mod audit_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use telework_net::connect::RelayAddr;
use telework_net::logging::LogFormat;
use telework_net::relay_profile::RelayProfile;
use telework_net::signal::shutdown_signal;
use telework_protocol::private_file::{check_private_dir, create_private_dir};
use telework_protocol::ComputerId;
use telework_relay::admin::cli::Store;
use telework_relay::audit::{self, Actor, AuditEvent};
use telework_relay::config::Settings;
use telework_relay::identity::{self, TlsIdentity};
use telework_relay::registry::Registry;
use telework_relay::{admin, Registration, Relay};
use tracing::{info, warn};

/// The telework relay: office PCs dial in, home PCs ask for them by computer ID, and the relay
/// pairs the two and copies end-to-end encrypted bytes it cannot read.
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
    /// Run the relay.
    Serve(ServeArgs),
    /// Print the SHA-256 fingerprint of the relay's certificate (for --relay-fingerprint).
    Fingerprint {
        /// The relay's data directory.
        #[arg(long, env = "TELEWORK_RELAY_DATA_DIR")]
        data_dir: PathBuf,
        /// The operator's certificate file, if the relay does not use its self-signed one.
        #[arg(long)]
        cert: Option<PathBuf>,
    },
    /// Print the one line employees paste into 'telework config import': the relay's public
    /// address and, for a self-signed certificate, its pin.
    ClientProfile {
        /// The relay's data directory.
        #[arg(long, env = "TELEWORK_RELAY_DATA_DIR")]
        data_dir: PathBuf,
        /// The operator's certificate file; a certificate the employees' systems trust needs
        /// no pin (and must not be pinned: it is renewed), so none is added unless --pin.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Pin --cert anyway (a certificate from a private CA, renewed only with a new line).
        #[arg(long, requires = "cert")]
        pin: bool,
        /// The address employees reach the relay at, host:port (for example
        /// relay.example.com:443).
        #[arg(long)]
        address: RelayAddr,
    },
    /// Manage enrolment tokens (for --registration token).
    #[command(subcommand)]
    Token(TokenCommand),
    /// List registered machines (or remove one).
    Machines(MachinesArgs),
    /// Console accounts and API tokens.
    #[command(subcommand)]
    Admin(telework_relay::admin::cli::AdminCommand),
    /// Print the audit log, newest first: enrolments, removals, agents online and offline,
    /// sessions, operators' actions, refused lookups and wake requests.
    Audit(audit_cmd::AuditArgs),
}

#[derive(clap::Args)]
struct MachinesArgs {
    #[command(subcommand)]
    command: Option<MachinesCommand>,
    /// The relay's data directory.
    #[arg(long, env = "TELEWORK_RELAY_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// A PostgreSQL registry shared by several relay nodes, instead of the SQLite file in the
    /// data directory.
    #[arg(
        long,
        value_name = "postgres://…",
        env = "TELEWORK_RELAY_DATABASE",
        hide_env_values = true,
        global = true
    )]
    database: Option<String>,
}

#[derive(Subcommand)]
enum MachinesCommand {
    /// List registered machines and the relay node each is online at (the default).
    List,
    /// Remove a machine's registration (a stolen or retired office PC). A running relay
    /// disconnects its agent within seconds, and the machine key no longer gets it online.
    Remove {
        /// The computer ID.
        id: ComputerId,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token that lets IT staff register office PCs.
    Create {
        #[command(flatten)]
        store: Store,
        /// How many machines may register with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How many hours it stays valid.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A TOML config file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory for the registry database and the self-signed certificate.
    #[arg(long, env = "TELEWORK_RELAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A PostgreSQL registry shared by several relay nodes, instead of the SQLite file in the
    /// data directory.
    #[arg(
        long,
        value_name = "postgres://…",
        env = "TELEWORK_RELAY_DATABASE",
        hide_env_values = true
    )]
    database: Option<String>,
    /// Address to listen on, TCP and UDP (QUIC) alike [default: 0.0.0.0:443].
    #[arg(long)]
    listen: Option<String>,
    /// Serve TLS over TCP only, not QUIC on UDP.
    #[arg(long)]
    no_quic: bool,
    /// Certificate chain (PEM) instead of the self-signed certificate.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) for --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Who may register office PCs [default: open].
    #[arg(long, value_enum)]
    registration: Option<Registration>,
    /// A host name to put in the self-signed certificate (repeatable).
    #[arg(long = "hostname")]
    hostnames: Vec<String>,
    /// Turn off per-source-address rate limits (behind a load balancer that hides client
    /// addresses, or for load tests from one address).
    #[arg(long)]
    no_per_address_limits: bool,
    /// Address of the admin console and metrics [default: 127.0.0.1:9480]. Anything but
    /// loopback needs TLS (the relay's certificate unless --admin-cert is given).
    #[arg(long)]
    admin_listen: Option<String>,
    /// Do not serve the admin console and metrics.
    #[arg(long, conflicts_with = "admin_listen")]
    no_admin: bool,
    /// TLS on the admin listener [default: auto, meaning on unless it is loopback].
    #[arg(long, value_enum)]
    admin_tls: Option<telework_relay::config::AdminTls>,
    /// Certificate chain (PEM) for the admin listener instead of the relay's.
    #[arg(long, requires = "admin_key")]
    admin_cert: Option<PathBuf>,
    /// Private key (PEM) for --admin-cert.
    #[arg(long, requires = "admin_cert")]
    admin_key: Option<PathBuf>,
    /// Days to keep audit rows; older ones are deleted at start and hourly [default: 90].
    #[arg(long, value_name = "DAYS")]
    audit_days: Option<u32>,
    /// This node's name among the nodes sharing a --database [default: the host name].
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// Where agents and clients reach this node, host:port, when several nodes share a
    /// --database [default: the listen address].
    #[arg(long, value_name = "HOST:PORT")]
    public_addr: Option<String>,
    /// Do not count relayed bytes (only for `telework-bench --byte-counting`, which measures
    /// what counting costs against this).
    #[arg(long, hide = true)]
    no_byte_counts: bool,
}

fn main() -> ExitCode {
    telework_net::glibc_tuning::reexec_if_needed();
    let cli = Cli::parse();
    let format = cli.log_format;
    telework_net::logging::init(format, "info");
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            telework_net::logging::report_error(format, "telework-relay", &format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Admin(command) => cli_runtime()?.block_on(telework_relay::admin::cli::run(
            command,
            |store| async move {
                open_registry(store.data_dir.as_deref(), store.database.as_deref()).await
            },
            &mut std::io::stdin().lock(),
        )),
        Command::Fingerprint { data_dir, cert } => {
            println!(
                "{}",
                identity::existing_fingerprint(&data_dir, cert.as_deref())?
            );
            Ok(())
        }
        Command::ClientProfile {
            data_dir,
            cert,
            address,
            pin,
        } => {
            let fingerprint = (cert.is_none() || pin)
                .then(|| identity::existing_fingerprint(&data_dir, cert.as_deref()))
                .transpose()?;
            let line = RelayProfile {
                relay: address,
                fingerprint,
            };
            println!("{line}");
            Ok(())
        }
        Command::Token(TokenCommand::Create { store, uses, hours }) => {
            anyhow::ensure!(uses > 0, "--uses must be at least 1");
            let runtime = cli_runtime()?;
            let registry = runtime.block_on(open_registry(
                store.data_dir.as_deref(),
                store.database.as_deref(),
            ))?;
            let token =
                runtime.block_on(registry.create_token(uses, hours.saturating_mul(3600)))?;
            println!("{token}");
            telework_net::say!("valid for {uses} registration(s) within {hours} hour(s)");
            Ok(())
        }
        Command::Machines(MachinesArgs {
            command,
            data_dir,
            database,
        }) => cli_runtime()?.block_on(async {
            if data_dir.is_none() && database.is_none() {
                anyhow::bail!("give the relay's data directory with --data-dir DIR");
            }
            let registry = open_registry(data_dir.as_deref(), database.as_deref()).await?;
            match command.unwrap_or(MachinesCommand::List) {
                MachinesCommand::List => {
                    let mut listing = Vec::new();
                    admin::cli::list_machines(&registry, &mut listing).await?;
                    std::io::Write::write_all(&mut std::io::stdout(), &listing)
                        .context("writing the listing")
                }
                MachinesCommand::Remove { id } => {
                    anyhow::ensure!(
                        registry.remove(&id).await?,
                        "no machine is registered as {id} (see 'telework-relay machines')"
                    );
                    let removed = AuditEvent::Removed {
                        id: id.clone(),
                        by: Actor::Cli,
                    };
                    registry
                        .record_audit(&removed.row(audit::unix_now()))
                        .await?;
                    println!(
                        "removed {id}: a running relay disconnects its agent within {} s, and \
                         the agent stops. To bring the PC back, register it again \
                         ('telework-agent register').",
                        telework_relay::REGISTRATION_CHECK.as_secs()
                    );
                    Ok(())
                }
            }
        }),
        Command::Audit(args) => audit_cmd::show_audit(args),
    }
}

/// The `tw-relay:` line for a self-signed relay whose address is known: `--public-addr`,
/// else the listening address unless it is 0.0.0.0 or `::`. With the operator's own
/// certificate, `client-profile` makes the line (whether to pin is the operator's call).
fn employees_line(
    config: &telework_relay::config::RelayConfig,
    bound: std::net::SocketAddr,
    identity: &TlsIdentity,
) -> Option<RelayProfile> {
    if config.cert_files.is_some() {
        return None;
    }
    let relay = match &config.public_addr {
        Some(addr) => addr.parse().ok()?,
        None if !bound.ip().is_unspecified() => bound.to_string().parse().ok()?,
        None => return None,
    };
    Some(RelayProfile {
        relay,
        fingerprint: Some(identity.fingerprint),
    })
}

/// Prints a status line of `serve` on stdout. A stdout nobody reads any more (a closed pipe)
/// must not stop the relay, as `println!` would by panicking.
fn announce(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// A small runtime for the commands that are not `serve`.
fn cli_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The PostgreSQL registry at `database` if given, else the SQLite one in `data_dir`.
async fn open_registry(
    data_dir: Option<&std::path::Path>,
    database: Option<&str>,
) -> anyhow::Result<Registry> {
    match (database, data_dir) {
        (Some(url), _) => Registry::connect(url)
            .await
            .context("connecting to the PostgreSQL registry"),
        (None, Some(dir)) => open_sqlite(dir),
        (None, None) => anyhow::bail!("give the relay's data directory with --data-dir DIR"),
    }
}

fn open_sqlite(data_dir: &std::path::Path) -> anyhow::Result<Registry> {
    create_private_dir(data_dir)?;
    check_private_dir(data_dir)?;
    let path = data_dir.join("relay.db");
    Registry::open(&path).with_context(|| format!("opening {}", path.display()))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let flags = Settings {
        listen: args.listen,
        quic: args.no_quic.then_some(false),
        data_dir: args.data_dir,
        database_url: args.database.map(Into::into),
        cert: args.cert,
        key: args.key,
        registration: args.registration,
        hostnames: (!args.hostnames.is_empty()).then_some(args.hostnames),
        per_address_limits: args.no_per_address_limits.then_some(false),
        admin: args.no_admin.then_some(false),
        admin_listen: args.admin_listen.clone(),
        admin_tls: args.admin_tls,
        admin_cert: args.admin_cert,
        admin_key: args.admin_key,
        audit_days: args.audit_days,
        node_name: args.node_name,
        public_addr: args.public_addr,
        ..Default::default()
    };
    let admin_address_given = args.admin_listen.is_some() || file.admin_listen.is_some();
    let config = file.overridden_by(flags).validate()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let registry = runtime.block_on(open_registry(
        Some(&config.data_dir),
        config
            .database_url
            .as_ref()
            .map(telework_relay::config::DatabaseUrl::as_str),
    ))?;
    if config.database_url.is_some() {
        // The data dir still holds the certificate.
        create_private_dir(&config.data_dir)?;
        check_private_dir(&config.data_dir)?;
        info!("registry in PostgreSQL");
    }
    let identity: TlsIdentity = match &config.cert_files {
        Some((cert, key)) => identity::from_files(cert, key)?,
        None => {
            let id = identity::self_signed(&config.data_dir, &config.hostnames)?;
            if id.created {
                info!(dir = %config.data_dir.display(), "created a self-signed certificate");
            }
            id
        }
    };
    let mut options = config.options();
    options.count_bytes = !args.no_byte_counts;
    let relay = Relay::new(registry, &identity, options)?;
    runtime.block_on(async {
        // Polled once now, the signal handlers are installed before the address is printed:
        // a stop asked for as soon as the relay says it listens is a graceful one, not the
        // default action that kills the process.
        let mut stop_signal = Box::pin(shutdown_signal());
        if futures_util::FutureExt::now_or_never(&mut stop_signal).is_some() {
            return Ok(());
        }
        let (listener, quic) = relay.bind(config.listen).await.with_context(|| {
            format!(
                "cannot listen on {} (TCP, and UDP for QUIC unless --no-quic)",
                config.listen
            )
        })?;
        let addr = listener.local_addr()?;
        match quic {
            Some(_) => announce(format_args!("telework-relay listening on {addr} (TCP and UDP)")),
            None => announce(format_args!("telework-relay listening on {addr} (TCP)")),
        }
        announce(format_args!("certificate fingerprint: {}", identity.fingerprint));
        if let Some(line) = employees_line(&config, addr, &identity) {
            announce(format_args!("employees connect after: telework config import {line}"));
        }
        if config.registration == Registration::Open {
            warn!("registration is open: anyone who reaches this relay can register a computer ID (use --registration token in production)");
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let admin = match &config.admin {
            None => None,
            Some(admin) => match admin::cli::bind(admin, &identity).await {
                Ok((admin_listener, options)) => {
                    let scheme = if options.tls.is_some() { "https" } else { "http" };
                    announce(format_args!(
                        "admin console on {scheme}://{}/",
                        admin_listener.local_addr()?
                    ));
                    let stopped = stop.clone();
                    Some(tokio::spawn(admin::serve(
                        relay.clone(),
                        admin_listener,
                        options,
                        async move { stopped.cancelled().await },
                    )))
                }
                // The default address may be taken by another program: go on without it.
                Err(e) if !admin_address_given => {
                    warn!("admin console not started: {e:#}");
                    None
                }
                Err(e) => return Err(e),
            },
        };
        let stopping = stop.clone();
        relay
            .serve(listener, quic, async move {
                stop_signal.await;
                info!("shutdown signal received");
                stopping.cancel();
            })
            .await;
        stop.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        Ok::<(), anyhow::Error>(())
    })
}
