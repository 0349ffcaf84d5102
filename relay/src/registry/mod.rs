//! The machine registry: an embedded SQLite database of computer IDs, machine keys and
//! enrolment tokens, and the parts beside it: the audit log ([`audit`]), console accounts and
//! API tokens ([`operators`]), listing and revoking enrolment tokens ([`enrolment`]).

pub mod audit;

pub use audit::{AuditFilter, AuditRow};

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use telework_protocol::ComputerId;

mod enrolment;
mod operators;

pub use enrolment::EnrolmentToken;
pub use operators::{hash_password, valid_operator_name, ApiToken, MIN_PASSWORD_LEN};

/// A registry failure.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// SQLite failed.
    #[error("registry database error: {0}")]
    Db(#[from] rusqlite::Error),
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

/// The registry. SQLite calls are short, so one connection behind a mutex serves all tasks.
pub struct Registry {
    db: Mutex<Connection>,
}

/// Each part's tables; every one is `CREATE … IF NOT EXISTS`, applied at every open.
const SCHEMAS: &[&str] = &[
    MACHINES_SCHEMA,
    audit::AUDIT_SCHEMA,
    operators::OPERATORS_SCHEMA,
];

const MACHINES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS machines (
    id          TEXT PRIMARY KEY,
    public_key  BLOB NOT NULL,
    created     INTEGER NOT NULL,
    last_seen   INTEGER
);
CREATE TABLE IF NOT EXISTS enrolment_tokens (
    token_hash  BLOB PRIMARY KEY,
    created     INTEGER NOT NULL,
    expires     INTEGER NOT NULL,
    uses_left   INTEGER NOT NULL
);
";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Adds `column` to `table` in a database made by an older version (SQLite has no
/// `ADD COLUMN IF NOT EXISTS`).
fn add_column_if_missing(
    db: &Connection,
    table: &str,
    column: &str,
    declaration: &str,
) -> Result<(), RegistryError> {
    let mut stmt = db.prepare(&format!("PRAGMA table_info({table})"))?;
    let mut names = stmt.query_map([], |r| r.get::<_, String>(1))?;
    if names.any(|name| name.is_ok_and(|n| n == column)) {
        return Ok(());
    }
    db.execute_batch(&format!(
        "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
    ))?;
    Ok(())
}

fn token_hash(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

impl Registry {
    /// Opens (creating if needed) the database at `path`.
    ///
    /// # Errors
    /// [`RegistryError::Db`] if the file cannot be opened or migrated.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        Self::migrated(db)
    }

    /// An in-memory registry, for tests.
    ///
    /// # Errors
    /// Only if SQLite fails.
    pub fn in_memory() -> Result<Self, RegistryError> {
        let db = Connection::open_in_memory()?;
        Self::migrated(db)
    }

    fn migrated(db: Connection) -> Result<Self, RegistryError> {
        for schema in SCHEMAS {
            db.execute_batch(schema)?;
        }
        add_column_if_missing(&db, "machines", "disabled", "INTEGER NOT NULL DEFAULT 0")?;
        add_column_if_missing(&db, "enrolment_tokens", "label", "TEXT")?;
        add_column_if_missing(&db, "enrolment_tokens", "created_by", "TEXT")?;
        Ok(Self { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent; keep serving.
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `id` → `public_key`. Registering the same pair again succeeds (an agent
    /// re-running `register`); a different key for a taken ID fails.
    ///
    /// # Errors
    /// [`RegistryError::IdTaken`], or a database error.
    pub fn register(&self, id: &ComputerId, public_key: &[u8]) -> Result<(), RegistryError> {
        let db = self.db();
        let existing: Option<Vec<u8>> = db
            .query_row(
                "SELECT public_key FROM machines WHERE id = ?1",
                [id.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        match existing {
            Some(pk) if pk == public_key => Ok(()),
            Some(_) => Err(RegistryError::IdTaken),
            None => {
                db.execute(
                    "INSERT INTO machines (id, public_key, created) VALUES (?1, ?2, ?3)",
                    params![id.as_str(), public_key, now()],
                )?;
                Ok(())
            }
        }
    }

    /// Looks up a machine.
    ///
    /// # Errors
    /// A database error.
    pub fn machine(&self, id: &ComputerId) -> Result<Option<Machine>, RegistryError> {
        let db = self.db();
        let row = db
            .query_row(
                "SELECT public_key, created, last_seen, disabled FROM machines WHERE id = ?1",
                [id.as_str()],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, bool>(3)?,
                    ))
                },
            )
            .optional()?;
        Ok(
            row.map(|(public_key, created, last_seen, disabled)| Machine {
                id: id.clone(),
                public_key,
                created,
                last_seen,
                disabled,
            }),
        )
    }

    /// Every machine, ordered by ID.
    ///
    /// # Errors
    /// A database error.
    pub fn machines(&self) -> Result<Vec<Machine>, RegistryError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT id, public_key, created, last_seen, disabled FROM machines ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, bool>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, public_key, created, last_seen, disabled) = row?;
            // Rows were validated on insert; skip any that a hand edit broke.
            if let Ok(id) = id.parse() {
                out.push(Machine {
                    id,
                    public_key,
                    created,
                    last_seen,
                    disabled,
                });
            }
        }
        Ok(out)
    }

    /// Disables (`true`) or enables a machine; returns whether it is registered. A running
    /// relay drops a disabled machine's agent within [`crate::REGISTRATION_CHECK`] (at once
    /// when the caller is the relay itself, which also calls [`crate::hub::Hub::disconnect`]).
    ///
    /// # Errors
    /// A database error.
    pub fn set_disabled(&self, id: &ComputerId, disabled: bool) -> Result<bool, RegistryError> {
        let changed = self.db().execute(
            "UPDATE machines SET disabled = ?2 WHERE id = ?1",
            params![id.as_str(), disabled],
        )?;
        Ok(changed > 0)
    }

    /// Removes the registration of `id`; returns whether there was one. An agent connected
    /// under it is dropped by [`crate::Relay::serve`]'s registration check within
    /// [`crate::REGISTRATION_CHECK`], even when another process removed it.
    ///
    /// # Errors
    /// A database error.
    pub fn remove(&self, id: &ComputerId) -> Result<bool, RegistryError> {
        let removed = self
            .db()
            .execute("DELETE FROM machines WHERE id = ?1", [id.as_str()])?;
        Ok(removed > 0)
    }

    /// A number that changes whenever another connection (such as a `telework-relay
    /// machines remove` process) has committed a change to the database; this connection's
    /// own writes do not change it (SQLite's `PRAGMA data_version`).
    ///
    /// # Errors
    /// A database error.
    pub fn outside_changes(&self) -> Result<i64, RegistryError> {
        Ok(self
            .db()
            .query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }

    /// Notes that `id` was online now.
    ///
    /// # Errors
    /// A database error.
    pub fn touch(&self, id: &ComputerId) -> Result<(), RegistryError> {
        self.db().execute(
            "UPDATE machines SET last_seen = ?2 WHERE id = ?1",
            params![id.as_str(), now()],
        )?;
        Ok(())
    }

    /// Creates an enrolment token good for `uses` registrations within `ttl_secs`; returns it.
    /// Only its hash is stored.
    ///
    /// # Errors
    /// A database error.
    pub fn create_token(&self, uses: u32, ttl_secs: u64) -> Result<String, RegistryError> {
        let token = format!("tw1-{}", hex::encode(rand::random::<[u8; 16]>()));
        let created = now();
        self.db().execute(
            "INSERT INTO enrolment_tokens (token_hash, created, expires, uses_left) VALUES (?1, ?2, ?3, ?4)",
            params![token_hash(&token), created, created.saturating_add(ttl_secs as i64), uses],
        )?;
        Ok(token)
    }

    /// Uses up one registration of `token`.
    ///
    /// # Errors
    /// [`RegistryError::BadToken`] if it is unknown, used up or expired.
    pub fn consume_token(&self, token: &str) -> Result<(), RegistryError> {
        let changed = self.db().execute(
            "UPDATE enrolment_tokens SET uses_left = uses_left - 1
             WHERE token_hash = ?1 AND uses_left > 0 AND expires > ?2",
            params![token_hash(token), now()],
        )?;
        if changed == 1 {
            Ok(())
        } else {
            Err(RegistryError::BadToken)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_is_idempotent_per_key_and_exclusive_per_id() {
        let reg = Registry::in_memory().unwrap();
        let id: ComputerId = "pc-1".parse().unwrap();
        reg.register(&id, &[1; 32]).unwrap();
        reg.register(&id, &[1; 32]).unwrap();
        assert!(matches!(
            reg.register(&id, &[2; 32]),
            Err(RegistryError::IdTaken)
        ));
        assert_eq!(reg.machine(&id).unwrap().unwrap().public_key, vec![1; 32]);
        assert!(reg.machine(&"pc-2".parse().unwrap()).unwrap().is_none());
        reg.touch(&id).unwrap();
        assert!(reg.machines().unwrap()[0].last_seen.is_some());
        assert!(!reg.machine(&id).unwrap().unwrap().disabled);
        assert!(reg.set_disabled(&id, true).unwrap());
        assert!(reg.machines().unwrap()[0].disabled);
        assert!(reg.set_disabled(&id, false).unwrap());
        assert!(!reg.machine(&id).unwrap().unwrap().disabled);
        assert!(!reg.set_disabled(&"pc-2".parse().unwrap(), true).unwrap());
    }

    #[test]
    fn a_database_from_before_the_disabled_column_gains_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(MACHINES_SCHEMA).unwrap();
        old.execute(
            "INSERT INTO machines (id, public_key, created) VALUES ('pc-1', x'03', 1)",
            [],
        )
        .unwrap();
        drop(old);
        let reg = Registry::open(&path).unwrap();
        let id: ComputerId = "pc-1".parse().unwrap();
        assert!(!reg.machine(&id).unwrap().unwrap().disabled);
        drop(reg);
        Registry::open(&path).unwrap();
    }

    #[test]
    fn tokens_are_counted_and_expire() {
        let reg = Registry::in_memory().unwrap();
        let once = reg.create_token(1, 3600).unwrap();
        reg.consume_token(&once).unwrap();
        assert!(matches!(
            reg.consume_token(&once),
            Err(RegistryError::BadToken)
        ));
        let expired = reg.create_token(5, 0).unwrap();
        assert!(matches!(
            reg.consume_token(&expired),
            Err(RegistryError::BadToken)
        ));
        assert!(matches!(
            reg.consume_token("tw1-unknown"),
            Err(RegistryError::BadToken)
        ));
    }

    #[test]
    fn removal_is_seen_by_another_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let id: ComputerId = "pc-1".parse().unwrap();
        let serving = Registry::open(&path).unwrap();
        serving.register(&id, &[3; 32]).unwrap();
        let before = serving.outside_changes().unwrap();
        serving.touch(&id).unwrap();
        assert_eq!(serving.outside_changes().unwrap(), before, "own writes");
        let admin = Registry::open(&path).unwrap();
        assert!(admin.remove(&id).unwrap());
        assert!(!admin.remove(&id).unwrap());
        assert_ne!(serving.outside_changes().unwrap(), before);
        assert!(serving.machine(&id).unwrap().is_none());
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let id: ComputerId = "pc-1".parse().unwrap();
        Registry::open(&path)
            .unwrap()
            .register(&id, &[3; 32])
            .unwrap();
        assert!(Registry::open(&path)
            .unwrap()
            .machine(&id)
            .unwrap()
            .is_some());
    }
}
