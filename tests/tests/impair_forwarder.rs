//! The impairment forwarder on real loopback sockets: it loses and delays what the model says,
//! the same datagrams under the same seed, and a TCP stream through it arrives whole.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use telework_tests::impair::{Impairer, Impairments, MIN_RTO};
use telework_tests::EchoServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

/// Datagrams per burst.
const BURST: u32 = 600;

/// A UDP echo server on loopback; runs until the test ends.
async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// Sends `count` numbered datagrams through a new forwarder, pausing `pause` after every
/// `every` of them, and returns which came back and the round trip of each.
async fn burst(
    impairments: Impairments,
    count: u32,
    every: u32,
    pause: Duration,
) -> (BTreeSet<u32>, Vec<Duration>) {
    let forwarder = Impairer::start(udp_echo().await, impairments).await;
    let socket = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    socket.connect(forwarder.addr).await.unwrap();
    let started = Instant::now();
    let sender = socket.clone();
    // Sent while the answers are read, so that no socket's receive buffer overflows (about
    // 270 such datagrams fill one); spaced, for the same reason on a loaded machine.
    let sending = tokio::spawn(async move {
        for i in 0..count {
            if i % every == 0 {
                tokio::time::sleep(pause).await;
            }
            let mut d = [0u8; 100];
            d[..4].copy_from_slice(&i.to_be_bytes());
            let sent = started.elapsed().as_nanos() as u64;
            d[4..12].copy_from_slice(&sent.to_be_bytes());
            sender.send(&d).await.unwrap();
        }
    });
    let (mut back, mut rtts) = (BTreeSet::new(), vec![]);
    let mut buf = [0u8; 2048];
    // Until nothing more comes for a while (every datagram is due within the delay, and the
    // sender never pauses that long).
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buf)).await
    {
        assert_eq!(n, 100);
        back.insert(u32::from_be_bytes(buf[..4].try_into().unwrap()));
        let sent = u64::from_be_bytes(buf[4..12].try_into().unwrap());
        rtts.push(started.elapsed() - Duration::from_nanos(sent));
    }
    sending.await.unwrap();
    (back, rtts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_loss_and_delay_are_what_was_asked_and_the_same_under_the_same_seed() {
    let asked = Impairments::symmetric(5.0, Duration::from_millis(40), 42);
    let (first, rtts) = burst(asked, BURST, 2, Duration::from_millis(1)).await;
    let (again, _) = burst(asked, BURST, 2, Duration::from_millis(1)).await;
    let (other, _) = burst(
        Impairments { seed: 43, ..asked },
        BURST,
        2,
        Duration::from_millis(1),
    )
    .await;
    assert_eq!(first, again, "the same seed loses the same datagrams");
    assert_ne!(first, other, "another seed loses others");
    // 1 - 0.95² = 9.75 % lost over both ways; the standard deviation over 600 is ~1.2 %.
    let lost = f64::from(BURST - first.len() as u32) * 100.0 / f64::from(BURST);
    assert!((5.0..=15.0).contains(&lost), "{lost}% lost");
    let mut rtts = rtts;
    rtts.sort();
    let (min, median) = (rtts[0], rtts[rtts.len() / 2]);
    assert!(min >= Duration::from_millis(40), "{min:?}");
    assert!(median < Duration::from_millis(60), "{median:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_jitter_varies_the_delay_within_its_bounds() {
    let asked = Impairments::symmetric(0.0, Duration::from_millis(40), 7)
        .with_jitter(Duration::from_millis(10));
    // Far enough apart that none waits for the one before: each way is 20 ms ± 10 ms.
    let (back, mut rtts) = burst(asked, 100, 1, Duration::from_millis(25)).await;
    assert_eq!(back.len(), 100);
    rtts.sort();
    let (fastest, median, slowest) = (rtts[0], rtts[50], rtts[99]);
    assert!(fastest >= Duration::from_millis(20), "{fastest:?}");
    // Each of these fails by chance with a probability of 0.72^100 (the sum of two uniform
    // delays is above 36 ms, or below 44, with a probability of 0.72); a loaded machine only
    // ever adds time, so the upper bounds are loose.
    assert!(fastest < Duration::from_millis(36), "no jitter: {rtts:?}");
    assert!(slowest > Duration::from_millis(44), "no jitter: {rtts:?}");
    assert!(
        median > Duration::from_millis(32) && median < Duration::from_millis(55),
        "{median:?}"
    );
}

/// Round trips of 64 bytes through `addr` to an echo server, `n` of them.
async fn tcp_round_trips(addr: SocketAddr, n: usize) -> Vec<Duration> {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.set_nodelay(true).unwrap();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        conn.write_all(&[9u8; 64]).await.unwrap();
        let mut back = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        out.push(t.elapsed());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tcp_segment_holds_the_stream_for_a_retransmission_timeout() {
    let echo = EchoServer::start().await;
    let rtt = Duration::from_millis(20);
    let clean = Impairer::start(echo.addr, Impairments::symmetric(0.0, rtt, 1)).await;
    let lossy = Impairer::start(echo.addr, Impairments::symmetric(5.0, rtt, 1)).await;
    let (clean_rtts, lossy_rtts) = tokio::join!(
        tcp_round_trips(clean.addr, 100),
        tcp_round_trips(lossy.addr, 100)
    );
    let mut sorted = clean_rtts.clone();
    sorted.sort();
    assert!(sorted[0] >= rtt, "{sorted:?}");
    assert!(sorted[sorted.len() / 2] < rtt * 2, "{sorted:?}");
    // Each lost segment (a 64-byte write is one) holds its round trip for a timeout; both
    // ways' in one round trip, for two.
    let held: Vec<_> = lossy_rtts.iter().filter(|r| **r >= MIN_RTO).collect();
    let lost = lossy
        .counters()
        .segments_lost
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(lost > 0, "5 % of 200 segments");
    assert!(
        !held.is_empty() && held.len() as u64 <= lost,
        "{held:?}, {lost} lost"
    );
    assert!(
        held.iter()
            .all(|r| **r >= MIN_RTO + rtt && **r < MIN_RTO * 3),
        "{held:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_stream_through_loss_arrives_whole_and_in_order() {
    let echo = EchoServer::start().await;
    let forwarder = Impairer::start(
        echo.addr,
        Impairments::symmetric(2.0, Duration::from_millis(10), 5)
            .with_jitter(Duration::from_millis(3)),
    )
    .await;
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i ^ (i >> 11)) as u8).collect();
    let conn = TcpStream::connect(forwarder.addr).await.unwrap();
    let (mut r, mut w) = conn.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(data.len());
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut back))
        .await
        .expect("the echo came back in time")
        .unwrap();
    writer.await.unwrap();
    assert!(back == data, "the stream arrived changed");
    let c = forwarder.counters();
    assert!(c.segments_lost.load(std::sync::atomic::Ordering::Relaxed) > 0);
}
