//! Sending the magic packet: UDP to the broadcast address IT staff configured, with
//! `SO_BROADCAST` set. The only place the agent sends anything on the office LAN.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::net::UdpSocket;

use super::packet::{magic_packet, Mac};

/// Copies of the packet in one burst: UDP broadcast has no delivery guarantee, and a card
/// that misses one copy usually catches the next. Cards wake on the first; the rest are
/// ignored.
pub const BURST: usize = 3;

/// Time between the copies of a burst.
pub const BURST_GAP: Duration = Duration::from_millis(100);

/// Sends one burst of the magic packet for `mac` to `broadcast:port`.
///
/// # Errors
/// If no socket can be made or the system refuses to send (no route to the address, say).
pub async fn send_burst(mac: Mac, broadcast: Ipv4Addr, port: u16) -> std::io::Result<()> {
    let socket = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await?;
    socket.set_broadcast(true)?;
    let packet = magic_packet(mac);
    let to = SocketAddrV4::new(broadcast, port);
    for i in 0..BURST {
        if i > 0 {
            tokio::time::sleep(BURST_GAP).await;
        }
        socket.send_to(&packet, to).await?;
    }
    Ok(())
}
