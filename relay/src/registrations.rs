//! Drops connected agents whose registration is gone or disabled, and ends their sessions
//! here, whichever process or node (console) removed or disabled it.
//!
//! `telework-relay machines remove` runs as its own process (or another node does it) and
//! deletes the row from the shared registry, bumping its change counter
//! ([`crate::registry::Registry::changes`]) in the same transaction; the serving relay polls
//! that counter, one small query on either backend, every [`REGISTRATION_CHECK`], and tells
//! the agents it no longer knows (`UnknownId`) to go. Every [`FULL_CHECK`] it checks all connected
//! agents regardless, which also covers an agent whose hello raced with the removal.

use std::sync::Arc;
use std::time::Duration;

use telework_protocol::ErrorCode;
use tracing::{info, warn};

use crate::Relay;

/// How often the relay looks for registrations removed by another process.
pub const REGISTRATION_CHECK: Duration = Duration::from_secs(2);

/// How often every connected agent's registration is checked even without a sign of change.
pub const FULL_CHECK: Duration = Duration::from_secs(60);

/// Runs until the relay starts shutting down.
pub async fn watch(relay: Arc<Relay>) {
    let mut tick = tokio::time::interval(REGISTRATION_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = None;
    let mut last_full = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = relay.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let full = last_full.elapsed() >= FULL_CHECK;
        if full {
            last_full = tokio::time::Instant::now();
        }
        match check(&relay, seen, full).await {
            Ok(version) => seen = Some(version),
            Err(e) => warn!(%e, "checking registrations failed"),
        }
    }
}

/// If the registry changed since `seen` (or `full`), disconnects every online agent that is no
/// longer registered (or is disabled) and ends its sessions here. Returns the registry's
/// change counter read before the check.
async fn check(
    relay: &Relay,
    seen: Option<i64>,
    full: bool,
) -> Result<i64, crate::registry::RegistryError> {
    let version = relay.registry.changes().await?;
    if seen == Some(version) && !full {
        return Ok(version);
    }
    // Sessions too: an agent that moved to another node leaves its open tunnels here.
    let mut ids = relay.hub.online_ids();
    for s in relay.sessions.list() {
        if !ids.contains(&s.computer_id) {
            ids.push(s.computer_id);
        }
    }
    for id in ids {
        let (code, session_code) = match relay.registry.machine(&id).await? {
            None => (ErrorCode::UnknownId, ErrorCode::EndedByOperator),
            Some(m) if m.disabled => (ErrorCode::Disabled, ErrorCode::Disabled),
            Some(_) => continue,
        };
        let dropped = relay.hub.disconnect(&id, code);
        let ended = relay.sessions.end_all_of(&id, session_code);
        if dropped || ended > 0 {
            info!(%id, ?code, dropped, ended, "registration removed or disabled: agent disconnected");
        }
    }
    Ok(version)
}
