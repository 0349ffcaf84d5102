//! Relay settings: a TOML file and command-line flags (flags win), checked into one typed
//! [`RelayConfig`] before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{Registration, RelayOptions};

/// Every setting, each optional: the shape of the TOML file and of the flags.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on: TLS over TCP and QUIC over UDP, on the same port.
    pub listen: Option<String>,
    /// Serve QUIC on the UDP port (on by default; off leaves TLS over TCP only).
    pub quic: Option<bool>,
    /// Directory for the database and the self-signed certificate.
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL registry shared by several relay nodes (`postgres://user:password@host/db`)
    /// instead of the SQLite file in `data_dir`.
    pub database_url: Option<DatabaseUrl>,
    /// Operator's certificate chain (PEM). Needs `key`.
    pub cert: Option<PathBuf>,
    /// Operator's private key (PEM). Needs `cert`.
    pub key: Option<PathBuf>,
    /// `open` or `token`.
    pub registration: Option<Registration>,
    /// Extra names for the self-signed certificate.
    pub hostnames: Option<Vec<String>>,
    /// Most connections at once.
    pub max_connections: Option<usize>,
    /// Most connections still handshaking at once.
    pub max_unauthenticated: Option<usize>,
    /// Seconds sessions may continue after a shutdown signal.
    pub shutdown_grace_secs: Option<u64>,
    /// Per-source-address rate limits (on by default). Turn off only behind a load balancer
    /// that hides client addresses, or for load tests from one address.
    pub per_address_limits: Option<bool>,
    /// Failures (unknown or offline IDs, failed logins, ...) per second from all addresses
    /// together, with a minute's worth allowed at once. Raise it on a relay whose employees
    /// often look up PCs that are off; see `limits` for what happens when it runs out.
    pub global_failures_per_sec: Option<f64>,
    /// Days the audit log keeps its rows (default 90); older rows are deleted at start and
    /// then hourly. At least 1: the audit log cannot be turned off.
    pub audit_days: Option<u32>,
    /// Serve the admin console and metrics (on by default).
    pub admin: Option<bool>,
    /// Address of the admin listener (default `127.0.0.1:9480`).
    pub admin_listen: Option<String>,
    /// TLS on the admin listener: `auto` (on unless the address is loopback), `on` or `off`
    /// (loopback only).
    pub admin_tls: Option<AdminTls>,
    /// Certificate chain (PEM) for the admin listener instead of the relay's. Needs
    /// `admin_key`.
    pub admin_cert: Option<PathBuf>,
    /// Private key (PEM) for `admin_cert`.
    pub admin_key: Option<PathBuf>,
    /// This node's name among the nodes sharing a registry (default: the host name).
    pub node_name: Option<String>,
    /// Where agents and clients reach this node, `host:port` (default: the listen address).
    pub public_addr: Option<String>,
}

/// Whether the admin listener serves TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AdminTls {
    /// TLS unless the address is loopback (or an admin certificate is given).
    Auto,
    /// Always TLS.
    On,
    /// Plain HTTP: refused on any address but loopback.
    Off,
}

/// The admin listener's checked settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Whether it serves TLS.
    pub tls: bool,
    /// Its own certificate and key, or `None` for the relay's.
    pub cert_files: Option<(PathBuf, PathBuf)>,
}

/// A PostgreSQL URL, which may hold a password: `Debug` prints it masked.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL itself, for connecting.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for DatabaseUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(MASKED)")
    }
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// See [`Settings::quic`].
    pub quic: bool,
    /// Data directory.
    pub data_dir: PathBuf,
    /// See [`Settings::database_url`].
    pub database_url: Option<DatabaseUrl>,
    /// Operator certificate and key, or `None` for the self-signed one.
    pub cert_files: Option<(PathBuf, PathBuf)>,
    /// Extra certificate names.
    pub hostnames: Vec<String>,
    /// Limits and policies.
    pub registration: Registration,
    /// See [`Settings::max_connections`].
    pub max_connections: usize,
    /// See [`Settings::max_unauthenticated`].
    pub max_unauthenticated: usize,
    /// See [`Settings::shutdown_grace_secs`].
    pub shutdown_grace: Duration,
    /// See [`Settings::per_address_limits`].
    pub per_address_limits: bool,
    /// See [`Settings::global_failures_per_sec`].
    pub global_failures: crate::limits::Rate,
    /// The admin listener, unless turned off.
    pub admin: Option<AdminConfig>,
    /// See [`Settings::audit_days`].
    pub audit_days: u32,
    /// See [`Settings::node_name`].
    pub node_name: String,
    /// See [`Settings::public_addr`].
    pub public_addr: Option<String>,
}

/// A configuration problem, said precisely.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid setting {setting}: {message}")]
    Invalid {
        /// Which setting.
        setting: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Default listen address: TLS on the standard HTTPS port, which office and home networks
/// let through.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:443";

impl Settings {
    /// Reads a TOML file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`].
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })
    }

    /// Parses TOML text.
    ///
    /// # Errors
    /// The parser's message.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// `self` with every setting that `over` has replaced by it.
    pub fn overridden_by(self, over: Settings) -> Settings {
        Settings {
            listen: over.listen.or(self.listen),
            quic: over.quic.or(self.quic),
            data_dir: over.data_dir.or(self.data_dir),
            database_url: over.database_url.or(self.database_url),
            cert: over.cert.or(self.cert),
            key: over.key.or(self.key),
            registration: over.registration.or(self.registration),
            hostnames: over.hostnames.or(self.hostnames),
            max_connections: over.max_connections.or(self.max_connections),
            max_unauthenticated: over.max_unauthenticated.or(self.max_unauthenticated),
            shutdown_grace_secs: over.shutdown_grace_secs.or(self.shutdown_grace_secs),
            per_address_limits: over.per_address_limits.or(self.per_address_limits),
            global_failures_per_sec: over
                .global_failures_per_sec
                .or(self.global_failures_per_sec),
            admin: over.admin.or(self.admin),
            admin_listen: over.admin_listen.or(self.admin_listen),
            admin_tls: over.admin_tls.or(self.admin_tls),
            admin_cert: over.admin_cert.or(self.admin_cert),
            admin_key: over.admin_key.or(self.admin_key),
            audit_days: over.audit_days.or(self.audit_days),
            node_name: over.node_name.or(self.node_name),
            public_addr: over.public_addr.or(self.public_addr),
        }
    }

    /// Checks the settings and fills in defaults.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the setting.
    pub fn validate(self) -> Result<RelayConfig, ConfigError> {
        let admin = self.admin_config()?;
        let listen_text = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse().map_err(|_| ConfigError::Invalid {
            setting: "listen",
            message: format!("{listen_text:?} is not an address like 0.0.0.0:443 or [::]:443"),
        })?;
        let data_dir = self.data_dir.ok_or(ConfigError::Invalid {
            setting: "data_dir",
            message: "required (--data-dir DIR or data_dir in the config file)".into(),
        })?;
        if let Some(DatabaseUrl(url)) = &self.database_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::Invalid {
                    setting: "database_url",
                    message: "must be a PostgreSQL URL, postgres://user:password@host/database"
                        .into(),
                });
            }
        }
        let cert_files = match (self.cert, self.key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    setting: "cert/key",
                    message:
                        "give both a certificate and its key, or neither for a self-signed one"
                            .into(),
                })
            }
        };
        let node_name = self
            .node_name
            .unwrap_or_else(crate::cluster::default_node_name);
        crate::cluster::check_node_name(&node_name).map_err(|message| ConfigError::Invalid {
            setting: "node_name",
            message,
        })?;
        if let Some(addr) = &self.public_addr {
            if addr.parse::<telework_net::connect::RelayAddr>().is_err() {
                return Err(ConfigError::Invalid {
                    setting: "public_addr",
                    message: format!("{addr:?} is not host:port, like relay-2.example.com:443"),
                });
            }
        }
        let defaults = RelayOptions::default();
        let global_failures = match self.global_failures_per_sec {
            None => defaults.limits.global_failures,
            Some(r) if r.is_finite() && r > 0.0 && r <= 1e6 => crate::limits::Rate {
                per_sec: r,
                burst: r * 60.0,
            },
            Some(r) => {
                return Err(ConfigError::Invalid {
                    setting: "global_failures_per_sec",
                    message: format!("{r} is not a rate above 0 (and at most 1000000)"),
                })
            }
        };
        let positive = |setting: &'static str, v: Option<usize>, d: usize| match v {
            Some(0) => Err(ConfigError::Invalid {
                setting,
                message: "must be at least 1".into(),
            }),
            Some(n) => Ok(n),
            None => Ok(d),
        };
        Ok(RelayConfig {
            listen,
            quic: self.quic.unwrap_or(true),
            data_dir,
            database_url: self.database_url,
            cert_files,
            hostnames: self.hostnames.unwrap_or_default(),
            registration: self.registration.unwrap_or(Registration::Open),
            max_connections: positive(
                "max_connections",
                self.max_connections,
                defaults.max_connections,
            )?,
            max_unauthenticated: positive(
                "max_unauthenticated",
                self.max_unauthenticated,
                defaults.max_unauthenticated,
            )?,
            shutdown_grace: self
                .shutdown_grace_secs
                .map(Duration::from_secs)
                .unwrap_or(defaults.shutdown_grace),
            per_address_limits: self.per_address_limits.unwrap_or(true),
            global_failures,
            audit_days: match self.audit_days {
                Some(0) => {
                    return Err(ConfigError::Invalid {
                        setting: "audit_days",
                        message: "must be at least 1 (the audit log keeps rows this many days)"
                            .into(),
                    })
                }
                Some(days) => days,
                None => crate::audit::DEFAULT_AUDIT_DAYS,
            },
            admin,
            node_name,
            public_addr: self.public_addr,
        })
    }

    /// Checks the admin listener's settings: plain HTTP only on loopback.
    fn admin_config(&self) -> Result<Option<AdminConfig>, ConfigError> {
        if self.admin == Some(false) {
            return Ok(None);
        }
        let text = self
            .admin_listen
            .clone()
            .unwrap_or_else(|| crate::admin::DEFAULT_ADMIN_LISTEN.to_owned());
        let listen: SocketAddr = text.parse().map_err(|_| ConfigError::Invalid {
            setting: "admin_listen",
            message: format!("{text:?} is not an address like 127.0.0.1:9480"),
        })?;
        let cert_files = match (&self.admin_cert, &self.admin_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    setting: "admin_cert/admin_key",
                    message: "give both a certificate and its key, or neither for the relay's"
                        .into(),
                })
            }
        };
        let loopback = listen.ip().is_loopback();
        let tls = match self.admin_tls.unwrap_or(AdminTls::Auto) {
            AdminTls::On => true,
            AdminTls::Off => false,
            AdminTls::Auto => !loopback || cert_files.is_some(),
        };
        if !tls && !loopback {
            return Err(ConfigError::Invalid {
                setting: "admin_listen",
                message: format!(
                    "{listen} is not a loopback address, and the admin console serves plain \
                     HTTP only on loopback: drop --admin-tls off (TLS with the relay's \
                     certificate, or --admin-cert/--admin-key), or listen on 127.0.0.1"
                ),
            });
        }
        Ok(Some(AdminConfig {
            listen,
            tls,
            cert_files,
        }))
    }
}

impl RelayConfig {
    /// The run-time options this configuration asks for.
    pub fn options(&self) -> RelayOptions {
        RelayOptions {
            registration: self.registration,
            max_connections: self.max_connections,
            max_unauthenticated: self.max_unauthenticated,
            quic: self.quic,
            shutdown_grace: self.shutdown_grace,
            handshake_timeout: RelayOptions::default().handshake_timeout,
            limits: if self.per_address_limits {
                crate::limits::Limits {
                    global_failures: self.global_failures,
                    ..crate::limits::Limits::default()
                }
            } else {
                crate::limits::Limits::unlimited()
            },
            count_bytes: true,
            splice_tap: None,
            splice_hook: None,
            audit_days: self.audit_days,
            node_name: self.node_name.clone(),
            public_addr: self.public_addr.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
