//! The telework wire protocol: everything the relay, the agent and the client agree on.
//!
//! The core is pure (no IO, no clock):
//! - [`ids`]: computer IDs, tunnel tickets, session ids.
//! - [`frame`]: length-prefixed, size-capped frames; decoders treat "incomplete" as normal.
//! - [`messages`]: typed control messages, one enum per direction, and the ALPN role names.
//! - [`error_code`]: refusal reasons and the sentence a person reads for each.
//! - [`proof`]: the agent's machine-key proof, bound to its TLS session.
//! - [`fingerprint`]: relay certificate pins.
//! - [`http_connect`]: the CONNECT request to a web proxy and a bounded parser for its answer.
//! - [`private_file`]: owner-only files for keys and secrets.
//! - [`handshake`]: the login and resumption as sans-IO state machines over [`e2e`].
//! - [`e2e`]: the client↔agent layer the relay cannot read: OPAQUE login, key schedule,
//!   resumption, AEAD records.
//!
//! The tokio transports the three programs share live in the `telework-net` crate.
// Unsafe code is refused everywhere but one reviewed cast in `e2e::stretch`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod e2e;
pub mod error_code;
pub mod fingerprint;
pub mod frame;
pub mod handshake;
pub mod http_connect;
pub mod ids;
pub mod messages;
pub mod private_file;
pub mod proof;

pub use error_code::ErrorCode;
pub use fingerprint::CertFingerprint;
pub use ids::{ComputerId, SessionId, Ticket};
