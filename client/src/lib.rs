//! The telework client for the home PC: log in to an office PC by computer ID, open a local
//! listener, and start the employee's RDP client against it.
//!
//! # Layout
//! - [`connection`]: the whole connection an employee starts, step by step, for the
//!   command and the window alike.
//! - [`session`]: the password login and the resumed tunnel for every local connection.
//! - [`profile`]: the device key and pinned office-PC keys (trust on first use).
//! - [`settings`]: the saved relay and proxy, and recently used computer IDs.
//! - [`resolve`]: the relay, trust, proxy and device name a connection uses, from flags or
//!   settings.
//! - [`launch`]: choosing and starting the RDP client (platform-neutral planning).
//! - [`local_peer`]: who may use the local port (only the OS user who started `telework`).
//! - [`error`]: every failure as a sentence an employee can act on.
//! - [`wake`]: waking an office PC that is asleep (Wake-on-LAN through a PC of its office),
//!   and waiting for it to come online.
//! - `app` (cargo feature `app`, on by default): the desktop window, `telework app`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "app")]
pub mod app;
pub mod connection;
pub mod error;
pub mod launch;
pub mod link;
pub mod local_peer;
mod login_driver;
pub mod profile;
pub mod resolve;
pub mod session;
pub mod settings;
pub mod wake;

pub use error::ClientError;
pub use session::{LoginOptions, Session, Target, TunnelOpener};
