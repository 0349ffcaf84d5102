//! SQLite-only tests: databases made before migrations were numbered. The tests that both
//! backends pass are in `relay/tests/registry.rs`.

use super::*;
use crate::registry::Registry;

/// The schema exactly as the relay created it before numbered migrations, with every
/// column added since then (`add_column_if_missing`).
const PRE_MIGRATIONS: &str = "
CREATE TABLE machines (id TEXT PRIMARY KEY, public_key BLOB NOT NULL, created INTEGER NOT NULL,
    last_seen INTEGER, disabled INTEGER NOT NULL DEFAULT 0);
CREATE TABLE enrolment_tokens (token_hash BLOB PRIMARY KEY, created INTEGER NOT NULL,
    expires INTEGER NOT NULL, uses_left INTEGER NOT NULL, label TEXT, created_by TEXT);
CREATE TABLE audit (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, kind TEXT NOT NULL,
    computer_id TEXT, address TEXT, actor TEXT, detail TEXT NOT NULL);
CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_computer_at ON audit (computer_id, at);
CREATE TABLE operators (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, created INTEGER NOT NULL);
CREATE TABLE api_tokens (id TEXT PRIMARY KEY, token_hash BLOB NOT NULL UNIQUE, name TEXT NOT NULL,
    created INTEGER NOT NULL, last_used INTEGER);
INSERT INTO machines (id, public_key, created, disabled) VALUES ('pc-1', x'03', 1, 1);
INSERT INTO enrolment_tokens VALUES (x'00112233445566778899', 1, 4000000000, 2, 'old', 'alice');
INSERT INTO audit (at, kind, computer_id, detail) VALUES (5, 'enrolled', 'pc-1', '{}');
INSERT INTO api_tokens (id, token_hash, name, created) VALUES ('abcd0123', x'01', 'script', 1);
";

#[tokio::test]
async fn a_database_made_before_numbered_migrations_opens_and_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch(PRE_MIGRATIONS)
        .unwrap();
    let reg = Registry::open(&path).unwrap();
    assert_eq!(
        reg.schema_version().await.unwrap(),
        crate::registry::SCHEMA_VERSION
    );
    let id: ComputerId = "pc-1".parse().unwrap();
    let m = reg.machine(&id).await.unwrap().unwrap();
    assert!(m.disabled);
    assert_eq!(m.public_key, vec![3]);
    let tokens = reg.enrolment_tokens().await.unwrap();
    assert_eq!(tokens[0].id, "001122334455");
    assert_eq!(tokens[0].label.as_deref(), Some("old"));
    assert_eq!(
        reg.audit_rows(&AuditFilter::default()).await.unwrap().len(),
        1
    );
    assert_eq!(reg.api_tokens().await.unwrap()[0].name, "script");
    assert_eq!(reg.changes().await.unwrap(), 0);
    assert!(reg.remove(&id).await.unwrap());
    assert_eq!(reg.changes().await.unwrap(), 1);
    drop(reg);
    // Opening again applies nothing twice.
    let reg = Registry::open(&path).unwrap();
    assert_eq!(
        reg.schema_version().await.unwrap(),
        crate::registry::SCHEMA_VERSION
    );
    assert_eq!(reg.changes().await.unwrap(), 1);
}

#[tokio::test]
async fn a_database_from_before_the_added_columns_gains_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE machines (id TEXT PRIMARY KEY, public_key BLOB NOT NULL,
                 created INTEGER NOT NULL, last_seen INTEGER);
             INSERT INTO machines (id, public_key, created) VALUES ('pc-1', x'03', 1);
             CREATE TABLE enrolment_tokens (token_hash BLOB PRIMARY KEY, created INTEGER NOT NULL,
                 expires INTEGER NOT NULL, uses_left INTEGER NOT NULL);
             INSERT INTO enrolment_tokens VALUES (x'00112233445566778899', 1, 4000000000, 2);",
        )
        .unwrap();
    let reg = Registry::open(&path).unwrap();
    let id: ComputerId = "pc-1".parse().unwrap();
    assert!(!reg.machine(&id).await.unwrap().unwrap().disabled);
    assert_eq!(reg.enrolment_tokens().await.unwrap()[0].label, None);
    drop(reg);
    let reg = Registry::open(&path).unwrap();
    assert!(reg.revoke_token("001122334455").await.unwrap());
}

#[test]
fn passwords_are_stored_as_argon2id() {
    let db = Sqlite::in_memory().unwrap();
    let phc = crate::registry::hash_password("correct horse battery").unwrap();
    assert!(db.upsert_operator("alice", &phc).unwrap());
    let stored = db.operator_hash("alice").unwrap().unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");
}
