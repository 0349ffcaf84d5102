//! A gate in front of the relay: forwards TCP and UDP from one port of its own to the relay's
//! port, and can drop every UDP datagram, as a network that blocks UDP does. Agents and
//! clients pointed at the gate see the relay, or the relay without QUIC. It is the impairment
//! forwarder ([`crate::impair`]) with nothing impaired.

use std::net::SocketAddr;

use crate::impair::{Impairer, Impairments};

/// A running gate; stops when dropped.
pub struct Gate {
    /// Where agents and clients connect instead of the relay.
    pub addr: SocketAddr,
    forwarder: Impairer,
}

impl Gate {
    /// Starts a gate to `relay` on a free loopback port (TCP and UDP), with UDP passing.
    pub async fn start(relay: SocketAddr) -> Self {
        let forwarder = Impairer::start(relay, Impairments::default()).await;
        Self {
            addr: forwarder.addr,
            forwarder,
        }
    }

    /// Drops every UDP datagram from now on (`true`), or lets them pass again.
    pub fn block_udp(&self, blocked: bool) {
        self.forwarder.block_udp(blocked);
    }

    /// Stops forwarding.
    pub fn stop(&mut self) {
        self.forwarder.stop();
    }
}
