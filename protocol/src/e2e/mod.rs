//! The end-to-end layer between a client and an agent, inside a tunnel the relay splices.
//!
//! 1. **Login** ([`pake`]): OPAQUE (RFC 9807) over the connection password. The agent holds
//!    only an OPAQUE registration record; the relay sees OPAQUE messages, which reveal nothing
//!    that allows an offline guess. OPAQUE's 3DH step gives key confirmation both ways.
//! 2. **Keys** ([`keys`]): HKDF turns the OPAQUE session key into directional record keys and a
//!    resumption secret.
//! 3. **Resume** ([`resume`]): every further tunnel of the same session authenticates with the
//!    resumption secret and fresh nonces from both sides, so no second password prompt and no
//!    replay.
//!    The password-stretching function is in [`stretch`].
//! 4. **Records** ([`record`]): AES-256-GCM records with counter nonces carry desktop bytes,
//!    an authenticated end-of-stream, and control messages ([`messages::AgentNotice`]).

pub mod identity;
pub mod keys;
pub mod messages;
pub mod pake;
pub mod record;
pub mod resume;
pub mod stretch;
