//! HTTP/2 PINGs on an idle connection, so that a peer that vanished (a network that dropped
//! every packet, a laptop closed mid-session) is noticed within [`GIVE_UP`]: TCP itself would
//! keep retransmitting for a quarter of an hour.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Shared;

/// How often a PING goes out. Less often than QUIC's keep-alive: a killed relay's kernel
/// resets its TCP connections itself.
const EVERY: Duration = Duration::from_secs(10);

/// A peer silent this long is given up on. Longer than QUIC's idle timeout: a killed relay
/// node's kernel resets its TCP connections at once, so only a vanished network is left to
/// notice, and TCP rides out longer outages than UDP mappings do.
const GIVE_UP: Duration = Duration::from_secs(45);

/// No answer to a PING for this long after sending it means the peer is gone: together with
/// [`EVERY`], the peer is given up on at most [`GIVE_UP`] after it last answered.
const DEAD_PEER: Duration = GIVE_UP.saturating_sub(EVERY);

/// Pings until the connection ends; closes it when a PING goes unanswered.
pub(super) async fn keep_alive(mut ping_pong: h2::PingPong, shared: Arc<Shared>) {
    loop {
        tokio::select! {
            () = shared.done.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        let answered = tokio::select! {
            () = shared.done.cancelled() => return,
            answer = tokio::time::timeout(DEAD_PEER, ping_pong.ping(h2::Ping::opaque())) => {
                matches!(answer, Ok(Ok(_)))
            }
        };
        if !answered {
            tracing::debug!("the peer stopped answering HTTP/2 PINGs; closing the connection");
            if !shared.shutdown.is_cancelled() {
                shared.code.store(0, Ordering::Relaxed);
                shared.shutdown.cancel();
            }
            return;
        }
    }
}
