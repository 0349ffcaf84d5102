//! Setting the connection password on the office PC, as `set-password` and `setup` do: a new
//! OPAQUE record under the PC's identity key (a first password makes the key).

use std::path::PathBuf;

use telework_protocol::e2e::pake::PasswordRecord;

use crate::state::{DataDir, StateError};

/// Shortest connection password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;

/// What setting the password did.
#[derive(Debug, Clone)]
pub struct PasswordSet {
    /// The fingerprint employees' clients show for this PC's identity key.
    pub fingerprint: String,
    /// The identity key was already there and is kept, so employees' pins hold.
    pub key_kept: bool,
}

/// Why the password was not set.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Too short.
    #[error("the password needs at least {MIN_PASSWORD_LEN} characters")]
    TooShort,
    /// The stored record is damaged, so the identity key cannot be kept.
    #[error(
        "the stored password record {} is damaged ({detail}), so this PC's identity key \
         cannot be kept; nothing was changed. To start over with a new identity key, run \
         'telework-agent rotate-key' (every employee then has to run 'telework forget ID' \
         after you confirm it to them)", path.display()
    )]
    Damaged {
        /// The record file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The data dir.
    #[error(transparent)]
    State(#[from] StateError),
    /// Making the record.
    #[error("making the password record: {0}")]
    Record(String),
}

/// Checks a new password before anything is written.
///
/// # Errors
/// [`PasswordError::TooShort`].
pub fn check(password: &str) -> Result<(), PasswordError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(PasswordError::TooShort);
    }
    Ok(())
}

/// Looks at the stored record before a password is asked for, so that a damaged one is
/// reported straight away.
///
/// # Errors
/// [`PasswordError::Damaged`], or the data dir.
pub fn check_record(data: &DataDir) -> Result<(), PasswordError> {
    old_record(data).map(|_| ())
}

fn old_record(data: &DataDir) -> Result<Option<PasswordRecord>, PasswordError> {
    match data.password() {
        Ok(old) => Ok(old),
        Err(StateError::Damaged { path, detail }) => Err(PasswordError::Damaged { path, detail }),
        Err(e) => Err(e.into()),
    }
}

/// Sets `password` under the PC's identity key (kept if there is one).
///
/// # Errors
/// [`PasswordError`]: too short, a damaged old record, or the data dir.
pub fn set(data: &DataDir, password: &str) -> Result<PasswordSet, PasswordError> {
    check(password)?;
    let old = old_record(data)?;
    let record = match &old {
        Some(old) => old.change_password(password.as_bytes()),
        None => PasswordRecord::create(password.as_bytes()),
    }
    .map_err(|e| PasswordError::Record(e.to_string()))?;
    data.save_password(&record)?;
    Ok(PasswordSet {
        fingerprint: fingerprint(&record)?,
        key_kept: old.is_some(),
    })
}

/// The fingerprint employees' clients show for the identity key in `record`.
///
/// # Errors
/// [`PasswordError::Record`] if the record holds no valid key.
pub fn fingerprint(record: &PasswordRecord) -> Result<String, PasswordError> {
    let key = record
        .agent_public_key()
        .map_err(|e| PasswordError::Record(format!("reading the new record: {e}")))?;
    Ok(telework_protocol::proof::key_fingerprint(&key))
}
