//! The cluster's shared state: one heartbeat row per relay node, one presence row per online
//! agent (which node holds it), and requests one node leaves for another (end a session
//! there). On SQLite there is only ever one node; the same tables keep the code one path.

use rusqlite::params;
use telework_protocol::ComputerId;

use super::{blocking, Backend, Registry, RegistryError};

/// A relay node as its heartbeat row describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct NodeRow {
    /// The node's name (`--node-name`), unique in the cluster.
    pub name: String,
    /// Where agents and clients reach it (`--public-addr`, `host:port`).
    pub public_addr: String,
    /// Unix seconds the node started.
    pub started: i64,
    /// Unix milliseconds after which the node counts as gone unless it beats again.
    pub expires_ms: i64,
    /// Whether it is shutting down: it takes no new agents.
    pub draining: bool,
    /// Agents online on it at its last beat.
    pub agents: i64,
    /// Live sessions on it at its last beat.
    pub sessions: i64,
}

impl NodeRow {
    /// Whether the row was renewed in time (`now_ms`: Unix milliseconds).
    pub fn live(&self, now_ms: i64) -> bool {
        self.expires_ms > now_ms
    }
}

/// Where an agent is online.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Presence {
    /// The agent's computer ID.
    pub id: ComputerId,
    /// The node holding its connection.
    pub node: String,
    /// Unix seconds it came online there.
    pub since: i64,
    /// The same moment in Unix milliseconds: which of two rows about one agent is newer.
    pub since_ms: i64,
    /// Its address as that node saw it.
    pub address: String,
    /// `QUIC` or `TLS/TCP`.
    pub transport: String,
    /// The home node it could not reach, when it is online elsewhere for that reason.
    pub away_from: Option<String>,
}

/// One change to the presence table, written in batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// The agent came online on `presence.node`.
    Online(Presence),
    /// The agent went offline from `node` at Unix second `at` (a row another node wrote
    /// since, after the agent moved, stays).
    Offline {
        /// The agent.
        id: ComputerId,
        /// The node it left.
        node: String,
        /// Unix seconds.
        at: i64,
    },
}

/// Something one node asks another to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRequest {
    /// The request's row id.
    pub id: i64,
    /// `end-session`.
    pub kind: String,
    /// What it is about (a session id).
    pub target: String,
}

impl Registry {
    /// Writes `node`'s heartbeat row (replacing its last).
    ///
    /// # Errors
    /// A database error.
    pub async fn heartbeat(&self, node: &NodeRow) -> Result<(), RegistryError> {
        let n = node.clone();
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| {
                    db.db().execute(
                        "INSERT INTO nodes (name, public_addr, started, expires_ms, draining, agents, sessions)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (name) DO UPDATE SET public_addr = excluded.public_addr,
                           started = excluded.started, expires_ms = excluded.expires_ms,
                           draining = excluded.draining, agents = excluded.agents,
                           sessions = excluded.sessions",
                        params![n.name, n.public_addr, n.started, n.expires_ms, n.draining, n.agents, n.sessions],
                    )?;
                    Ok(())
                })
                .await
            }
            Backend::Postgres(pg) => {
                pg.client()
                    .await?
                    .execute(
                        "INSERT INTO nodes (name, public_addr, started, expires_ms, draining, agents, sessions)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (name) DO UPDATE SET public_addr = excluded.public_addr,
                           started = excluded.started, expires_ms = excluded.expires_ms,
                           draining = excluded.draining, agents = excluded.agents,
                           sessions = excluded.sessions",
                        &[&n.name, &n.public_addr, &n.started, &n.expires_ms, &n.draining, &n.agents, &n.sessions],
                    )
                    .await?;
                Ok(())
            }
        }
    }

    /// Every node row, expired ones too, by name.
    ///
    /// # Errors
    /// A database error.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, RegistryError> {
        const SQL: &str =
            "SELECT name, public_addr, started, expires_ms, draining, agents, sessions
                           FROM nodes ORDER BY name";
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| {
                    let db = db.db();
                    let mut stmt = db.prepare(SQL)?;
                    let rows = stmt.query_map([], |r| {
                        Ok(NodeRow {
                            name: r.get(0)?,
                            public_addr: r.get(1)?,
                            started: r.get(2)?,
                            expires_ms: r.get(3)?,
                            draining: r.get(4)?,
                            agents: r.get(5)?,
                            sessions: r.get(6)?,
                        })
                    })?;
                    Ok(rows.collect::<Result<_, _>>()?)
                })
                .await
            }
            Backend::Postgres(pg) => {
                let rows = pg.client().await?.query(SQL, &[]).await?;
                Ok(rows
                    .iter()
                    .map(|r| NodeRow {
                        name: r.get(0),
                        public_addr: r.get(1),
                        started: r.get(2),
                        expires_ms: r.get(3),
                        draining: r.get(4),
                        agents: r.get(5),
                        sessions: r.get(6),
                    })
                    .collect())
            }
        }
    }

    /// Removes `node`'s heartbeat row and every presence and session row naming it, and the
    /// requests left for it: at a clean stop, and at start (a node that was killed left its
    /// rows behind, and requests about sessions of that run, whose ids a new run reuses).
    ///
    /// # Errors
    /// A database error.
    pub async fn forget_node(&self, node: &str, heartbeat_too: bool) -> Result<(), RegistryError> {
        let node = node.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| {
                    let db = db.db();
                    db.execute("DELETE FROM presence WHERE node = ?1", [&node])?;
                    db.execute("DELETE FROM sessions WHERE node = ?1", [&node])?;
                    db.execute("DELETE FROM node_requests WHERE node = ?1", [&node])?;
                    if heartbeat_too {
                        db.execute("DELETE FROM nodes WHERE name = ?1", [&node])?;
                    }
                    Ok(())
                })
                .await
            }
            Backend::Postgres(pg) => {
                let client = pg.client().await?;
                client
                    .execute("DELETE FROM presence WHERE node = $1", &[&node])
                    .await?;
                client
                    .execute("DELETE FROM sessions WHERE node = $1", &[&node])
                    .await?;
                client
                    .execute("DELETE FROM node_requests WHERE node = $1", &[&node])
                    .await?;
                if heartbeat_too {
                    client
                        .execute("DELETE FROM nodes WHERE name = $1", &[&node])
                        .await?;
                }
                Ok(())
            }
        }
    }

    /// Applies presence changes in one transaction, oldest first, and notes each agent's
    /// last-seen time.
    ///
    /// # Errors
    /// A database error.
    pub async fn record_presence(&self, changes: Vec<PresenceChange>) -> Result<(), RegistryError> {
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| sqlite_presence(&mut db.db(), &changes)).await
            }
            Backend::Postgres(pg) => {
                let mut client = pg.client().await?;
                let tx = client.transaction().await?;
                for change in &changes {
                    match change {
                        PresenceChange::Online(p) => {
                            tx.execute(
                                "INSERT INTO presence (id, node, since, address, transport, away_from, since_ms)
                                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                                 ON CONFLICT (id) DO UPDATE SET node = excluded.node,
                                   since = excluded.since, address = excluded.address,
                                   transport = excluded.transport, away_from = excluded.away_from,
                                   since_ms = excluded.since_ms
                                 WHERE presence.since_ms <= excluded.since_ms",
                                &[&p.id.as_str(), &p.node, &p.since, &p.address, &p.transport, &p.away_from, &p.since_ms],
                            )
                            .await?;
                            tx.execute(
                                "UPDATE machines SET last_seen = $2 WHERE id = $1",
                                &[&p.id.as_str(), &p.since],
                            )
                            .await?;
                        }
                        PresenceChange::Offline { id, node, at } => {
                            tx.execute(
                                "DELETE FROM presence WHERE id = $1 AND node = $2",
                                &[&id.as_str(), node],
                            )
                            .await?;
                            tx.execute(
                                "UPDATE machines SET last_seen = $2 WHERE id = $1",
                                &[&id.as_str(), at],
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

    /// Where `id` is online, if anywhere.
    ///
    /// # Errors
    /// A database error.
    pub async fn presence_of(&self, id: &ComputerId) -> Result<Option<Presence>, RegistryError> {
        let found = self.presence_where(Some(id.clone())).await?;
        Ok(found.into_iter().next())
    }

    /// Every presence row, by computer ID.
    ///
    /// # Errors
    /// A database error.
    pub async fn presence(&self) -> Result<Vec<Presence>, RegistryError> {
        self.presence_where(None).await
    }

    async fn presence_where(&self, id: Option<ComputerId>) -> Result<Vec<Presence>, RegistryError> {
        const SQL: &str =
            "SELECT id, node, since, address, transport, away_from, since_ms FROM presence";
        let key = id.as_ref().map(|i| i.as_str().to_owned());
        #[allow(clippy::type_complexity)]
        let rows: Vec<(String, String, i64, String, String, Option<String>, i64)> =
            match &self.backend {
                Backend::Sqlite(db) => {
                    blocking(db, move |db| {
                        let db = db.db();
                        let sql = match key {
                            Some(_) => format!("{SQL} WHERE id = ?1"),
                            None => format!("{SQL} WHERE ?1 IS NULL ORDER BY id"),
                        };
                        let mut stmt = db.prepare(&sql)?;
                        let rows = stmt.query_map([key], |r| {
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
                Backend::Postgres(pg) => {
                    let client = pg.client().await?;
                    let rows = match &key {
                        Some(k) => client.query(&format!("{SQL} WHERE id = $1"), &[k]).await?,
                        None => client.query(&format!("{SQL} ORDER BY id"), &[]).await?,
                    };
                    rows.iter()
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
                        .collect()
                }
            };
        // Rows were written from validated IDs; skip any that a hand edit broke.
        Ok(rows
            .into_iter()
            .filter_map(
                |(id, node, since, address, transport, away_from, since_ms)| {
                    Some(Presence {
                        id: id.parse().ok()?,
                        node,
                        since,
                        since_ms,
                        address,
                        transport,
                        away_from,
                    })
                },
            )
            .collect())
    }

    /// Leaves a request for `node`.
    ///
    /// # Errors
    /// A database error.
    pub async fn request_node(
        &self,
        node: &str,
        kind: &str,
        target: &str,
    ) -> Result<(), RegistryError> {
        let (node, kind, target, at) = (
            node.to_owned(),
            kind.to_owned(),
            target.to_owned(),
            super::now(),
        );
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| {
                    db.db().execute(
                        "INSERT INTO node_requests (node, kind, target, created) VALUES (?1, ?2, ?3, ?4)",
                        params![node, kind, target, at],
                    )?;
                    Ok(())
                })
                .await
            }
            Backend::Postgres(pg) => {
                pg.client()
                    .await?
                    .execute(
                        "INSERT INTO node_requests (node, kind, target, created) VALUES ($1, $2, $3, $4)",
                        &[&node, &kind, &target, &at],
                    )
                    .await?;
                Ok(())
            }
        }
    }

    /// Takes (deletes and returns) the requests left for `node`, oldest first.
    ///
    /// # Errors
    /// A database error.
    pub async fn take_node_requests(&self, node: &str) -> Result<Vec<NodeRequest>, RegistryError> {
        let node = node.to_owned();
        let rows: Vec<(i64, String, String)> = match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| {
                    let db = db.db();
                    let mut stmt = db.prepare(
                        "DELETE FROM node_requests WHERE node = ?1 RETURNING id, kind, target",
                    )?;
                    let rows = stmt.query_map([node], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                    Ok(rows.collect::<Result<_, _>>()?)
                })
                .await?
            }
            Backend::Postgres(pg) => pg
                .client()
                .await?
                .query(
                    "DELETE FROM node_requests WHERE node = $1 RETURNING id, kind, target",
                    &[&node],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect(),
        };
        let mut requests: Vec<NodeRequest> = rows
            .into_iter()
            .map(|(id, kind, target)| NodeRequest { id, kind, target })
            .collect();
        requests.sort_by_key(|r| r.id);
        Ok(requests)
    }
}

fn sqlite_presence(
    db: &mut rusqlite::Connection,
    changes: &[PresenceChange],
) -> Result<(), RegistryError> {
    let tx = db.transaction()?;
    for change in changes {
        match change {
            PresenceChange::Online(p) => {
                tx.execute(
                    "INSERT INTO presence (id, node, since, address, transport, away_from, since_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (id) DO UPDATE SET node = excluded.node, since = excluded.since,
                       address = excluded.address, transport = excluded.transport,
                       away_from = excluded.away_from, since_ms = excluded.since_ms
                     WHERE presence.since_ms <= excluded.since_ms",
                    params![
                        p.id.as_str(),
                        p.node,
                        p.since,
                        p.address,
                        p.transport,
                        p.away_from,
                        p.since_ms
                    ],
                )?;
                tx.execute(
                    "UPDATE machines SET last_seen = ?2 WHERE id = ?1",
                    params![p.id.as_str(), p.since],
                )?;
            }
            PresenceChange::Offline { id, node, at } => {
                tx.execute(
                    "DELETE FROM presence WHERE id = ?1 AND node = ?2",
                    params![id.as_str(), node],
                )?;
                tx.execute(
                    "UPDATE machines SET last_seen = ?2 WHERE id = ?1",
                    params![id.as_str(), at],
                )?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}
