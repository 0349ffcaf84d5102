//! The running agent's side: telling the relay which PCs it can wake when the list changes,
//! and answering the relay's wake requests within the limits of [`super`].

use std::sync::Arc;
use std::time::Instant;

use telework_protocol::ComputerId;
use tracing::{info, warn};

use super::Decision;
use crate::Agent;

/// What the relay was last told, so that the list is sent again only when it changes.
#[derive(Debug, Default)]
pub(crate) struct Advertised {
    sent: Option<Vec<ComputerId>>,
    /// The last read error, logged once rather than every check.
    error: Option<String>,
}

impl Advertised {
    /// The IDs to send the relay now, if they differ from what it was told. A damaged file
    /// advertises nothing (and the agent wakes nothing), so that a bad edit fails closed; an
    /// empty list is not sent to a relay that was never told one.
    pub(crate) fn changed(&mut self, agent: &Agent) -> Option<Vec<ComputerId>> {
        let ids = match agent.data.wake_list() {
            Ok(list) => {
                self.error = None;
                list.ids()
            }
            Err(e) => {
                let e = e.to_string();
                if self.error.as_ref() != Some(&e) {
                    warn!(error = %e, "cannot read the wake list; waking no PC until it is fixed");
                    self.error = Some(e);
                }
                Vec::new()
            }
        };
        let same = match &self.sent {
            Some(sent) => *sent == ids,
            None => ids.is_empty(),
        };
        if same {
            return None;
        }
        info!(
            pcs = ids.len(),
            "telling the relay which PCs this one can wake"
        );
        self.sent = Some(ids.clone());
        Some(ids)
    }
}

/// The relay asks for a wake of `id`: sends a burst of magic packets to the address IT staff
/// configured for it, unless `id` is not on the list or had a burst within the self-limit.
/// The burst runs on its own task, so the control stream is not held up.
pub(crate) fn on_request(agent: &Arc<Agent>, id: ComputerId) {
    let list = match agent.data.wake_list() {
        Ok(list) => list,
        Err(e) => {
            warn!(%id, %e, "asked to wake a PC, but the wake list cannot be read; ignored");
            return;
        }
    };
    let decision = {
        let mut limit = agent.wake_limit.lock().unwrap_or_else(|e| e.into_inner());
        super::decide(&list, &mut limit, &id, Instant::now())
    };
    let target = match decision {
        Decision::Send(target) => target,
        Decision::NotListed => {
            return warn!(%id, "the relay asked to wake a PC that is not on this PC's wake list; ignored");
        }
        Decision::TooSoon(wait) => {
            return info!(%id, wait_ms = wait.as_millis() as u64, "asked to wake a PC again too soon; ignored");
        }
    };
    agent.tasks.spawn(async move {
        match super::send::send_burst(target.mac, target.broadcast, target.port).await {
            Ok(()) => info!(
                %id,
                mac = %target.mac,
                to = %format!("{}:{}", target.broadcast, target.port),
                "sent the Wake-on-LAN magic packet"
            ),
            Err(e) => warn!(%id, %e, "cannot send the Wake-on-LAN magic packet"),
        }
    });
}
