//! The SQLite backend: one connection behind a mutex, called only from blocking threads
//! (the async [`super::Registry`] moves every call onto one with `spawn_blocking`).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use telework_protocol::ComputerId;

use super::migrations::{MIGRATIONS, SCHEMA_MIGRATIONS, SQLITE_V1_COLUMNS};
use super::{now, ApiToken, AuditFilter, AuditRow, EnrolmentToken, Machine, RegistryError};
use super::{NewToken, ID_HEX_LEN};

/// The SQLite registry.
pub(super) struct Sqlite {
    db: Mutex<Connection>,
}

/// The id of an enrolment token: the first 6 bytes of its stored SHA-256, in lower-case hex.
const TOKEN_ID_SQL: &str = "lower(hex(substr(token_hash, 1, 6)))";

impl Sqlite {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub(super) fn open(path: &Path) -> Result<Self, RegistryError> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        Self::migrated(db)
    }

    /// An in-memory database.
    pub(super) fn in_memory() -> Result<Self, RegistryError> {
        Self::migrated(Connection::open_in_memory()?)
    }

    fn migrated(mut db: Connection) -> Result<Self, RegistryError> {
        db.execute_batch(SCHEMA_MIGRATIONS)?;
        for migration in MIGRATIONS {
            // IMMEDIATE: a relay and a CLI command opening the file at once take turns.
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let applied = tx
                .query_row(
                    "SELECT 1 FROM schema_migrations WHERE version = ?1",
                    [migration.version],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if applied {
                continue;
            }
            tx.execute_batch(migration.sqlite)?;
            if migration.version == 1 {
                for (table, column, declaration) in SQLITE_V1_COLUMNS {
                    add_column_if_missing(&tx, table, column, declaration)?;
                }
            }
            tx.execute(
                "INSERT INTO schema_migrations (version, applied) VALUES (?1, ?2)",
                params![migration.version, now()],
            )?;
            tx.commit()?;
        }
        Ok(Self { db: Mutex::new(db) })
    }

    pub(super) fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent; keep serving.
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn schema_version(&self) -> Result<i64, RegistryError> {
        Ok(self.db().query_row(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?)
    }

    pub(super) fn register(&self, id: &ComputerId, public_key: &[u8]) -> Result<(), RegistryError> {
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

    pub(super) fn machine(&self, id: &ComputerId) -> Result<Option<Machine>, RegistryError> {
        let db = self.db();
        let row = db
            .query_row(
                "SELECT public_key, created, last_seen, disabled FROM machines WHERE id = ?1",
                [id.as_str()],
                |r| {
                    Ok(Machine {
                        id: id.clone(),
                        public_key: r.get(0)?,
                        created: r.get(1)?,
                        last_seen: r.get(2)?,
                        disabled: r.get(3)?,
                    })
                },
            )
            .optional()?;
        Ok(row)
    }

    pub(super) fn machines(&self) -> Result<Vec<Machine>, RegistryError> {
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

    /// Runs `sql` with `id` (and `extra`) and bumps the change counter if it changed a row.
    fn change_machine(
        &self,
        sql: &str,
        id: &ComputerId,
        extra: Option<bool>,
    ) -> Result<bool, RegistryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let changed = match extra {
            Some(value) => tx.execute(sql, params![id.as_str(), value])?,
            None => tx.execute(sql, [id.as_str()])?,
        };
        if changed > 0 {
            tx.execute(
                "UPDATE registry_changes SET version = version + 1 WHERE id = 1",
                [],
            )?;
        }
        tx.commit()?;
        Ok(changed > 0)
    }

    pub(super) fn set_disabled(
        &self,
        id: &ComputerId,
        disabled: bool,
    ) -> Result<bool, RegistryError> {
        self.change_machine(
            "UPDATE machines SET disabled = ?2 WHERE id = ?1",
            id,
            Some(disabled),
        )
    }

    pub(super) fn remove(&self, id: &ComputerId) -> Result<bool, RegistryError> {
        self.change_machine("DELETE FROM machines WHERE id = ?1", id, None)
    }

    pub(super) fn changes(&self) -> Result<i64, RegistryError> {
        Ok(self.db().query_row(
            "SELECT version FROM registry_changes WHERE id = 1",
            [],
            |r| r.get(0),
        )?)
    }

    pub(super) fn insert_token(&self, t: &NewToken) -> Result<(), RegistryError> {
        self.db().execute(
            "INSERT INTO enrolment_tokens (token_hash, created, expires, uses_left, label, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![t.hash, t.created, t.expires, t.uses, t.label, t.created_by],
        )?;
        Ok(())
    }

    pub(super) fn consume_token(&self, hash: &[u8]) -> Result<bool, RegistryError> {
        let changed = self.db().execute(
            "UPDATE enrolment_tokens SET uses_left = uses_left - 1
             WHERE token_hash = ?1 AND uses_left > 0 AND expires > ?2",
            params![hash, now()],
        )?;
        Ok(changed == 1)
    }

    pub(super) fn enrolment_tokens(&self) -> Result<Vec<EnrolmentToken>, RegistryError> {
        let db = self.db();
        let mut stmt = db.prepare(&format!(
            "SELECT {TOKEN_ID_SQL}, label, created_by, created, expires, uses_left
             FROM enrolment_tokens ORDER BY created DESC, token_hash"
        ))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(EnrolmentToken {
                    id: r.get(0)?,
                    label: r.get(1)?,
                    created_by: r.get(2)?,
                    created: r.get(3)?,
                    expires: r.get(4)?,
                    uses_left: super::uses_left(r.get(5)?),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub(super) fn revoke_token(&self, id: &str) -> Result<bool, RegistryError> {
        debug_assert_eq!(id.len(), ID_HEX_LEN);
        let removed = self.db().execute(
            &format!("DELETE FROM enrolment_tokens WHERE {TOKEN_ID_SQL} = ?1"),
            [id],
        )?;
        Ok(removed > 0)
    }

    pub(super) fn record_audit_batch(&self, rows: &[AuditRow]) -> Result<(), RegistryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO audit (at, kind, computer_id, address, actor, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for row in rows {
                insert.execute(params![
                    row.at,
                    row.kind,
                    row.computer_id,
                    row.address,
                    row.actor,
                    row.detail.to_string(),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub(super) fn audit_rows(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, RegistryError> {
        let db = self.db();
        let mut stmt = db.prepare_cached(
            "SELECT id, at, kind, computer_id, address, actor, detail FROM audit
             WHERE (?1 IS NULL OR at >= ?1) AND (?2 IS NULL OR at < ?2)
               AND (?3 IS NULL OR computer_id = ?3) AND (?4 IS NULL OR kind = ?4)
             ORDER BY at DESC, id DESC LIMIT ?5",
        )?;
        let rows = stmt.query_map(
            params![
                filter.since,
                filter.until,
                filter.computer_id,
                filter.kind,
                filter.sql_limit().unwrap_or(-1)
            ],
            |r| {
                Ok(AuditRow {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    kind: r.get(2)?,
                    computer_id: r.get(3)?,
                    address: r.get(4)?,
                    actor: r.get(5)?,
                    detail: super::audit::detail_from(r.get(6)?),
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(super) fn prune_audit(&self, older_than: i64) -> Result<usize, RegistryError> {
        Ok(self
            .db()
            .execute("DELETE FROM audit WHERE at < ?1", [older_than])?)
    }

    pub(super) fn operator_hash(&self, name: &str) -> Result<Option<String>, RegistryError> {
        Ok(self
            .db()
            .query_row(
                "SELECT password_hash FROM operators WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub(super) fn upsert_operator(&self, name: &str, phc: &str) -> Result<bool, RegistryError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let existed = tx
            .query_row(
                "SELECT 1 FROM operators WHERE name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        tx.execute(
            "INSERT INTO operators (name, password_hash, created) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET password_hash = excluded.password_hash",
            params![name, phc, now()],
        )?;
        tx.commit()?;
        Ok(!existed)
    }

    pub(super) fn operators(&self) -> Result<Vec<String>, RegistryError> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT name FROM operators ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(names)
    }

    pub(super) fn insert_api_token(
        &self,
        id: &str,
        hash: &[u8],
        name: &str,
    ) -> Result<(), RegistryError> {
        self.db().execute(
            "INSERT INTO api_tokens (id, token_hash, name, created) VALUES (?1, ?2, ?3, ?4)",
            params![id, hash, name, now()],
        )?;
        Ok(())
    }

    pub(super) fn api_token_name(&self, hash: &[u8]) -> Result<Option<String>, RegistryError> {
        let db = self.db();
        let name: Option<String> = db
            .query_row(
                "SELECT name FROM api_tokens WHERE token_hash = ?1",
                [hash],
                |r| r.get(0),
            )
            .optional()?;
        if name.is_some() {
            db.execute(
                "UPDATE api_tokens SET last_used = ?2 WHERE token_hash = ?1",
                params![hash, now()],
            )?;
        }
        Ok(name)
    }

    pub(super) fn api_tokens(&self) -> Result<Vec<ApiToken>, RegistryError> {
        let db = self.db();
        let mut stmt =
            db.prepare("SELECT id, name, created, last_used FROM api_tokens ORDER BY created, id")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ApiToken {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    created: r.get(2)?,
                    last_used: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub(super) fn revoke_api_token(&self, id: &str) -> Result<bool, RegistryError> {
        Ok(self
            .db()
            .execute("DELETE FROM api_tokens WHERE id = ?1", [id])?
            > 0)
    }
}

/// Adds `column` to `table` in a database made by an older version.
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

#[cfg(test)]
mod tests;
