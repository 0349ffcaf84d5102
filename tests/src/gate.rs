//! A gate in front of the relay: forwards TCP and UDP from one port of its own to the relay's
//! port, and can drop every UDP datagram, as a network that blocks UDP does. Agents and
//! clients pointed at the gate see the relay, or the relay without QUIC.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

/// Largest datagram forwarded (QUIC's are at most about 1,500 bytes on loopback paths).
const DATAGRAM: usize = 65_535;

/// A running gate; stops when dropped.
pub struct Gate {
    /// Where agents and clients connect instead of the relay.
    pub addr: SocketAddr,
    udp_blocked: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

impl Gate {
    /// Starts a gate to `relay` on a free loopback port (TCP and UDP), with UDP passing.
    pub async fn start(relay: SocketAddr) -> Self {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let udp = Arc::new(UdpSocket::bind(addr).await.unwrap());
        let udp_blocked = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        tasks.spawn(forward_tcp(tcp, relay));
        tasks.spawn(forward_udp(udp, relay, udp_blocked.clone()));
        Self {
            addr,
            udp_blocked,
            tasks,
        }
    }

    /// Drops every UDP datagram from now on (`true`), or lets them pass again.
    pub fn block_udp(&self, blocked: bool) {
        self.udp_blocked.store(blocked, Ordering::Relaxed);
    }

    /// Stops forwarding.
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

async fn forward_tcp(listener: TcpListener, relay: SocketAddr) {
    let mut conns = JoinSet::new();
    while let Ok((mut inbound, _)) = listener.accept().await {
        conns.spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(relay).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Forwards datagrams: each client address gets an upstream socket of its own, whose
/// answers go back to that client (a NAT's mapping).
async fn forward_udp(socket: Arc<UdpSocket>, relay: SocketAddr, blocked: Arc<AtomicBool>) {
    let upstreams: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut replies = JoinSet::new();
    let mut buf = vec![0u8; DATAGRAM];
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        if blocked.load(Ordering::Relaxed) {
            continue;
        }
        let existing = upstreams.lock().unwrap().get(&from).cloned();
        let upstream = match existing {
            Some(u) => u,
            None => {
                let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if u.connect(relay).await.is_err() {
                    continue;
                }
                let u = Arc::new(u);
                upstreams.lock().unwrap().insert(from, u.clone());
                let (back, up, blocked) = (socket.clone(), u.clone(), blocked.clone());
                replies.spawn(async move {
                    let mut buf = vec![0u8; DATAGRAM];
                    while let Ok(n) = up.recv(&mut buf).await {
                        if !blocked.load(Ordering::Relaxed) {
                            let _ = back.send_to(&buf[..n], from).await;
                        }
                    }
                });
                u
            }
        };
        let _ = upstream.send(&buf[..n]).await;
    }
}
