//! Enrolment tokens as the console lists them: a short non-secret id (from the stored hash),
//! an optional label, uses left and expiry; never the secret.

use super::ID_HEX_LEN;
use super::{blocking, dispatch, now, token_hash, Backend, NewToken, Registry, RegistryError};

/// One enrolment token, as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EnrolmentToken {
    /// Short non-secret id (revoke by it).
    pub id: String,
    /// What the operator called it, if anything.
    pub label: Option<String>,
    /// Who made it (an operator's name), if made in the console.
    pub created_by: Option<String>,
    /// Unix seconds of creation.
    pub created: i64,
    /// Unix seconds it expires.
    pub expires: i64,
    /// Registrations it still allows.
    pub uses_left: u32,
}

impl EnrolmentToken {
    /// Whether it still lets a machine register.
    pub fn usable(&self) -> bool {
        self.uses_left > 0 && self.expires > now()
    }
}

impl Registry {
    /// Creates an enrolment token like [`Registry::create_token`], with a label and its
    /// maker; returns the token (shown once) and its id.
    ///
    /// # Errors
    /// A database error.
    pub async fn create_labelled_token(
        &self,
        uses: u32,
        ttl_secs: u64,
        label: Option<&str>,
        created_by: Option<&str>,
    ) -> Result<(String, String), RegistryError> {
        let token = format!("tw1-{}", hex::encode(rand::random::<[u8; 16]>()));
        let created = now();
        let new = NewToken {
            hash: token_hash(&token),
            created,
            expires: created.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX)),
            uses,
            label: label.map(str::to_owned),
            created_by: created_by.map(str::to_owned),
        };
        let id = hex::encode(&new.hash[..6]);
        dispatch!(self.insert_token(new))?;
        Ok((token, id))
    }

    /// Every enrolment token, newest first (used-up and expired ones too).
    ///
    /// # Errors
    /// A database error.
    pub async fn enrolment_tokens(&self) -> Result<Vec<EnrolmentToken>, RegistryError> {
        dispatch!(self.enrolment_tokens())
    }

    /// Revokes (deletes) the enrolment token with id `id`; returns whether there was one.
    ///
    /// # Errors
    /// A database error.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, RegistryError> {
        if id.len() != ID_HEX_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(false);
        }
        let id = id.to_ascii_lowercase();
        dispatch!(self.revoke_token(id))
    }
}
