//! Operator accounts for the admin console and API tokens for scripts.
//!
//! Passwords are stored as Argon2id PHC strings; API tokens are shown once and only their
//! SHA-256 is kept, beside a short non-secret id that lists and revokes them.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;

use super::{blocking, dispatch, token_hash, Backend, Registry, RegistryError};

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

/// Runs Argon2 work off the async threads.
async fn argon2<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RegistryError::Task(e.to_string()))
}

impl Registry {
    /// Adds operator `name` with `password`, or replaces the password of an existing one;
    /// returns whether the operator is new.
    ///
    /// # Errors
    /// A database error, or [`RegistryError::Invalid`] for a bad name or short password.
    pub async fn set_operator(&self, name: &str, password: &str) -> Result<bool, RegistryError> {
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
        let password = password.to_owned();
        let phc = argon2(move || hash_password(&password))
            .await?
            .map_err(|_| RegistryError::Invalid("cannot hash the password"))?;
        let name = name.to_owned();
        dispatch!(self.upsert_operator(name, phc))
    }

    /// Whether `name` and `password` belong to an operator. Takes an Argon2 verification's
    /// time (on a blocking thread) whether or not the name exists.
    ///
    /// # Errors
    /// A database error.
    pub async fn check_operator(&self, name: &str, password: &str) -> Result<bool, RegistryError> {
        let name = name.to_owned();
        let stored = dispatch!(self.operator_hash(name))?;
        let password = password.to_owned();
        argon2(move || match stored {
            Some(phc) => password_matches(&phc, &password),
            None => {
                let _ = password_matches(decoy_hash(), &password);
                false
            }
        })
        .await
    }

    /// The operator names, sorted.
    ///
    /// # Errors
    /// A database error.
    pub async fn operators(&self) -> Result<Vec<String>, RegistryError> {
        dispatch!(self.operators())
    }

    /// Creates an API token called `name`; returns its short id and the secret, which is
    /// not kept (only its SHA-256).
    ///
    /// # Errors
    /// A database error, or [`RegistryError::Invalid`] for a bad name.
    pub async fn create_api_token(&self, name: &str) -> Result<(String, String), RegistryError> {
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(RegistryError::Invalid(
                "a token name is 1 to 64 printable characters",
            ));
        }
        let id = hex::encode(rand::random::<[u8; 4]>());
        let secret = format!("twa1-{}", hex::encode(rand::random::<[u8; 32]>()));
        let (key, hash, name) = (id.clone(), token_hash(&secret), name.to_owned());
        dispatch!(self.insert_api_token(key, hash, name))?;
        Ok((id, secret))
    }

    /// The name of the API token `secret`, noting its use; `None` if it is unknown or
    /// revoked.
    ///
    /// # Errors
    /// A database error.
    pub async fn api_token_name(&self, secret: &str) -> Result<Option<String>, RegistryError> {
        let hash = token_hash(secret);
        dispatch!(self.api_token_name(hash))
    }

    /// Every API token, oldest first.
    ///
    /// # Errors
    /// A database error.
    pub async fn api_tokens(&self) -> Result<Vec<ApiToken>, RegistryError> {
        dispatch!(self.api_tokens())
    }

    /// Revokes the API token with short id `id`; returns whether there was one.
    ///
    /// # Errors
    /// A database error.
    pub async fn revoke_api_token(&self, id: &str) -> Result<bool, RegistryError> {
        let id = id.to_owned();
        dispatch!(self.revoke_api_token(id))
    }
}
