//! Turning one-time codes on: a new secret, shown as a QR code and as text for an
//! authenticator app. `telework-agent totp enable` and `telework-agent setup` both use it, so
//! the picture and the words are the same in both.

use crate::state::{DataDir, StateError};
use crate::totp::TotpSecret;

/// A new secret and what to show IT staff for it.
pub struct Enrolment {
    /// The secret (not saved yet: see [`Enrolment::save`]).
    pub secret: TotpSecret,
    /// The `otpauth://` URI the QR code holds.
    pub uri: String,
    /// The QR code drawn with Unicode half blocks, light on dark, for a terminal.
    pub picture: String,
}

/// Why no enrolment could be made.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// The URI did not fit in a QR code (it always does; said rather than panicking).
    #[error("making the QR code: {0}")]
    Qr(#[from] qrcode::types::QrError),
    /// Saving the secret.
    #[error(transparent)]
    State(#[from] StateError),
}

impl Enrolment {
    /// A fresh secret for the office PC known as `account` (its computer ID).
    ///
    /// # Errors
    /// [`EnrolError::Qr`] if the QR code cannot be drawn.
    pub fn new(account: &str) -> Result<Self, EnrolError> {
        let secret = TotpSecret::generate();
        let uri = secret.otpauth_uri(account);
        let qr = qrcode::QrCode::new(uri.as_bytes())?;
        let picture = qr
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .build();
        Ok(Self {
            secret,
            uri,
            picture,
        })
    }

    /// For the office PC in `data`, named by its computer ID once registered.
    ///
    /// # Errors
    /// As [`Enrolment::new`].
    pub fn for_data_dir(data: &DataDir) -> Result<Self, EnrolError> {
        let account = data
            .settings()
            .map(|s| s.computer_id.to_string())
            .unwrap_or_else(|_| "office-pc".into());
        Self::new(&account)
    }

    /// The QR code, then the secret as text, for IT staff to scan or type.
    pub fn instructions(&self) -> String {
        format!(
            "{}\nScan the code with an authenticator app, or enter this secret by hand:\n  {}\n({})",
            self.picture,
            self.secret.to_base32(),
            self.uri
        )
    }

    /// Saves the secret: from now on every login asks for a code.
    ///
    /// # Errors
    /// If the data dir cannot be written.
    pub fn save(&self, data: &DataDir) -> Result<(), EnrolError> {
        Ok(data.save_totp(Some(&self.secret))?)
    }
}
