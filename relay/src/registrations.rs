//! Drops connected agents whose registration is gone or disabled.
//!
//! `telework-relay machines remove` runs as its own process and deletes the row from the
//! shared SQLite registry; the serving relay notices through SQLite's `data_version` (which
//! changes when another connection commits) within [`REGISTRATION_CHECK`], and tells the
//! agents it no longer knows (`UnknownId`) to go. Every [`FULL_CHECK`] it checks all connected
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
        let relay2 = relay.clone();
        let full = last_full.elapsed() >= FULL_CHECK;
        if full {
            last_full = tokio::time::Instant::now();
        }
        // SQLite calls block; a relay with many agents makes one per agent here.
        let checked = tokio::task::spawn_blocking(move || check(&relay2, seen, full)).await;
        match checked {
            Ok(Ok(version)) => seen = Some(version),
            Ok(Err(e)) => warn!(%e, "checking registrations failed"),
            Err(e) => warn!(%e, "checking registrations failed"),
        }
    }
}

/// If the registry changed since `seen` (or `full`), disconnects every online agent that is no
/// longer registered. Returns the registry's change counter read before the check.
fn check(
    relay: &Relay,
    seen: Option<i64>,
    full: bool,
) -> Result<i64, crate::registry::RegistryError> {
    let version = relay.registry.outside_changes()?;
    if seen == Some(version) && !full {
        return Ok(version);
    }
    for id in relay.hub.online_ids() {
        let code = match relay.registry.machine(&id)? {
            None => ErrorCode::UnknownId,
            Some(m) if m.disabled => ErrorCode::Disabled,
            Some(_) => continue,
        };
        if relay.hub.disconnect(&id, code) {
            info!(%id, ?code, "registration removed or disabled: agent disconnected");
        }
    }
    Ok(version)
}
