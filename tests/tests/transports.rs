//! Choosing the transport: `auto` takes QUIC where UDP works and falls back to TLS/TCP where
//! it is dropped, says which, and moves back to QUIC when UDP returns; a client and an agent
//! on different transports reach each other; an office full of PCs behind one address comes
//! online at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use telework_client::{LoginOptions, Session};
use telework_net::transport::{TransportChoice, TransportKind};
use telework_tests::gate::Gate;
use telework_tests::{echo_once, EchoServer, TestClient, TestRelay};

const PW: &str = "transport-password";

async fn session_through(
    relay: &TestRelay,
    id: &str,
    via: std::net::SocketAddr,
    transport: TransportChoice,
    options: &LoginOptions,
) -> Session {
    let mut target = relay.target(id);
    target.relay = via.to_string().parse().unwrap();
    target.transport = transport;
    Session::login_with(&target, PW.as_bytes(), options)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_takes_quic_where_udp_works() {
    let relay = TestRelay::start().await;
    let gate = Gate::start(relay.addr).await;
    let desktop = EchoServer::start().await;
    let agent = relay
        .agent("pc-auto", PW)
        .transport(TransportChoice::Auto)
        .via(gate.addr)
        .target(desktop.addr)
        .run()
        .await;
    assert_eq!(agent.agent.transport(), Some(TransportKind::Quic));
    let session = session_through(
        &relay,
        "pc-auto",
        gate.addr,
        TransportChoice::Auto,
        &LoginOptions::default(),
    )
    .await;
    assert_eq!(session.transport(), "QUIC");
    let client = TestClient::serve(session).await;
    let mut c = tokio::net::TcpStream::connect(client.local).await.unwrap();
    echo_once(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_tls_tcp_where_udp_is_dropped_and_says_so() {
    let relay = TestRelay::start().await;
    let gate = Gate::start(relay.addr).await;
    gate.block_udp(true);
    let desktop = EchoServer::start().await;
    let agent = relay
        .agent("pc-blocked", PW)
        .transport(TransportChoice::Auto)
        .via(gate.addr)
        .target(desktop.addr)
        .run()
        .await;
    assert_eq!(agent.agent.transport(), Some(TransportKind::Tcp));
    let started = std::time::Instant::now();
    let session = session_through(
        &relay,
        "pc-blocked",
        gate.addr,
        TransportChoice::Auto,
        &LoginOptions::default(),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the fallback waits only the head start: {:?}",
        started.elapsed()
    );
    assert_eq!(
        session.transport(),
        "TLS/TCP (UDP to the relay seems blocked)"
    );
    let client = TestClient::serve(session).await;
    let mut c = tokio::net::TcpStream::connect(client.local).await.unwrap();
    echo_once(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_only_never_falls_back() {
    let relay = TestRelay::start().await;
    let gate = Gate::start(relay.addr).await;
    let _pc = relay.office_pc("pc-quic-only", PW).await;
    gate.block_udp(true);
    let mut target = relay.target("pc-quic-only");
    target.relay = gate.addr.to_string().parse().unwrap();
    target.transport = TransportChoice::Quic;
    let err = Session::login(&target, PW.as_bytes()).await.err().unwrap();
    assert!(err.to_string().contains("did not answer within"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_move_back_to_quic_when_udp_returns_and_open_tunnels_carry_on() {
    let relay = TestRelay::start().await;
    let gate = Gate::start(relay.addr).await;
    gate.block_udp(true);
    let desktop = EchoServer::start().await;
    let agent = relay
        .agent("pc-back", PW)
        .transport(TransportChoice::Auto)
        .via(gate.addr)
        .quic_reprobe(Duration::from_millis(300))
        .target(desktop.addr)
        .run()
        .await;
    assert_eq!(agent.agent.transport(), Some(TransportKind::Tcp));
    let options = LoginOptions {
        quic_reprobe: Duration::from_millis(300),
        ..LoginOptions::default()
    };
    let session = session_through(
        &relay,
        "pc-back",
        gate.addr,
        TransportChoice::Auto,
        &options,
    )
    .await;
    let opener = session.opener();
    let client = TestClient::serve(session).await;
    // A desktop connection open on TLS/TCP while the network changes.
    let mut open = tokio::net::TcpStream::connect(client.local).await.unwrap();
    round_trip(&mut open, b"before").await;

    gate.block_udp(false);
    let moved = tokio::time::timeout(Duration::from_secs(10), async {
        while agent.agent.transport() != Some(TransportKind::Quic) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(moved.is_ok(), "the agent moved to QUIC");
    round_trip(&mut open, b"still open on TLS/TCP").await;
    // New tunnels of the session reach the agent on its new connection.
    let tunnel = tokio::time::timeout(Duration::from_secs(5), opener.open())
        .await
        .unwrap()
        .unwrap();
    drop(tunnel);
    let mut fresh = tokio::net::TcpStream::connect(client.local).await.unwrap();
    round_trip(&mut fresh, b"new tunnel").await;
}

async fn round_trip(s: &mut tokio::net::TcpStream, msg: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(back, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_and_an_agent_on_different_transports_reach_each_other() {
    let relay = TestRelay::start().await;
    for (agent_on, client_on) in [
        (TransportChoice::Tcp, TransportChoice::Quic),
        (TransportChoice::Quic, TransportChoice::Tcp),
    ] {
        let id = format!("pc-mixed-{agent_on:?}").to_lowercase();
        let desktop = EchoServer::start().await;
        let _agent = relay
            .agent(&id, PW)
            .transport(agent_on)
            .target(desktop.addr)
            .run()
            .await;
        let session =
            session_through(&relay, &id, relay.addr, client_on, &LoginOptions::default()).await;
        let client = TestClient::serve(session).await;
        let mut c = tokio::net::TcpStream::connect(client.local).await.unwrap();
        echo_once(&mut c).await;
    }
}
