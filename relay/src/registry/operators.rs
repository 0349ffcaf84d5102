//! Operator accounts for the admin console and API tokens for scripts.
//!
//! Passwords are stored as Argon2id PHC strings; API tokens are shown once and only their
//! SHA-256 is kept, beside a short non-secret id that lists and revokes them.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use rusqlite::{params, OptionalExtension};

use super::{now, token_hash, Registry, RegistryError};

pub(super) const OPERATORS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS operators (
    name           TEXT PRIMARY KEY,
    password_hash  TEXT NOT NULL,
    created        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_tokens (
    id          TEXT PRIMARY KEY,
    token_hash  BLOB NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    created     INTEGER NOT NULL,
    last_used   INTEGER
);
";

/// The shortest password `add-user` accepts.
pub const MIN_PASSWORD_LEN: usize = 12;

/// An operator name: 1–32 of `[A-Za-z0-9._-]`, so it prints safely in logs and pages.
pub fn valid_operator_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Hashes `password` as an Argon2id PHC string with a fresh salt.
///
/// # Errors
/// Only if Argon2 rejects its own parameters.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt: [u8; 16] = rand::random();
    let hash: PasswordHash =
        Argon2::default().hash_password_with_salt(password.as_bytes(), &salt)?;
    Ok(hash.to_string())
}

/// A PHC string of a password nobody knows, verified against when the user name is unknown
/// so that a wrong name costs as much time as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY
        .get_or_init(|| hash_password(&hex::encode(rand::random::<[u8; 16]>())).unwrap_or_default())
}

/// Whether `password` matches the PHC string `phc`.
fn password_matches(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// An API token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiToken {
    /// Short non-secret id (revoke by it).
    pub id: String,
    /// The name it was given.
    pub name: String,
    /// Unix seconds of creation.
    pub created: i64,
    /// Unix seconds of last use, if ever.
    pub last_used: Option<i64>,
}

impl Registry {
    /// Adds operator `name` with `password`, or replaces the password of an existing one;
    /// returns whether the operator is new.
    ///
    /// # Errors
    /// A database error, or [`RegistryError::Invalid`] for a bad name or short password.
    pub fn set_operator(&self, name: &str, password: &str) -> Result<bool, RegistryError> {
        if !valid_operator_name(name) {
            return Err(RegistryError::Invalid(
                "an operator name is 1 to 32 letters, digits, '.', '_' or '-'",
            ));
        }
        if password.chars().count() < MIN_PASSWORD_LEN {
            return Err(RegistryError::Invalid(
                "the password is too short: use at least 12 characters",
            ));
        }
        let phc = hash_password(password)
            .map_err(|_| RegistryError::Invalid("cannot hash the password"))?;
        let db = self.db();
        let existed = db
            .query_row(
                "SELECT 1 FROM operators WHERE name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        db.execute(
            "INSERT INTO operators (name, password_hash, created) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO UPDATE SET password_hash = excluded.password_hash",
            params![name, phc, now()],
        )?;
        Ok(!existed)
    }

    /// Whether `name` and `password` belong to an operator. Takes an Argon2 verification's
    /// time whether or not the name exists: call it off the async threads.
    ///
    /// # Errors
    /// A database error.
    pub fn check_operator(&self, name: &str, password: &str) -> Result<bool, RegistryError> {
        let stored: Option<String> = self
            .db()
            .query_row(
                "SELECT password_hash FROM operators WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        match stored {
            Some(phc) => Ok(password_matches(&phc, password)),
            None => {
                let _ = password_matches(decoy_hash(), password);
                Ok(false)
            }
        }
    }

    /// The operator names, sorted.
    ///
    /// # Errors
    /// A database error.
    pub fn operators(&self) -> Result<Vec<String>, RegistryError> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT name FROM operators ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(names)
    }

    /// Creates an API token called `name`; returns its short id and the secret, which is
    /// not kept (only its SHA-256).
    ///
    /// # Errors
    /// A database error, or [`RegistryError::Invalid`] for a bad name.
    pub fn create_api_token(&self, name: &str) -> Result<(String, String), RegistryError> {
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(RegistryError::Invalid(
                "a token name is 1 to 64 printable characters",
            ));
        }
        let id = hex::encode(rand::random::<[u8; 4]>());
        let secret = format!("twa1-{}", hex::encode(rand::random::<[u8; 32]>()));
        self.db().execute(
            "INSERT INTO api_tokens (id, token_hash, name, created) VALUES (?1, ?2, ?3, ?4)",
            params![id, token_hash(&secret), name, now()],
        )?;
        Ok((id, secret))
    }

    /// The name of the API token `secret`, noting its use; `None` if it is unknown or
    /// revoked.
    ///
    /// # Errors
    /// A database error.
    pub fn api_token_name(&self, secret: &str) -> Result<Option<String>, RegistryError> {
        let db = self.db();
        let hash = token_hash(secret);
        let name: Option<String> = db
            .query_row(
                "SELECT name FROM api_tokens WHERE token_hash = ?1",
                [&hash],
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

    /// Every API token, oldest first.
    ///
    /// # Errors
    /// A database error.
    pub fn api_tokens(&self) -> Result<Vec<ApiToken>, RegistryError> {
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

    /// Revokes the API token with short id `id`; returns whether there was one.
    ///
    /// # Errors
    /// A database error.
    pub fn revoke_api_token(&self, id: &str) -> Result<bool, RegistryError> {
        Ok(self
            .db()
            .execute("DELETE FROM api_tokens WHERE id = ?1", [id])?
            > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_sign_in_with_their_password_only() {
        let reg = Registry::in_memory().unwrap();
        assert!(reg.set_operator("alice", "correct horse battery").unwrap());
        assert!(reg
            .check_operator("alice", "correct horse battery")
            .unwrap());
        assert!(!reg.check_operator("alice", "wrong horse battery").unwrap());
        assert!(!reg.check_operator("bob", "correct horse battery").unwrap());
        assert!(!reg.set_operator("alice", "another long password").unwrap());
        assert!(reg
            .check_operator("alice", "another long password")
            .unwrap());
        assert!(matches!(
            reg.set_operator("alice", "short"),
            Err(RegistryError::Invalid(_))
        ));
        assert!(matches!(
            reg.set_operator("al ice", "correct horse battery"),
            Err(RegistryError::Invalid(_))
        ));
        assert_eq!(reg.operators().unwrap(), vec!["alice".to_owned()]);
        let stored: String = reg
            .db()
            .query_row("SELECT password_hash FROM operators", [], |r| r.get(0))
            .unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
    }

    #[test]
    fn api_tokens_keep_only_a_hash_and_can_be_revoked() {
        let reg = Registry::in_memory().unwrap();
        let (id, secret) = reg.create_api_token("nightly script").unwrap();
        assert_eq!(
            reg.api_token_name(&secret).unwrap().as_deref(),
            Some("nightly script")
        );
        assert_eq!(reg.api_token_name("twa1-nope").unwrap(), None);
        let listed = reg.api_tokens().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, id);
        assert!(listed[0].last_used.is_some());
        assert!(reg.revoke_api_token(&id).unwrap());
        assert_eq!(reg.api_token_name(&secret).unwrap(), None);
    }
}
