//! The audit log's table: one row per thing an operator may later ask about (enrolments,
//! removals, presence, sessions, admin actions, summaries of refused lookups). The typed
//! events and the non-blocking writer are in [`crate::audit`].

use rusqlite::params;
use serde::Serialize;

use super::{Registry, RegistryError};

pub(super) const AUDIT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    id           INTEGER PRIMARY KEY,
    at           INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    computer_id  TEXT,
    address      TEXT,
    actor        TEXT,
    detail       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE INDEX IF NOT EXISTS audit_computer_at ON audit (computer_id, at);
";

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

impl Registry {
    /// Appends one row.
    ///
    /// # Errors
    /// A database error.
    pub fn record_audit(&self, row: &AuditRow) -> Result<(), RegistryError> {
        self.record_audit_batch(std::slice::from_ref(row))
    }

    /// Appends rows in one transaction (the audit writer's batches).
    ///
    /// # Errors
    /// A database error; then none of the rows is stored.
    pub fn record_audit_batch(&self, rows: &[AuditRow]) -> Result<(), RegistryError> {
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

    /// The rows `filter` selects, newest first.
    ///
    /// # Errors
    /// A database error.
    pub fn audit_rows(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, RegistryError> {
        let db = self.db();
        let mut stmt = db.prepare_cached(
            "SELECT id, at, kind, computer_id, address, actor, detail FROM audit
             WHERE (?1 IS NULL OR at >= ?1) AND (?2 IS NULL OR at < ?2)
               AND (?3 IS NULL OR computer_id = ?3) AND (?4 IS NULL OR kind = ?4)
             ORDER BY at DESC, id DESC LIMIT ?5",
        )?;
        let limit = filter
            .limit
            .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let rows = stmt.query_map(
            params![
                filter.since,
                filter.until,
                filter.computer_id,
                filter.kind,
                limit
            ],
            |r| {
                let detail: String = r.get(6)?;
                Ok(AuditRow {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    kind: r.get(2)?,
                    computer_id: r.get(3)?,
                    address: r.get(4)?,
                    actor: r.get(5)?,
                    // A hand-edited row that is not JSON is shown as the text it holds.
                    detail: serde_json::from_str(&detail)
                        .unwrap_or(serde_json::Value::String(detail)),
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes rows from before `older_than` (Unix seconds); returns how many.
    ///
    /// # Errors
    /// A database error.
    pub fn prune_audit(&self, older_than: i64) -> Result<usize, RegistryError> {
        Ok(self
            .db()
            .execute("DELETE FROM audit WHERE at < ?1", [older_than])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(at: i64, kind: &str, id: Option<&str>) -> AuditRow {
        AuditRow {
            id: 0,
            at,
            kind: kind.into(),
            computer_id: id.map(Into::into),
            address: Some("192.0.2.1:5000".into()),
            actor: None,
            detail: json!({ "n": at }),
        }
    }

    #[test]
    fn rows_come_back_newest_first_and_filtered() {
        let reg = Registry::in_memory().unwrap();
        reg.record_audit(&row(100, "agent_online", Some("pc-1")))
            .unwrap();
        reg.record_audit_batch(&[
            row(200, "agent_offline", Some("pc-1")),
            row(300, "agent_online", Some("pc-2")),
            row(400, "lookups_refused", None),
        ])
        .unwrap();
        let all = reg.audit_rows(&AuditFilter::default()).unwrap();
        let ats: Vec<i64> = all.iter().map(|r| r.at).collect();
        assert_eq!(ats, [400, 300, 200, 100]);
        assert_eq!(all[3].detail, json!({ "n": 100 }));
        assert_eq!(all[3].address.as_deref(), Some("192.0.2.1:5000"));

        let pc1 = AuditFilter {
            computer_id: Some("pc-1".into()),
            ..Default::default()
        };
        assert_eq!(reg.audit_rows(&pc1).unwrap().len(), 2);
        let online = AuditFilter {
            kind: Some("agent_online".into()),
            ..Default::default()
        };
        assert_eq!(reg.audit_rows(&online).unwrap().len(), 2);
        let window = AuditFilter {
            since: Some(200),
            until: Some(400),
            ..Default::default()
        };
        let ats: Vec<i64> = reg
            .audit_rows(&window)
            .unwrap()
            .iter()
            .map(|r| r.at)
            .collect();
        assert_eq!(ats, [300, 200]);
        let newest = AuditFilter {
            limit: Some(1),
            ..Default::default()
        };
        assert_eq!(reg.audit_rows(&newest).unwrap()[0].at, 400);
    }

    #[test]
    fn pruning_deletes_only_older_rows() {
        let reg = Registry::in_memory().unwrap();
        for at in [10, 20, 30] {
            reg.record_audit(&row(at, "enrolled", Some("pc-1")))
                .unwrap();
        }
        assert_eq!(reg.prune_audit(20).unwrap(), 1);
        assert_eq!(reg.prune_audit(20).unwrap(), 0);
        let left: Vec<i64> = reg
            .audit_rows(&AuditFilter::default())
            .unwrap()
            .iter()
            .map(|r| r.at)
            .collect();
        assert_eq!(left, [30, 20]);
    }
}
