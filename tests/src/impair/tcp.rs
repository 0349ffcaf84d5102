//! The TCP side of the forwarder: each accepted connection is joined to a new connection to
//! the target, and each direction's chunks wait in a bounded queue until the model lets them
//! go (see the module doc of `impair` for the model).

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Counters, Link, Shared, MAX_FLOWS, TCP_CHUNK, TCP_QUEUE};

/// Accepts until the forwarder stops; each connection's task ends with the listener's.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        let inbound = match listener.accept().await {
            Ok((inbound, _)) => inbound,
            Err(_) => {
                // Out of descriptors, say: give the open connections a moment to end.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        if conns.len() >= MAX_FLOWS {
            Counters::add(&shared.counters.connections_refused, 1);
            continue;
        }
        // Numbered in the order of arrival, so its draws follow from the seed.
        let links = shared.next_flow();
        conns.spawn(connection(inbound, shared.clone(), links));
    }
}

async fn connection(inbound: TcpStream, shared: Arc<Shared>, (up, down): (Link, Link)) {
    let Ok(outbound) = TcpStream::connect(shared.target).await else {
        return;
    };
    // Every chunk leaves when the model says, not when Nagle's algorithm would.
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    if shared.impairments.is_none() {
        let (mut inbound, mut outbound) = (inbound, outbound);
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        return;
    }
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::join!(
        direction(in_read, out_write, up, &shared.counters),
        direction(out_read, in_write, down, &shared.counters),
    );
}

/// Copies one direction through the model; half-closes `to` when `from` ends.
async fn direction(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut link: Link, c: &Counters) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(TCP_QUEUE);
    let read = async move {
        let mut buf = vec![0u8; TCP_CHUNK];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let fate = link.chunk(n, Instant::now());
            Counters::add(&c.segments_lost, u64::from(fate.lost_segments));
            // Waits while the queue is full: the sender's window fills, as on a slow path.
            if tx
                .send((fate.departure, Bytes::copy_from_slice(&buf[..n])))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((departure, chunk)) = rx.recv().await {
            tokio::time::sleep_until(departure).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            Counters::add(&c.chunks, 1);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
