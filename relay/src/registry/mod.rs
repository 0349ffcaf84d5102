//! The machine registry: computer IDs, machine keys and enrolment tokens, and the parts beside
//! them: the audit log ([`audit`]), console accounts and API tokens ([`operators`]), listing
//! and revoking enrolment tokens ([`enrolment`]), and what several nodes share: heartbeats,
//! presence and requests (`nodes`), live sessions ([`sessions`]).
//!
//! One async API over two backends: an embedded SQLite file (the default, one node), whose
//! calls run on blocking threads, and PostgreSQL (`--database postgres://…`, several nodes
//! sharing one registry) through a connection pool. Both get the same schema from the
//! numbered [`migrations`] at open.

pub mod audit;

pub use audit::{AuditFilter, AuditRow};

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use telework_protocol::ComputerId;

mod enrolment;
mod migrations;
mod nodes;
mod operators;
mod postgres;
mod postgres_tls;
pub mod sessions;
mod sqlite;

pub use enrolment::EnrolmentToken;
pub use migrations::LATEST as SCHEMA_VERSION;
pub use nodes::{NodeRequest, NodeRow, Presence, PresenceChange};
pub use operators::{hash_password, valid_operator_name, ApiToken, MIN_PASSWORD_LEN};
pub use sessions::{SessionChange, SessionRecord};

/// A registry failure.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// SQLite failed.
    #[error("registry database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// PostgreSQL failed, or no connection to it could be had.
    #[error("registry database error: {0}")]
    Postgres(String),
    /// A blocking registry task did not finish (the runtime is shutting down).
    #[error("registry task failed: {0}")]
    Task(String),
    /// The ID is registered to another key.
    #[error("computer ID already registered to another machine")]
    IdTaken,
    /// The enrolment token is unknown, used up or expired.
    #[error("enrolment token not valid")]
    BadToken,
    /// A value given to the registry is not acceptable.
    #[error("{0}")]
    Invalid(&'static str),
}

impl From<tokio_postgres::Error> for RegistryError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => Self::Postgres(format!("{}: {}", db.code().code(), db.message())),
            // "error performing TLS handshake" says little without its cause.
            None => {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    text = format!("{text}: {cause}");
                    source = cause.source();
                }
                Self::Postgres(text)
            }
        }
    }
}

impl From<deadpool_postgres::PoolError> for RegistryError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => Self::Postgres(other.to_string()),
        }
    }
}

/// One registered machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Its computer ID.
    pub id: ComputerId,
    /// Its Ed25519 public key.
    pub public_key: Vec<u8>,
    /// Unix seconds of registration.
    pub created: i64,
    /// Unix seconds it was last online, if ever.
    pub last_seen: Option<i64>,
    /// Whether the operator disabled it: its agent is refused until enabled again.
    pub disabled: bool,
}

/// The registry: cheap to share behind an `Arc`, every call async.
pub struct Registry {
    backend: Backend,
}

enum Backend {
    Sqlite(Arc<sqlite::Sqlite>),
    Postgres(postgres::Postgres),
}

/// An enrolment token as stored: only its hash.
struct NewToken {
    hash: Vec<u8>,
    created: i64,
    expires: i64,
    uses: u32,
    label: Option<String>,
    created_by: Option<String>,
}

/// The length of an enrolment token's id: 6 bytes in hex.
const ID_HEX_LEN: usize = 12;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn token_hash(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

fn uses_left(stored: i64) -> u32 {
    u32::try_from(stored.clamp(0, i64::from(u32::MAX))).unwrap_or(0)
}

/// Runs `f` on the SQLite backend on a blocking thread.
async fn blocking<T: Send + 'static>(
    db: &Arc<sqlite::Sqlite>,
    f: impl FnOnce(&sqlite::Sqlite) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || f(&db))
        .await
        .map_err(|e| RegistryError::Task(e.to_string()))?
}

/// Calls `$method` on either backend: on a blocking thread for SQLite (with the arguments
/// moved there, so they must be owned), awaited for PostgreSQL (by reference).
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:ident),* )) => {
        match &$self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| db.$method($(&$arg),*)).await
            }
            Backend::Postgres(pg) => pg.$method($(&$arg),*).await,
        }
    };
}
pub(crate) use dispatch;

impl Registry {
    /// Opens (creating if needed) the SQLite database at `path` and migrates it. Called once
    /// at start, before serving.
    ///
    /// # Errors
    /// [`RegistryError::Db`] if the file cannot be opened or migrated.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        Ok(Self::sqlite(sqlite::Sqlite::open(path)?))
    }

    /// An in-memory SQLite registry, for tests.
    ///
    /// # Errors
    /// Only if SQLite fails.
    pub fn in_memory() -> Result<Self, RegistryError> {
        Ok(Self::sqlite(sqlite::Sqlite::in_memory()?))
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://user:pass@host:port/db`)
    /// and migrates it.
    ///
    /// # Errors
    /// [`RegistryError::Postgres`] if the URL is bad, the database unreachable, or a
    /// migration fails.
    pub async fn connect(url: &str) -> Result<Self, RegistryError> {
        Ok(Self {
            backend: Backend::Postgres(postgres::Postgres::connect(url).await?),
        })
    }

    fn sqlite(db: sqlite::Sqlite) -> Self {
        Self {
            backend: Backend::Sqlite(Arc::new(db)),
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The newest schema migration applied.
    ///
    /// # Errors
    /// A database error.
    pub async fn schema_version(&self) -> Result<i64, RegistryError> {
        dispatch!(self.schema_version())
    }

    /// Records `id` → `public_key`. Registering the same pair again succeeds (an agent
    /// re-running `register`); a different key for a taken ID fails.
    ///
    /// # Errors
    /// [`RegistryError::IdTaken`], or a database error.
    pub async fn register(&self, id: &ComputerId, public_key: &[u8]) -> Result<(), RegistryError> {
        let (id, public_key) = (id.clone(), public_key.to_vec());
        dispatch!(self.register(id, public_key))
    }

    /// Looks up a machine.
    ///
    /// # Errors
    /// A database error.
    pub async fn machine(&self, id: &ComputerId) -> Result<Option<Machine>, RegistryError> {
        let id = id.clone();
        dispatch!(self.machine(id))
    }

    /// Every machine, ordered by ID.
    ///
    /// # Errors
    /// A database error.
    pub async fn machines(&self) -> Result<Vec<Machine>, RegistryError> {
        dispatch!(self.machines())
    }

    /// Disables (`true`) or enables a machine; returns whether it is registered. A running
    /// relay drops a disabled machine's agent within [`crate::REGISTRATION_CHECK`] (at once
    /// when the caller is the relay itself, which also calls [`crate::hub::Hub::disconnect`]).
    ///
    /// # Errors
    /// A database error.
    pub async fn set_disabled(
        &self,
        id: &ComputerId,
        disabled: bool,
    ) -> Result<bool, RegistryError> {
        let id = id.clone();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.set_disabled(&id, disabled)).await,
            Backend::Postgres(pg) => pg.set_disabled(&id, disabled).await,
        }
    }

    /// Removes the registration of `id`; returns whether there was one. An agent connected
    /// under it is dropped by [`crate::Relay::serve`]'s registration check within
    /// [`crate::REGISTRATION_CHECK`], even when another process or node removed it.
    ///
    /// # Errors
    /// A database error.
    pub async fn remove(&self, id: &ComputerId) -> Result<bool, RegistryError> {
        let id = id.clone();
        dispatch!(self.remove(id))
    }

    /// A counter that goes up whenever any process or node removes or disables a machine
    /// (the `registry_changes` row, bumped in the same transaction).
    ///
    /// # Errors
    /// A database error.
    pub async fn changes(&self) -> Result<i64, RegistryError> {
        dispatch!(self.changes())
    }

    /// Creates an enrolment token good for `uses` registrations within `ttl_secs`; returns it.
    /// Only its hash is stored.
    ///
    /// # Errors
    /// A database error.
    pub async fn create_token(&self, uses: u32, ttl_secs: u64) -> Result<String, RegistryError> {
        let (token, _) = self
            .create_labelled_token(uses, ttl_secs, None, None)
            .await?;
        Ok(token)
    }

    /// Uses up one registration of `token`.
    ///
    /// # Errors
    /// [`RegistryError::BadToken`] if it is unknown, used up or expired.
    pub async fn consume_token(&self, token: &str) -> Result<(), RegistryError> {
        let hash = token_hash(token);
        if dispatch!(self.consume_token(hash))? {
            Ok(())
        } else {
            Err(RegistryError::BadToken)
        }
    }
}
