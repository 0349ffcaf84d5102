//! The PostgreSQL backend: a `deadpool-postgres` pool of `tokio-postgres` connections, for
//! several relay nodes sharing one registry.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use telework_protocol::ComputerId;

use super::migrations::{MIGRATIONS, SCHEMA_MIGRATIONS};
use super::NewToken;
use super::{now, ApiToken, AuditFilter, AuditRow, EnrolmentToken, Machine, RegistryError};

/// Connections a node keeps to the database at most.
const POOL_SIZE: usize = 16;

/// How long a call waits for a connection (to be made, or freed by another call).
const POOL_WAIT: Duration = Duration::from_secs(10);

/// Whether `e` says the server could not be reached (refused, reset), which a restart
/// explains, rather than refused us (authentication, TLS), which waiting does not mend.
fn unreachable(e: &tokio_postgres::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | NotConnected
                    | UnexpectedEof
            );
        }
        source = err.source();
    }
    e.is_closed()
}

/// Serialises migrations between nodes starting together (`pg_advisory_xact_lock`'s key).
const MIGRATION_LOCK: i64 = 0x7465_6c65_776f_726b;

/// The id of an enrolment token: the first 6 bytes of its stored SHA-256, in lower-case hex.
const TOKEN_ID_SQL: &str = "encode(substring(token_hash from 1 for 6), 'hex')";

/// The PostgreSQL registry.
pub(super) struct Postgres {
    pool: Pool,
    /// The runtime the pool's connections run on, for [`super::Registry::record_audit_blocking`].
    pub(super) runtime: tokio::runtime::Handle,
}

impl Postgres {
    /// Connects to `url` (`postgres://user:password@host:port/database`) and migrates.
    pub(super) async fn connect(url: &str) -> Result<Self, RegistryError> {
        let (url, root) = super::postgres_tls::split_root_cert(url);
        let config = tokio_postgres::Config::from_str(&url)
            .map_err(|e| RegistryError::Postgres(format!("bad database URL: {e}")))?;
        let manager = Manager::from_config(
            config,
            super::postgres_tls::connector(root.as_deref())?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .timeouts(Timeouts {
                wait: Some(POOL_WAIT),
                create: Some(POOL_WAIT),
                recycle: Some(POOL_WAIT),
            })
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| RegistryError::Postgres(e.to_string()))?;
        let pg = Self {
            pool,
            runtime: tokio::runtime::Handle::current(),
        };
        pg.migrate().await?;
        Ok(pg)
    }

    /// A pooled connection. While the database cannot be reached (restarting, failing over)
    /// it keeps trying for [`POOL_WAIT`], so that a registration or a lookup waits out a
    /// short outage instead of failing.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, RegistryError> {
        let deadline = tokio::time::Instant::now() + POOL_WAIT;
        let mut pause = Duration::from_millis(100);
        loop {
            match self.pool.get().await {
                Ok(client) => return Ok(client),
                Err(deadpool_postgres::PoolError::Backend(e))
                    if unreachable(&e) && tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::debug!(%e, "the database cannot be reached yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn migrate(&self) -> Result<(), RegistryError> {
        let mut client = self.client().await?;
        client.batch_execute(SCHEMA_MIGRATIONS).await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let applied: i64 = tx
            .query_one(
                "SELECT coalesce(max(version), 0)::BIGINT FROM schema_migrations",
                &[],
            )
            .await?
            .get(0);
        for migration in MIGRATIONS.iter().filter(|m| m.version > applied) {
            tx.batch_execute(migration.postgres).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied) VALUES ($1, $2)",
                &[&migration.version, &now()],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn schema_version(&self) -> Result<i64, RegistryError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT coalesce(max(version), 0)::BIGINT FROM schema_migrations",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    pub(super) async fn register(
        &self,
        id: &ComputerId,
        public_key: &[u8],
    ) -> Result<(), RegistryError> {
        let client = self.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO machines (id, public_key, created) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO NOTHING",
                &[&id.as_str(), &public_key, &now()],
            )
            .await?;
        if inserted == 1 {
            return Ok(());
        }
        let row = client
            .query_opt(
                "SELECT public_key FROM machines WHERE id = $1",
                &[&id.as_str()],
            )
            .await?;
        match row {
            Some(row) if row.get::<_, &[u8]>(0) == public_key => Ok(()),
            Some(_) => Err(RegistryError::IdTaken),
            // Removed between the two statements: try once more.
            None => Box::pin(self.register(id, public_key)).await,
        }
    }

    pub(super) async fn machine(&self, id: &ComputerId) -> Result<Option<Machine>, RegistryError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT public_key, created, last_seen, disabled FROM machines WHERE id = $1",
                &[&id.as_str()],
            )
            .await?;
        Ok(row.map(|r| Machine {
            id: id.clone(),
            public_key: r.get(0),
            created: r.get(1),
            last_seen: r.get(2),
            disabled: r.get(3),
        }))
    }

    pub(super) async fn machines(&self) -> Result<Vec<Machine>, RegistryError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, public_key, created, last_seen, disabled FROM machines ORDER BY id",
                &[],
            )
            .await?;
        // Rows were validated on insert; skip any that a hand edit broke.
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(Machine {
                    id: r.get::<_, &str>(0).parse().ok()?,
                    public_key: r.get(1),
                    created: r.get(2),
                    last_seen: r.get(3),
                    disabled: r.get(4),
                })
            })
            .collect())
    }

    /// Runs `sql` with `id` (and `extra`) and bumps the change counter if it changed a row.
    async fn change_machine(
        &self,
        sql: &str,
        id: &ComputerId,
        extra: Option<bool>,
    ) -> Result<bool, RegistryError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let changed = match extra {
            Some(value) => tx.execute(sql, &[&id.as_str(), &value]).await?,
            None => tx.execute(sql, &[&id.as_str()]).await?,
        };
        if changed > 0 {
            tx.execute(
                "UPDATE registry_changes SET version = version + 1 WHERE id = 1",
                &[],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(changed > 0)
    }

    pub(super) async fn set_disabled(
        &self,
        id: &ComputerId,
        disabled: bool,
    ) -> Result<bool, RegistryError> {
        self.change_machine(
            "UPDATE machines SET disabled = $2 WHERE id = $1",
            id,
            Some(disabled),
        )
        .await
    }

    pub(super) async fn remove(&self, id: &ComputerId) -> Result<bool, RegistryError> {
        self.change_machine("DELETE FROM machines WHERE id = $1", id, None)
            .await
    }

    pub(super) async fn changes(&self) -> Result<i64, RegistryError> {
        let row = self
            .client()
            .await?
            .query_one("SELECT version FROM registry_changes WHERE id = 1", &[])
            .await?;
        Ok(row.get(0))
    }

    pub(super) async fn insert_token(&self, t: &NewToken) -> Result<(), RegistryError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO enrolment_tokens (token_hash, created, expires, uses_left, label, created_by)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &t.hash,
                    &t.created,
                    &t.expires,
                    &i64::from(t.uses),
                    &t.label,
                    &t.created_by,
                ],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn consume_token(&self, hash: &[u8]) -> Result<bool, RegistryError> {
        let changed = self
            .client()
            .await?
            .execute(
                "UPDATE enrolment_tokens SET uses_left = uses_left - 1
                 WHERE token_hash = $1 AND uses_left > 0 AND expires > $2",
                &[&hash, &now()],
            )
            .await?;
        Ok(changed == 1)
    }

    pub(super) async fn enrolment_tokens(&self) -> Result<Vec<EnrolmentToken>, RegistryError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT {TOKEN_ID_SQL}, label, created_by, created, expires, uses_left
                     FROM enrolment_tokens ORDER BY created DESC, token_hash"
                ),
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| EnrolmentToken {
                id: r.get(0),
                label: r.get(1),
                created_by: r.get(2),
                created: r.get(3),
                expires: r.get(4),
                uses_left: super::uses_left(r.get(5)),
            })
            .collect())
    }

    pub(super) async fn revoke_token(&self, id: &str) -> Result<bool, RegistryError> {
        let removed = self
            .client()
            .await?
            .execute(
                &format!("DELETE FROM enrolment_tokens WHERE {TOKEN_ID_SQL} = $1"),
                &[&id],
            )
            .await?;
        Ok(removed > 0)
    }

    pub(super) async fn record_audit_batch(&self, rows: &[AuditRow]) -> Result<(), RegistryError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let insert = tx
            .prepare(
                "INSERT INTO audit (at, kind, computer_id, address, actor, detail)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await?;
        for row in rows {
            tx.execute(
                &insert,
                &[
                    &row.at,
                    &row.kind,
                    &row.computer_id,
                    &row.address,
                    &row.actor,
                    &row.detail.to_string(),
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn audit_rows(
        &self,
        filter: &AuditFilter,
    ) -> Result<Vec<AuditRow>, RegistryError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, at, kind, computer_id, address, actor, detail FROM audit
                 WHERE ($1::BIGINT IS NULL OR at >= $1) AND ($2::BIGINT IS NULL OR at < $2)
                   AND ($3::TEXT IS NULL OR computer_id = $3) AND ($4::TEXT IS NULL OR kind = $4)
                 ORDER BY at DESC, id DESC LIMIT $5",
                &[
                    &filter.since,
                    &filter.until,
                    &filter.computer_id,
                    &filter.kind,
                    &filter.sql_limit(),
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditRow {
                id: r.get(0),
                at: r.get(1),
                kind: r.get(2),
                computer_id: r.get(3),
                address: r.get(4),
                actor: r.get(5),
                detail: super::audit::detail_from(r.get(6)),
            })
            .collect())
    }

    pub(super) async fn prune_audit(&self, older_than: i64) -> Result<usize, RegistryError> {
        let n = self
            .client()
            .await?
            .execute("DELETE FROM audit WHERE at < $1", &[&older_than])
            .await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub(super) async fn operator_hash(&self, name: &str) -> Result<Option<String>, RegistryError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT password_hash FROM operators WHERE name = $1",
                &[&name],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub(super) async fn upsert_operator(
        &self,
        name: &str,
        phc: &str,
    ) -> Result<bool, RegistryError> {
        // xmax is 0 on a row this statement inserted, and not on one it updated.
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO operators (name, password_hash, created) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash
                 RETURNING (xmax = 0)",
                &[&name, &phc, &now()],
            )
            .await?;
        Ok(row.get(0))
    }

    pub(super) async fn operators(&self) -> Result<Vec<String>, RegistryError> {
        let rows = self
            .client()
            .await?
            .query("SELECT name FROM operators ORDER BY name", &[])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub(super) async fn insert_api_token(
        &self,
        id: &str,
        hash: &[u8],
        name: &str,
    ) -> Result<(), RegistryError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO api_tokens (id, token_hash, name, created) VALUES ($1, $2, $3, $4)",
                &[&id, &hash, &name, &now()],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn api_token_name(
        &self,
        hash: &[u8],
    ) -> Result<Option<String>, RegistryError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "UPDATE api_tokens SET last_used = $2 WHERE token_hash = $1 RETURNING name",
                &[&hash, &now()],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub(super) async fn api_tokens(&self) -> Result<Vec<ApiToken>, RegistryError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, name, created, last_used FROM api_tokens ORDER BY created, id",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ApiToken {
                id: r.get(0),
                name: r.get(1),
                created: r.get(2),
                last_used: r.get(3),
            })
            .collect())
    }

    pub(super) async fn revoke_api_token(&self, id: &str) -> Result<bool, RegistryError> {
        let n = self
            .client()
            .await?
            .execute("DELETE FROM api_tokens WHERE id = $1", &[&id])
            .await?;
        Ok(n > 0)
    }
}
