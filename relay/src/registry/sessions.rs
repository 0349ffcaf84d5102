//! The live sessions of every node, so that any node's console can list them and ask the
//! node holding one to end it. Each node writes its own rows in batches, off the connection
//! tasks ([`crate::cluster::SessionWriter`]); byte counts are not stored (they change with
//! every chunk; a node's console shows its own from memory).

use rusqlite::params;

use super::{blocking, Backend, Registry, RegistryError};

/// Most rows [`Registry::cluster_sessions`] returns: a console page and a JSON answer stay
/// bounded however many sessions the cluster holds.
pub const MAX_LISTED_SESSIONS: usize = 10_000;

/// A live session as its node recorded it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionRecord {
    /// The node whose client connection it is.
    pub node: String,
    /// Its id on that node (unique there until the node restarts; the node's rows are
    /// cleared when it starts).
    pub id: u64,
    /// The office PC.
    pub computer_id: String,
    /// The client's address as that node saw it.
    pub client: String,
    /// The fingerprint of the device key the client proved.
    pub device: String,
    /// `QUIC` or `TLS/TCP`.
    pub transport: String,
    /// Unix seconds it started.
    pub started: i64,
}

/// One change to the sessions table, written in batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// A session started.
    Started(SessionRecord),
    /// Session `id` of `node` ended.
    Ended {
        /// Its node.
        node: String,
        /// Its id there.
        id: u64,
    },
}

/// Session ids are counters from 1; the database stores them as signed 64-bit integers.
fn stored(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// A row of the sessions table as both backends read it.
type Row = (String, i64, String, String, String, String, i64);

fn record((node, id, computer_id, client, device, transport, started): Row) -> SessionRecord {
    SessionRecord {
        node,
        id: u64::try_from(id).unwrap_or(0),
        computer_id,
        client,
        device,
        transport,
        started,
    }
}

const COLUMNS: &str = "node, id, computer_id, client, device, transport, started";

impl Registry {
    /// Applies session changes in one transaction, oldest first.
    ///
    /// # Errors
    /// A database error.
    pub async fn record_sessions(&self, changes: Vec<SessionChange>) -> Result<(), RegistryError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| {
                    let mut db = db.db();
                    let tx = db.transaction()?;
                    for change in &changes {
                        match change {
                            SessionChange::Started(s) => {
                                tx.execute(
                                    &format!(
                                        "INSERT OR REPLACE INTO sessions ({COLUMNS})
                                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                                    ),
                                    params![
                                        s.node,
                                        stored(s.id),
                                        s.computer_id,
                                        s.client,
                                        s.device,
                                        s.transport,
                                        s.started
                                    ],
                                )?;
                            }
                            SessionChange::Ended { node, id } => {
                                tx.execute(
                                    "DELETE FROM sessions WHERE node = ?1 AND id = ?2",
                                    params![node, stored(*id)],
                                )?;
                            }
                        }
                    }
                    tx.commit()?;
                    Ok(())
                })
                .await
            }
            Backend::Postgres(pg) => {
                let mut client = pg.client().await?;
                let tx = client.transaction().await?;
                for change in &changes {
                    match change {
                        SessionChange::Started(s) => {
                            tx.execute(
                                &format!(
                                    "INSERT INTO sessions ({COLUMNS})
                                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                                     ON CONFLICT (node, id) DO UPDATE SET
                                       computer_id = excluded.computer_id,
                                       client = excluded.client, device = excluded.device,
                                       transport = excluded.transport,
                                       started = excluded.started"
                                ),
                                &[
                                    &s.node,
                                    &stored(s.id),
                                    &s.computer_id,
                                    &s.client,
                                    &s.device,
                                    &s.transport,
                                    &s.started,
                                ],
                            )
                            .await?;
                        }
                        SessionChange::Ended { node, id } => {
                            tx.execute(
                                "DELETE FROM sessions WHERE node = $1 AND id = $2",
                                &[node, &stored(*id)],
                            )
                            .await?;
                        }
                    }
                }
                tx.commit().await?;
                Ok(())
            }
        }
    }

    /// The recorded sessions of every node but `except` (the caller, which knows its own
    /// better), by node, then oldest first; at most [`MAX_LISTED_SESSIONS`]. Rows of nodes
    /// that are gone may be among them: callers keep those of live nodes.
    ///
    /// # Errors
    /// A database error.
    pub async fn sessions_elsewhere(
        &self,
        except: &str,
    ) -> Result<Vec<SessionRecord>, RegistryError> {
        self.sessions_where(Some(except.to_owned()), None).await
    }

    /// Session `id` of `node`, if it is recorded.
    ///
    /// # Errors
    /// A database error.
    pub async fn cluster_session(
        &self,
        node: &str,
        id: u64,
    ) -> Result<Option<SessionRecord>, RegistryError> {
        let found = self
            .sessions_where(None, Some((node.to_owned(), id)))
            .await?;
        Ok(found.into_iter().next())
    }

    /// The rows of nodes other than `except`, or the one row `key` names.
    async fn sessions_where(
        &self,
        except: Option<String>,
        key: Option<(String, u64)>,
    ) -> Result<Vec<SessionRecord>, RegistryError> {
        let limit = i64::try_from(MAX_LISTED_SESSIONS).unwrap_or(i64::MAX);
        let (node, id) = match key {
            Some((node, id)) => (Some(node), Some(stored(id))),
            None => (None, None),
        };
        let rows: Vec<Row> = match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| {
                    let db = db.db();
                    let mut stmt = db.prepare(&format!(
                        "SELECT {COLUMNS} FROM sessions
                         WHERE (?1 IS NULL OR node <> ?1) AND (?2 IS NULL OR node = ?2)
                           AND (?3 IS NULL OR id = ?3)
                         ORDER BY node, started, id LIMIT ?4"
                    ))?;
                    let rows = stmt.query_map(params![except, node, id, limit], |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                        ))
                    })?;
                    Ok(rows.collect::<Result<_, _>>()?)
                })
                .await?
            }
            Backend::Postgres(pg) => pg
                .client()
                .await?
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM sessions
                         WHERE ($1::TEXT IS NULL OR node <> $1) AND ($2::TEXT IS NULL OR node = $2)
                           AND ($3::BIGINT IS NULL OR id = $3)
                         ORDER BY node, started, id LIMIT $4"
                    ),
                    &[&except, &node, &id, &limit],
                )
                .await?
                .iter()
                .map(|r| {
                    (
                        r.get(0),
                        r.get(1),
                        r.get(2),
                        r.get(3),
                        r.get(4),
                        r.get(5),
                        r.get(6),
                    )
                })
                .collect(),
        };
        Ok(rows.into_iter().map(record).collect())
    }
}
