//! Enrolment tokens as the console lists them: a short non-secret id (from the stored hash),
//! an optional label, uses left and expiry; never the secret.

use rusqlite::params;

use super::{now, Registry, RegistryError};

/// The id of a token: the first 6 bytes of its stored SHA-256, in lower-case hex.
const ID_SQL: &str = "lower(hex(substr(token_hash, 1, 6)))";

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
    pub fn create_labelled_token(
        &self,
        uses: u32,
        ttl_secs: u64,
        label: Option<&str>,
        created_by: Option<&str>,
    ) -> Result<(String, String), RegistryError> {
        let token = self.create_token(uses, ttl_secs)?;
        let hash = super::token_hash(&token);
        let db = self.db();
        db.execute(
            "UPDATE enrolment_tokens SET label = ?2, created_by = ?3 WHERE token_hash = ?1",
            params![hash, label, created_by],
        )?;
        Ok((token, hex::encode(&hash[..6])))
    }

    /// Every enrolment token, newest first (used-up and expired ones too).
    ///
    /// # Errors
    /// A database error.
    pub fn enrolment_tokens(&self) -> Result<Vec<EnrolmentToken>, RegistryError> {
        let db = self.db();
        let mut stmt = db.prepare(&format!(
            "SELECT {ID_SQL}, label, created_by, created, expires, uses_left
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
                    uses_left: r.get::<_, i64>(5)?.clamp(0, i64::from(u32::MAX)) as u32,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Revokes (deletes) the enrolment token with id `id`; returns whether there was one.
    ///
    /// # Errors
    /// A database error.
    pub fn revoke_token(&self, id: &str) -> Result<bool, RegistryError> {
        if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(false);
        }
        let removed = self.db().execute(
            &format!("DELETE FROM enrolment_tokens WHERE {ID_SQL} = ?1"),
            [id.to_ascii_lowercase()],
        )?;
        Ok(removed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_listed_without_secrets_and_revoked_by_id() {
        let reg = Registry::in_memory().unwrap();
        let (token, id) = reg
            .create_labelled_token(3, 3600, Some("tanaka's PC"), Some("alice"))
            .unwrap();
        let old = reg.create_token(1, 3600).unwrap();
        let listed = reg.enrolment_tokens().unwrap();
        assert_eq!(listed.len(), 2);
        let mine = listed.iter().find(|t| t.id == id).unwrap();
        assert_eq!(mine.label.as_deref(), Some("tanaka's PC"));
        assert_eq!(mine.created_by.as_deref(), Some("alice"));
        assert_eq!(mine.uses_left, 3);
        assert!(mine.usable());
        assert!(!format!("{listed:?}").contains(&token[4..]));
        reg.consume_token(&token).unwrap();
        assert!(reg.revoke_token(&id).unwrap());
        assert!(!reg.revoke_token(&id).unwrap());
        assert!(!reg.revoke_token("'; DROP TABLE").unwrap());
        assert!(matches!(
            reg.consume_token(&token),
            Err(RegistryError::BadToken)
        ));
        reg.consume_token(&old).unwrap();
    }

    #[test]
    fn an_old_database_gains_the_new_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        {
            let db = rusqlite::Connection::open(&path).unwrap();
            db.execute_batch(
                "CREATE TABLE enrolment_tokens (token_hash BLOB PRIMARY KEY, created INTEGER NOT NULL,
                 expires INTEGER NOT NULL, uses_left INTEGER NOT NULL);
                 INSERT INTO enrolment_tokens VALUES (x'00112233445566778899', 1, 4000000000, 2);",
            )
            .unwrap();
        }
        let reg = Registry::open(&path).unwrap();
        let listed = reg.enrolment_tokens().unwrap();
        assert_eq!(listed[0].id, "001122334455");
        assert_eq!(listed[0].label, None);
        drop(reg);
        // Opening again finds the columns there and adds nothing.
        let reg = Registry::open(&path).unwrap();
        assert!(reg.revoke_token("001122334455").unwrap());
    }
}
