//! The UDP side of the forwarder: each client address gets an upstream socket of its own
//! (a NAT's mapping), and each direction's datagrams wait in a bounded queue until the model
//! lets them go, or are lost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Counters, Link, Shared, MAX_FLOWS, UDP_QUEUE};

/// Largest datagram forwarded (QUIC's are at most about 1,500 bytes; its path-MTU probes on
/// loopback may be larger).
const DATAGRAM: usize = 65_535;

/// Each forwarder socket's kernel buffers: a burst of QUIC at full speed overflows the default
/// 208 KiB while a task waits its turn, and a datagram the kernel drops is a loss nobody asked
/// for.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// A datagram and when it leaves.
type Queued = (Instant, Bytes);

/// One client address's way to the target.
struct Mapping {
    /// The client-to-target queue.
    up: mpsc::Sender<Queued>,
    /// The client-to-target decisions.
    link: Link,
}

/// Reads datagrams from clients until the forwarder stops; the mappings' tasks end with it.
pub(super) async fn serve(front: UdpSocket, shared: Arc<Shared>) {
    let front = Arc::new(front);
    let mut mappings: HashMap<SocketAddr, Mapping> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        let (n, from) = match front.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(_) => {
                // An ICMP error reported on the socket, say: nothing to forward.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        if shared.udp_blocked.load(Ordering::Relaxed) {
            continue;
        }
        if !mappings.contains_key(&from) {
            if mappings.len() >= MAX_FLOWS {
                Counters::add(&shared.counters.datagrams_dropped, 1);
                continue;
            }
            let Some(mapping) = open(&front, from, &shared, &mut tasks).await else {
                continue;
            };
            mappings.insert(from, mapping);
        }
        let Some(mapping) = mappings.get_mut(&from) else {
            continue;
        };
        enqueue(&mut mapping.link, &mapping.up, &buf[..n], &shared.counters);
    }
}

/// Decides a datagram's fate and queues it, unless it is lost or its queue is full.
fn enqueue(link: &mut Link, queue: &mpsc::Sender<Queued>, datagram: &[u8], c: &Counters) {
    match link.datagram(Instant::now()) {
        None => Counters::add(&c.datagrams_lost, 1),
        Some(at) => {
            if queue
                .try_send((at, Bytes::copy_from_slice(datagram)))
                .is_err()
            {
                Counters::add(&c.datagrams_dropped, 1);
            }
        }
    }
}

/// A new mapping for `client`: its upstream socket, and the tasks that send each way and
/// read the target's answers.
async fn open(
    front: &Arc<UdpSocket>,
    client: SocketAddr,
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
) -> Option<Mapping> {
    let upstream = bind(SocketAddr::from(([127, 0, 0, 1], 0))).ok()?;
    upstream.connect(shared.target).await.ok()?;
    let upstream = Arc::new(upstream);
    let (up_link, mut down_link) = shared.next_flow();
    let (up, up_rx) = mpsc::channel::<Queued>(UDP_QUEUE);
    let (down, down_rx) = mpsc::channel::<Queued>(UDP_QUEUE);

    let to_target = upstream.clone();
    let s = shared.clone();
    tasks.spawn(send_queued(up_rx, s, move |d| {
        let to_target = to_target.clone();
        async move { to_target.send(&d).await.map(|_| ()) }
    }));
    let back = front.clone();
    let s = shared.clone();
    tasks.spawn(send_queued(down_rx, s, move |d| {
        let back = back.clone();
        async move { back.send_to(&d, client).await.map(|_| ()) }
    }));
    let s = shared.clone();
    tasks.spawn(async move {
        let mut buf = vec![0u8; DATAGRAM];
        loop {
            match upstream.recv(&mut buf).await {
                Ok(n) => {
                    if !s.udp_blocked.load(Ordering::Relaxed) {
                        enqueue(&mut down_link, &down, &buf[..n], &s.counters);
                    }
                }
                // The target's port closed (an ICMP error on the connected socket): answers
                // may come again if it is restarted on the same port.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    });
    Some(Mapping { up, link: up_link })
}

/// Sends each queued datagram when its time comes, in order.
async fn send_queued<F, Fut>(mut queue: mpsc::Receiver<Queued>, shared: Arc<Shared>, mut send: F)
where
    F: FnMut(Bytes) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    while let Some((departure, datagram)) = queue.recv().await {
        tokio::time::sleep_until(departure).await;
        if shared.udp_blocked.load(Ordering::Relaxed) {
            continue;
        }
        if send(datagram).await.is_ok() {
            Counters::add(&shared.counters.datagrams, 1);
        }
    }
}

/// A UDP socket on `addr` with [`SOCKET_BUFFER`]-sized kernel buffers (as far as
/// net.core.rmem_max and wmem_max allow).
pub(super) fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}
