//! `telework-relay admin …` (operator accounts and API tokens), the `machines` listing, and
//! starting the admin listener from the checked configuration; `main.rs` only dispatches
//! here.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use super::AdminOptions;
use crate::config::AdminConfig;
use crate::identity::{self, TlsIdentity};
use crate::registry::{Registry, MIN_PASSWORD_LEN};

/// Where the registry is: the SQLite file in a data directory, or PostgreSQL.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Store {
    /// The relay's data directory.
    #[arg(
        long,
        env = "TELEWORK_RELAY_DATA_DIR",
        required_unless_present = "database"
    )]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL registry shared by several relay nodes, instead of the SQLite file in the
    /// data directory.
    #[arg(
        long,
        value_name = "postgres://…",
        env = "TELEWORK_RELAY_DATABASE",
        hide_env_values = true
    )]
    pub database: Option<String>,
}

/// `telework-relay admin`: console accounts and API tokens.
#[derive(clap::Subcommand)]
pub enum AdminCommand {
    /// Add an operator who can sign in to the console (or set an existing one's password).
    AddUser {
        /// The operator's user name: 1 to 32 letters, digits, '.', '_' or '-'.
        name: String,
        /// Where the registry is.
        #[command(flatten)]
        store: Store,
        /// Read the password from one line of standard input (required: passwords never go
        /// on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// API tokens for scripts (`Authorization: Bearer …`).
    #[command(subcommand)]
    Token(ApiTokenCommand),
}

/// `telework-relay admin token …`.
#[derive(clap::Subcommand)]
pub enum ApiTokenCommand {
    /// Create an API token and print it once (only its SHA-256 is kept).
    Create {
        /// Where the registry is.
        #[command(flatten)]
        store: Store,
        /// A name to recognise it by (shown in lists and in the audit log).
        #[arg(long, default_value = "api")]
        name: String,
    },
    /// List API tokens (never their secrets).
    List {
        /// Where the registry is.
        #[command(flatten)]
        store: Store,
    },
    /// Revoke an API token by its id.
    Revoke {
        /// The token's id, from 'admin token list'.
        id: String,
        /// Where the registry is.
        #[command(flatten)]
        store: Store,
    },
}

/// Runs an admin command; `open` opens the registry where [`Store`] says, `stdin` gives the
/// password.
///
/// # Errors
/// A one-line explanation for the operator.
pub async fn run<F>(
    command: AdminCommand,
    open: impl Fn(Store) -> F,
    stdin: &mut dyn BufRead,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<Registry>>,
{
    match command {
        AdminCommand::AddUser { name, store, .. } => {
            anyhow::ensure!(
                crate::registry::valid_operator_name(&name),
                "{name:?} is not a user name: use 1 to 32 letters, digits, '.', '_' or '-'"
            );
            let mut line = String::new();
            stdin
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(
                !password.is_empty(),
                "no password on standard input: give it as one line"
            );
            anyhow::ensure!(
                password.chars().count() >= MIN_PASSWORD_LEN,
                "the password is too short: use at least {MIN_PASSWORD_LEN} characters"
            );
            let registry = open(store).await?;
            if registry.set_operator(&name, password).await? {
                println!("added operator {name}");
            } else {
                println!("changed the password of operator {name}");
            }
            Ok(())
        }
        AdminCommand::Token(ApiTokenCommand::Create { store, name }) => {
            let registry = open(store).await?;
            let (id, secret) = registry.create_api_token(&name).await?;
            println!("{secret}");
            eprintln!(
                "API token {id} ({name}): shown only now; send it as 'Authorization: Bearer …'"
            );
            Ok(())
        }
        AdminCommand::Token(ApiTokenCommand::List { store }) => {
            let tokens = open(store).await?.api_tokens().await?;
            if tokens.is_empty() {
                println!("no API tokens");
            }
            for t in tokens {
                let used = t
                    .last_used
                    .map_or_else(|| "never".to_owned(), super::pages::utc);
                println!(
                    "{}  {:<24} created {}  last used {used}",
                    t.id,
                    t.name,
                    super::pages::utc(t.created)
                );
            }
            Ok(())
        }
        AdminCommand::Token(ApiTokenCommand::Revoke { id, store }) => {
            anyhow::ensure!(
                open(store).await?.revoke_api_token(&id).await?,
                "no API token has id {id:?} (see 'telework-relay admin token list')"
            );
            println!("revoked API token {id}");
            Ok(())
        }
    }
}

/// `telework-relay machines`: every registered machine, with the node it is online at (from
/// the presence rows of nodes whose heartbeat is current) or `offline`.
///
/// # Errors
/// A registry error, or `out` cannot be written.
pub async fn list_machines(registry: &Registry, out: &mut dyn Write) -> anyhow::Result<()> {
    let machines = registry.machines().await?;
    if machines.is_empty() {
        writeln!(out, "no machines are registered")?;
        return Ok(());
    }
    let now = crate::cluster::now_ms();
    let live: Vec<String> = registry
        .nodes()
        .await?
        .into_iter()
        .filter(|n| n.live(now))
        .map(|n| n.name)
        .collect();
    // A killed node's presence rows outlive it until it starts again; its heartbeat has
    // expired, so its agents are not online there.
    let online: HashMap<String, String> = registry
        .presence()
        .await?
        .into_iter()
        .filter(|p| live.contains(&p.node))
        .map(|p| (p.id.as_str().to_owned(), p.node))
        .collect();
    for m in machines {
        let seen = m.last_seen.map_or("never".to_owned(), super::pages::utc);
        let state = match online.get(m.id.as_str()) {
            Some(node) => format!("online at {node}"),
            None => "offline".to_owned(),
        };
        let disabled = if m.disabled { "  disabled" } else { "" };
        writeln!(
            out,
            "{:<32} registered {}  last seen {}  {state}{disabled}",
            m.id,
            super::pages::utc(m.created),
            seen
        )?;
    }
    Ok(())
}

/// Binds the admin listener as configured, with TLS from its own files or the relay's
/// identity.
///
/// # Errors
/// The address cannot be bound, or the certificate files are wrong.
pub async fn bind(
    config: &AdminConfig,
    relay_identity: &TlsIdentity,
) -> anyhow::Result<(TcpListener, AdminOptions)> {
    let tls = if config.tls {
        let server = match &config.cert_files {
            Some((cert, key)) => {
                let own = identity::from_files(cert, key)?;
                http_tls(own.chain, own.key)?
            }
            None => http_tls(relay_identity.chain.clone(), relay_identity.key.clone_key())?,
        };
        Some(Arc::new(server))
    } else {
        None
    };
    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {} for the admin console (--admin-listen ADDR, or --no-admin)",
            config.listen
        )
    })?;
    Ok((
        listener,
        AdminOptions {
            tls,
            ..AdminOptions::default()
        },
    ))
}

/// A TLS 1.2/1.3 server configuration for browsers (HTTP/1.1).
///
/// # Errors
/// The key does not match the certificate.
pub fn http_tls(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the admin certificate and key do not match")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
