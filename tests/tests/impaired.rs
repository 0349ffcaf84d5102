//! Test (f) of issue 13: 2 % loss each way and a 30 ms round trip in all, from the impairment
//! forwarder on both sides of the relay (one between the client and the relay, one between
//! the agent and the relay, each 2 % and 15 ms). A 16 MiB transfer arrives intact on both
//! transports, and QUIC's 64-byte round trips have no worse a p99 than TLS/TCP's, both measured
//! in the same test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use telework_client::{LoginOptions, Session};
use telework_net::transport::TransportChoice;
use telework_tests::impair::{Impairer, Impairments};
use telework_tests::{on_both_transports, EchoServer, SinkServer, TestClient, TestRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const PW: &str = "impaired-password";
/// Loss each way on each side.
const LOSS_PERCENT: f64 = 2.0;
/// Each side's round trip: the client's and the agent's together make 30 ms.
const SIDE_ROUND_TRIP: Duration = Duration::from_millis(15);
/// The transfer's size.
const TRANSFER: usize = 16 << 20;
/// Timed 64-byte round trips per transport (the p99 is the third slowest).
const ROUND_TRIPS: usize = 300;

/// The forwarders on the agent's side and on the client's side of `relay`, with seeds of
/// their own.
async fn both_sides(relay: &TestRelay, seed: u64) -> (Impairer, Impairer) {
    let side = |s| Impairments::symmetric(LOSS_PERCENT, SIDE_ROUND_TRIP, s);
    (
        Impairer::start(relay.addr, side(seed)).await,
        Impairer::start(relay.addr, side(seed + 1)).await,
    )
}

/// A session with `id` through `via` on `transport`, served on a local port.
async fn client_through(
    relay: &TestRelay,
    id: &str,
    via: SocketAddr,
    transport: TransportChoice,
) -> TestClient {
    let mut target = relay.target(id);
    target.relay = via.to_string().parse().unwrap();
    target.transport = transport;
    let session = tokio::time::timeout(
        Duration::from_secs(20),
        Session::login_with(&target, PW.as_bytes(), &LoginOptions::default()),
    )
    .await
    .expect("logged in through the impaired path in time")
    .unwrap();
    TestClient::serve(session).await
}

on_both_transports! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sixteen_mib_arrive_intact_through_loss_and_delay() {
        let relay = TestRelay::start().await;
        let (agent_side, client_side) = both_sides(&relay, 13).await;
        let sink = SinkServer::start().await;
        let _agent = relay
            .agent("pc-lossy", PW)
            .via(agent_side.addr)
            .target(sink.addr)
            .run()
            .await;
        let client = client_through(&relay, "pc-lossy", client_side.addr, relay.transport).await;
        let mut conn = TcpStream::connect(client.local).await.unwrap();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut block = vec![0u8; 1 << 20];
        let started = Instant::now();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), async {
            for i in 0..(TRANSFER >> 20) as u32 {
                for (j, b) in block.iter_mut().enumerate() {
                    *b = (j as u32 ^ i.wrapping_mul(2_654_435_761)) as u8;
                }
                ctx.update(&block);
                conn.write_all(&block).await.unwrap();
            }
            conn.shutdown().await.unwrap();
            conn.read_to_end(&mut answer).await.unwrap();
        })
        .await
        .expect("16 MiB went through in 60 s");
        eprintln!(
            "{:?}: 16 MiB in {:.1} s; lost on purpose: {} datagrams, {} TCP segments",
            relay.transport,
            started.elapsed().as_secs_f64(),
            lost_datagrams(&agent_side) + lost_datagrams(&client_side),
            lost_segments(&agent_side) + lost_segments(&client_side),
        );
        assert_eq!(answer.len(), 8 + 32);
        assert_eq!(
            u64::from_be_bytes(answer[..8].try_into().unwrap()),
            TRANSFER as u64
        );
        assert_eq!(&answer[8..], ctx.finish().as_ref(), "SHA-256 differs");
        // The loss was real: the transport under test met it.
        match relay.transport {
            TransportChoice::Quic => assert!(lost_datagrams(&client_side) > 0),
            _ => assert!(lost_segments(&client_side) > 0),
        }
    }
}

fn lost_datagrams(f: &Impairer) -> u64 {
    f.counters()
        .datagrams_lost
        .load(std::sync::atomic::Ordering::Relaxed)
}

fn lost_segments(f: &Impairer) -> u64 {
    f.counters()
        .segments_lost
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// 64-byte round trips through `local` (a client's port) to the echo desktop, after a few
/// untimed ones; in microseconds, sorted.
async fn round_trips(local: SocketAddr) -> Vec<u64> {
    let mut conn = TcpStream::connect(local).await.unwrap();
    conn.set_nodelay(true).unwrap();
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS + 10 {
        let sent = Instant::now();
        conn.write_all(&[0x5a; 64]).await.unwrap();
        let mut back = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut back))
            .await
            .expect("the echo came back")
            .unwrap();
        if i >= 10 {
            times.push(sent.elapsed().as_micros() as u64);
        }
    }
    times.sort_unstable();
    times
}

/// The `p`-th percentile of sorted `xs` by nearest rank.
fn percentile(xs: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * xs.len() as f64).ceil() as usize;
    xs[rank.clamp(1, xs.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_round_trip_p99_is_no_worse_than_tls_tcp_s() {
    let relay = TestRelay::start().await;
    let desktop = EchoServer::start().await;
    let mut clients = vec![];
    // Each transport through forwarders of its own, with the same seeds.
    let mut forwarders = vec![];
    for (id, transport) in [
        ("pc-rtt-quic", TransportChoice::Quic),
        ("pc-rtt-tcp", TransportChoice::Tcp),
    ] {
        let (agent_side, client_side) = both_sides(&relay, 29).await;
        let _agent = relay
            .agent(id, PW)
            .transport(transport)
            .via(agent_side.addr)
            .target(desktop.addr)
            .run()
            .await;
        clients.push(client_through(&relay, id, client_side.addr, transport).await);
        forwarders.push((agent_side, client_side, _agent));
    }
    // At the same time, so both meet the same load on the machine.
    let (quic, tcp) = tokio::join!(round_trips(clients[0].local), round_trips(clients[1].local));
    let (quic_p50, quic_p99) = (percentile(&quic, 50.0), percentile(&quic, 99.0));
    let (tcp_p50, tcp_p99) = (percentile(&tcp, 50.0), percentile(&tcp, 99.0));
    eprintln!(
        "64-byte round trips, µs: QUIC p50 {quic_p50} p99 {quic_p99}; \
         TLS/TCP p50 {tcp_p50} p99 {tcp_p99}"
    );
    // Both met the delay (30 ms in all) and the loss.
    assert!(quic[0] >= 30_000 && tcp[0] >= 30_000, "{quic:?} {tcp:?}");
    assert!(
        quic_p99 <= tcp_p99,
        "QUIC's p99 {quic_p99} µs is worse than TLS/TCP's {tcp_p99} µs"
    );
}
