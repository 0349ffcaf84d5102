//! Wake-on-LAN requests: a client asks for an office PC that is asleep; the relay asks the
//! agents that said they can wake it (see [`wakers`]), answers the client, and keeps the
//! stream open until the PC is online.
//!
//! The asker cannot log in (the PC is asleep), so every request is unauthenticated work:
//! it is charged to the source address like a computer-ID lookup, a request for a PC nobody
//! can wake is charged as a failed lookup, each PC is woken at most once per
//! [`window::WAKE_WINDOW`], and every request that gets that far is written to the audit log
//! (address, PC, wakers, result). The answer never names the waker, which would tell a
//! stranger another valid computer ID.

pub mod wakers;
pub mod window;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use telework_net::framed::Framed;
use telework_net::transport::Stream;
use telework_protocol::messages::{
    ClientToRelay, RelayToAgent, RelayToClient, WakeAnswer, MAX_WAKE_WAIT_SECS,
    WAKE_PROTOCOL_VERSION,
};
use telework_protocol::{ComputerId, ErrorCode};
use tracing::{debug, info};

use crate::audit::{AuditEvent, Refusal};
use crate::metrics::LimitKind;
use crate::Relay;

/// How often a waiting request looks whether the PC came online.
const ONLINE_CHECK: Duration = Duration::from_millis(500);

/// Every this many checks, a waiting request also looks at the cluster's presence rows.
const CLUSTER_CHECK_EVERY: u32 = 4;

/// The `node_requests` kind that asks another node to pass a wake to its wakers.
pub const NODE_REQUEST: &str = "wake";

/// Another node asked (through the registry) for a wake of `id`: this node asks its own
/// wakers of it, if it has any. The asking node applied the address budget and the per-PC
/// window; the wakers still limit themselves.
pub fn from_other_node(relay: &Relay, id: &ComputerId) -> usize {
    let asked = relay
        .wake
        .wakers
        .of(id)
        .into_iter()
        .filter(|w| relay.hub.tell(w, RelayToAgent::Wake(id.clone())))
        .count();
    info!(%id, asked, "wake asked for by another node");
    asked
}

/// What the relay stores per node about waking: the index of wakers and the per-PC window.
#[derive(Default)]
pub struct WakeState {
    /// Who can wake whom.
    pub wakers: wakers::Wakers,
    /// When each PC was last woken.
    pub window: std::sync::Mutex<window::WakeWindow>,
}

/// Serves one wake request on a client's stream, from `peer`.
pub(crate) async fn serve(
    relay: &Arc<Relay>,
    mut framed: Framed<Stream>,
    peer: SocketAddr,
    version: u16,
    id: ComputerId,
) {
    let ip = peer.ip();
    let now = Instant::now();
    if version < WAKE_PROTOCOL_VERSION {
        let _ = framed
            .write(&RelayToClient::Error(ErrorCode::ProtocolViolation))
            .await;
        return;
    }
    if !(relay.limiters.failures.has_token(ip, now) && relay.limiters.lookups.take(ip, now)) {
        info!("wake request rate limited (address)");
        relay.audit.lookup_refused(ip, Refusal::RateLimited);
        relay.metrics.limit_refused(LimitKind::Lookups);
        let _ = framed
            .write(&RelayToClient::Error(ErrorCode::RateLimited))
            .await;
        return;
    }
    if relay.hub.is_online(&id) || crate::client_conn::elsewhere(relay, &id).await.is_some() {
        let _ = framed
            .write(&RelayToClient::Wake(WakeAnswer::AlreadyOnline))
            .await;
        return;
    }
    let wakers = relay.wake.wakers.of(&id);
    let record = |wakers: &[String], result: &str| {
        relay.audit.record(AuditEvent::WakeRequested {
            id: id.clone(),
            client: peer,
            wakers: wakers.to_vec(),
            result: result.to_owned(),
        });
    };
    let no_waker = || {
        // As a lookup of an offline or unknown ID: probing for wakeable IDs costs the same.
        relay.limiters.failures.take(ip, now);
        info!("wake request: no agent online can wake this PC");
        record(&[], "no waker online");
        RelayToClient::Wake(WakeAnswer::NoWaker)
    };
    // With no waker here, other nodes of the cluster may hold one: they are asked through
    // the registry, for a PC the registry knows (an unknown ID goes no further).
    let others: Vec<String> = if wakers.is_empty() {
        let others: Vec<String> = relay.cluster.others().into_iter().map(|n| n.name).collect();
        let known = !others.is_empty() && matches!(relay.registry.machine(&id).await, Ok(Some(_)));
        if known {
            others
        } else {
            Vec::new()
        }
    } else {
        Vec::new()
    };
    if wakers.is_empty() && others.is_empty() {
        let _ = framed.write(&no_waker()).await;
        return;
    }
    let window = relay
        .wake
        .window
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(&id, now);
    let answer = match window {
        Ok(()) if !wakers.is_empty() => {
            let asked: Vec<String> = wakers
                .into_iter()
                .filter(|w| relay.hub.tell(w, RelayToAgent::Wake(id.clone())))
                .map(|w| w.as_str().to_owned())
                .collect();
            if asked.is_empty() {
                let _ = framed.write(&no_waker()).await;
                return;
            }
            info!(wakers = ?asked, "wake request passed on");
            record(&asked, "sent");
            WakeAnswer::Sent
        }
        Ok(()) => {
            for node in &others {
                if let Err(e) = relay
                    .registry
                    .request_node(node, NODE_REQUEST, id.as_str())
                    .await
                {
                    tracing::warn!(%node, %e, "could not pass a wake request to another node");
                }
            }
            info!(nodes = ?others, "wake request passed to the other nodes");
            let nodes: Vec<String> = others.iter().map(|n| format!("node:{n}")).collect();
            record(&nodes, "sent");
            WakeAnswer::Sent
        }
        Err(left) => {
            let retry_secs = u16::try_from(left.as_secs() + 1).unwrap_or(u16::MAX);
            info!(
                retry_secs,
                "wake request inside the PC's window; not passed on"
            );
            let names: Vec<String> = wakers.iter().map(|w| w.as_str().to_owned()).collect();
            record(&names, "rate-limited");
            WakeAnswer::AlreadyAsked { retry_secs }
        }
    };
    if framed.write(&RelayToClient::Wake(answer)).await.is_err() {
        return;
    }
    wait_online(relay, framed, &id).await;
}

/// Keeps the stream until `id` is online here (then says so), the client leaves, the relay
/// stops, or [`MAX_WAKE_WAIT_SECS`] pass. Once the PC is online, the client connects as
/// usual (in a cluster, it is sent to the PC's node then).
async fn wait_online(relay: &Arc<Relay>, mut framed: Framed<Stream>, id: &ComputerId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(MAX_WAKE_WAIT_SECS);
    let mut tick = tokio::time::interval(ONLINE_CHECK);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                ticks = ticks.wrapping_add(1);
                if relay.hub.is_online(id) {
                    break;
                }
                // In a cluster the PC comes online at its home node: ask the presence rows
                // now and then (not every tick: they are a database read).
                if ticks.is_multiple_of(CLUSTER_CHECK_EVERY)
                    && crate::client_conn::elsewhere(relay, id).await.is_some()
                {
                    break;
                }
            }
            // The client sends nothing more: any byte or the end means it is done waiting.
            _ = framed.read::<ClientToRelay>() => return debug!("the client stopped waiting"),
            () = tokio::time::sleep_until(deadline) => return debug!("wake wait over"),
            () = relay.hard_stop.cancelled() => return,
        }
    }
    info!("the woken PC is online");
    let _ = framed.write(&RelayToClient::Online).await;
    let _ = framed.shutdown().await;
}
