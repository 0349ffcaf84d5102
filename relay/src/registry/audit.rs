//! The audit log's table: one row per thing an operator may later ask about (enrolments,
//! removals, presence, sessions, admin actions, summaries of refused lookups). The typed
//! events and the non-blocking writer are in [`crate::audit`].

use serde::Serialize;

use super::{blocking, dispatch, Backend, Registry, RegistryError};

/// One audit row. Field names are those of `telework-relay audit --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRow {
    /// Row number, assigned on insert (ignored by [`Registry::record_audit`]).
    pub id: i64,
    /// Unix seconds when it happened.
    pub at: i64,
    /// What happened: `enrolled`, `agent_online`, ... (see [`crate::audit::AuditEvent`]).
    pub kind: String,
    /// The machine concerned, if any.
    pub computer_id: Option<String>,
    /// The peer's address (`ip:port`, or an IP for summaries), if any.
    pub address: Option<String>,
    /// Who did it, for actions by people: `cli` or an operator's name.
    pub actor: Option<String>,
    /// The rest, as a JSON object.
    pub detail: serde_json::Value,
}

/// Which rows [`Registry::audit_rows`] returns; every field narrows, `Default` is all rows.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Rows at or after these Unix seconds.
    pub since: Option<i64>,
    /// Rows before these Unix seconds.
    pub until: Option<i64>,
    /// Rows about this machine.
    pub computer_id: Option<String>,
    /// Rows of this kind.
    pub kind: Option<String>,
    /// At most this many (the newest).
    pub limit: Option<usize>,
}

impl AuditFilter {
    /// The limit as SQL takes it; `None` for all rows.
    pub(super) fn sql_limit(&self) -> Option<i64> {
        self.limit.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
    }
}

/// A stored `detail`: JSON, or (a hand-edited row that is not JSON) the text it holds.
pub(super) fn detail_from(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

impl Registry {
    /// Appends one row.
    ///
    /// # Errors
    /// A database error.
    pub async fn record_audit(&self, row: &AuditRow) -> Result<(), RegistryError> {
        self.record_audit_batch(std::slice::from_ref(row)).await
    }

    /// Appends rows in one transaction (the audit writer's batches).
    ///
    /// # Errors
    /// A database error; then none of the rows is stored.
    pub async fn record_audit_batch(&self, rows: &[AuditRow]) -> Result<(), RegistryError> {
        let rows = rows.to_vec();
        dispatch!(self.record_audit_batch(rows))
    }

    /// [`Registry::record_audit_batch`] for the audit writer's own thread, outside the
    /// runtime: SQLite is called directly, PostgreSQL through the runtime it was opened on.
    ///
    /// # Errors
    /// A database error.
    pub fn record_audit_blocking(&self, rows: &[AuditRow]) -> Result<(), RegistryError> {
        match &self.backend {
            Backend::Sqlite(db) => db.record_audit_batch(rows),
            Backend::Postgres(pg) => pg.runtime.block_on(pg.record_audit_batch(rows)),
        }
    }

    /// The rows `filter` selects, newest first.
    ///
    /// # Errors
    /// A database error.
    pub async fn audit_rows(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, RegistryError> {
        let filter = filter.clone();
        dispatch!(self.audit_rows(filter))
    }

    /// Deletes rows from before `older_than` (Unix seconds); returns how many.
    ///
    /// # Errors
    /// A database error.
    pub async fn prune_audit(&self, older_than: i64) -> Result<usize, RegistryError> {
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.prune_audit(older_than)).await,
            Backend::Postgres(pg) => pg.prune_audit(older_than).await,
        }
    }
}
