//! Noticing that this host's network changed under a connection: a new Wi-Fi, a phone's
//! hotspot, a DHCP renewal with a new address.
//!
//! QUIC follows such a change by itself (its packets leave from whatever address the route to
//! the relay has now, and the relay validates the new path), so the only thing to do is to
//! tell the person. A TCP connection is bound to the address it was opened from: once that
//! address is gone from the host, nothing sent on it will ever be answered, and waiting for a
//! keep-alive to time out would take most of a minute. Both are checked by asking the kernel,
//! without sending anything.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use super::{Connection, TransportKind};

/// What changed since the last check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkChange {
    /// Nothing that matters.
    None,
    /// The route to the relay now leaves from another address, and the connection (QUIC)
    /// follows it.
    Moved,
    /// The address the connection (TCP) was opened from is no longer on this host: the
    /// connection is dead and must be replaced.
    Lost,
}

/// Watches one connection's way out.
#[derive(Debug)]
pub struct NetworkWatch {
    peer: SocketAddr,
    kind: TransportKind,
    /// The source address of the route to the peer at the last check.
    source: Option<IpAddr>,
    /// A TCP connection's own local address.
    bound: Option<IpAddr>,
}

impl NetworkWatch {
    /// Starts watching `connection`.
    pub fn new(connection: &Connection) -> Self {
        let peer = connection.peer_addr();
        Self {
            peer,
            kind: connection.kind(),
            source: route_source(peer),
            bound: connection.local_ip(),
        }
    }

    /// Looks again (a few system calls, nothing sent).
    pub fn check(&mut self) -> NetworkChange {
        if self.kind == TransportKind::Tcp {
            return match self.bound {
                Some(ip) if !is_assigned(ip) => NetworkChange::Lost,
                _ => NetworkChange::None,
            };
        }
        let now = route_source(self.peer);
        if now.is_none() || now == self.source {
            return NetworkChange::None;
        }
        let before = std::mem::replace(&mut self.source, now);
        if before.is_some() {
            NetworkChange::Moved
        } else {
            NetworkChange::None
        }
    }
}

/// The source address the kernel would pick for a datagram to `peer` now (a connected UDP
/// socket sends nothing until written to).
fn route_source(peer: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match peer {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any).ok()?;
    socket.connect(peer).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// Whether `ip` is still one of this host's addresses: only then can a socket be bound to it.
fn is_assigned(ip: IpAddr) -> bool {
    match UdpSocket::bind((ip, 0)) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::AddrNotAvailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_assigned_and_an_address_of_no_interface_is_not() {
        assert!(is_assigned("127.0.0.1".parse().unwrap()));
        // TEST-NET-1 (RFC 5737): on no host's interface.
        assert!(!is_assigned("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn the_route_to_a_loopback_peer_leaves_from_loopback() {
        assert_eq!(
            route_source("127.0.0.1:443".parse().unwrap()),
            Some("127.0.0.1".parse().unwrap())
        );
    }
}
