//! Hostile and broken peers: garbage, oversize frames, stalls, streams where none may be
//! opened, old versions. Each is closed with a reason (or cleanly), and the relay and agent
//! keep serving everyone else. Every test runs on QUIC and on TLS/TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bytes::BytesMut;
use telework_net::framed::Framed;
use telework_net::transport::{Connection, Role, Stream};
use telework_protocol::frame::decode_frame;
use telework_protocol::messages::{
    AgentToRelay, ClientToRelay, RelayOpens, RelayToAgent, RelayToClient, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
use telework_protocol::ErrorCode;
use telework_relay::RelayOptions;
use telework_tests::{on_both_transports, TestClient, TestRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PW: &str = "bad-input-password";

/// Reads until the peer closes; returns what it sent. Fails the test if it takes too long.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the relay closed the stream in time");
    out
}

async fn relay_still_serves(relay: &TestRelay) {
    let client = TestClient::serve(relay.login("pc-ok", PW).await.unwrap()).await;
    let mut c = TcpStream::connect(client.local).await.unwrap();
    c.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
}

/// An agent-role connection and the control stream the relay opened on it.
async fn agent_control(relay: &TestRelay) -> (Connection, Framed<Stream>) {
    let connection = relay.dialer(Role::Agent).dial().await.unwrap().connection;
    let mut f = Framed::new(connection.accept().await.unwrap());
    assert!(matches!(
        f.read::<RelayOpens>().await.unwrap(),
        RelayOpens::Control { .. }
    ));
    (connection, f)
}

/// A new client stream on a new connection.
async fn client_stream(relay: &TestRelay) -> (Connection, Stream) {
    let connection = relay.client_connection().await;
    let stream = connection.open().await.unwrap();
    (connection, stream)
}

/// A client stream that has asked the relay for `pc-ok`, speaking minor `version`.
async fn client_asking_for_pc_ok(relay: &TestRelay, version: u16) -> (Connection, Framed<Stream>) {
    let (connection, stream) = client_stream(relay).await;
    let mut f = Framed::new(stream);
    let mut request = telework_tests::connect_request(&connection, "pc-ok");
    if let ClientToRelay::ConnectAs { version: v, .. } = &mut request {
        *v = version;
    }
    f.write(&request).await.unwrap();
    (connection, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_tls_on_the_tcp_port_and_not_quic_on_the_udp_port() {
    let relay = TestRelay::start().await;
    let (_desktop, _agent) = relay.office_pc("pc-ok", PW).await;
    let mut raw = TcpStream::connect(relay.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until_closed(&mut raw).await;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for size in [1, 40, 1200, 1500] {
        udp.send_to(&vec![0xc3; size], relay.addr).await.unwrap();
    }
    relay_still_serves(&relay).await;
}

on_both_transports! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_and_oversize_frames_are_refused_and_others_keep_working() {
        let relay = TestRelay::start().await;
        let (_desktop, _agent) = relay.office_pc("pc-ok", PW).await;

        // Oversize frame on a client stream: the relay answers "protocol violation" and ends
        // the stream.
        let (_c, mut s) = client_stream(&relay).await;
        s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
        let answer = read_until_closed(&mut s).await;
        let mut buf = BytesMut::from(&answer[..]);
        assert_eq!(
            decode_frame::<RelayToClient>(&mut buf).unwrap(),
            Some(RelayToClient::Error(ErrorCode::ProtocolViolation))
        );

        // The same on an agent's control stream.
        let (_c, f) = agent_control(&relay).await;
        let (mut s, _) = f.into_parts();
        s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
        let answer = read_until_closed(&mut s).await;
        let mut buf = BytesMut::from(&answer[..]);
        assert_eq!(
            decode_frame::<RelayToAgent>(&mut buf).unwrap(),
            Some(RelayToAgent::Error(ErrorCode::ProtocolViolation))
        );

        // Well-framed junk.
        let (_c, mut s) = client_stream(&relay).await;
        s.write_all(&[0, 0, 0, 3, 0xee, 0xee, 0xee]).await.unwrap();
        assert!(!read_until_closed(&mut s).await.is_empty());

        relay_still_serves(&relay).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_cannot_open_streams_to_the_relay() {
        let relay = TestRelay::start().await;
        let (_desktop, _agent) = relay.office_pc("pc-ok", PW).await;
        let (connection, _control) = agent_control(&relay).await;
        // Only the relay opens streams on an agent's connection: QUIC grants the agent no
        // stream credit, and on TLS/TCP the agent is the HTTP/2 server.
        let opened = tokio::time::timeout(Duration::from_secs(1), connection.open()).await;
        assert!(
            !matches!(opened, Ok(Ok(_))),
            "an agent opened a stream to the relay"
        );
        relay_still_serves(&relay).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_handshakes_are_cut_at_the_deadline() {
        let options = RelayOptions {
            handshake_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let relay = TestRelay::start_with(options).await;
        let (_desktop, _agent) = relay.office_pc("pc-ok", PW).await;

        // Silent TCP: never starts TLS.
        let mut silent = TcpStream::connect(relay.addr).await.unwrap();
        let started = std::time::Instant::now();
        read_until_closed(&mut silent).await;
        assert!(started.elapsed() >= Duration::from_millis(400));

        // A client connection that never opens a stream is closed.
        let quiet = relay.client_connection().await;
        tokio::time::timeout(Duration::from_secs(5), quiet.closed())
            .await
            .expect("an idle client connection is closed at the deadline");

        // An agent that never says hello is told so, and its connection closed.
        let (connection, mut f) = agent_control(&relay).await;
        let answer = f.read::<RelayToAgent>().await;
        assert!(
            matches!(
                answer,
                Ok(RelayToAgent::Error(ErrorCode::ProtocolViolation)) | Err(_)
            ),
            "{answer:?}"
        );
        tokio::time::timeout(Duration::from_secs(5), connection.closed())
            .await
            .expect("closed");

        // Half a frame on a control stream, then silence.
        let (connection, f) = agent_control(&relay).await;
        let (mut half, _) = f.into_parts();
        half.write_all(&[0, 0, 0, 50, 1, 2]).await.unwrap();
        read_until_closed(&mut half).await;
        tokio::time::timeout(Duration::from_secs(5), connection.closed())
            .await
            .expect("closed");

        relay_still_serves(&relay).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_inside_a_paired_tunnel_is_refused_by_the_agent() {
        let relay = TestRelay::start().await;
        let (desktop, _agent) = relay.office_pc("pc-ok", PW).await;
        let (_c, mut f) = client_asking_for_pc_ok(&relay, PROTOCOL_VERSION).await;
        assert_eq!(
            f.read::<RelayToClient>().await.unwrap(),
            RelayToClient::Paired
        );
        let (mut s, _) = f.into_parts();
        s.write_all(&[0, 0, 0, 4, 9, 9, 9, 9]).await.unwrap();
        let answer = read_until_closed(&mut s).await;
        let mut buf = BytesMut::from(&answer[..]);
        let refusal =
            decode_frame::<telework_protocol::e2e::messages::AgentHandshake>(&mut buf).unwrap();
        assert_eq!(
            refusal,
            Some(telework_protocol::e2e::messages::AgentHandshake::Refused(
                telework_protocol::e2e::messages::Refusal::ProtocolViolation
            ))
        );
        assert_eq!(desktop.connections(), 0);
        relay_still_serves(&relay).await;
    }

    /// The cap on connections still handshaking counts a client connection only until its
    /// first valid request: connections that asked for something (here an unknown computer
    /// ID) and stay open do not keep new ones out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_that_made_a_request_no_longer_count_as_handshaking() {
        let relay = TestRelay::start_with(RelayOptions {
            max_unauthenticated: 2,
            limits: telework_relay::limits::Limits::unlimited(),
            ..Default::default()
        })
        .await;
        let (_desktop, _agent) = relay.office_pc("pc-ok", PW).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            let (connection, stream) = client_stream(&relay).await;
            let mut f = Framed::new(stream);
            f.write(&telework_tests::connect_request(&connection, "pc-nobody"))
                .await
                .unwrap();
            assert_eq!(
                f.read::<RelayToClient>().await.unwrap(),
                RelayToClient::Error(ErrorCode::UnknownId)
            );
            held.push((connection, f));
        }
        relay_still_serves(&relay).await;
    }

    /// The relay names sessions by device key, so a client must prove one, on this
    /// connection: no proof, a forged one, or one made for another connection gets nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_without_a_good_device_proof_is_refused() {
        let relay = TestRelay::start().await;
        let (_desktop, _agent) = relay.office_pc("pc-ok", PW).await;
        let ask = |request: ClientToRelay| {
            let relay = &relay;
            async move {
                let (_c, stream) = client_stream(relay).await;
                let mut f = Framed::new(stream);
                f.write(&request).await.unwrap();
                f.read::<RelayToClient>().await.unwrap()
            }
        };
        let no_proof = ClientToRelay::Connect {
            version: PROTOCOL_VERSION,
            id: "pc-ok".parse().unwrap(),
        };
        assert_eq!(
            ask(no_proof).await,
            RelayToClient::Error(ErrorCode::ProtocolViolation)
        );
        let (other, _) = client_stream(&relay).await;
        let mut forged = telework_tests::connect_request(&other, "pc-ok");
        if let ClientToRelay::ConnectAs { device_proof, .. } = &mut forged {
            device_proof[0] ^= 1;
        }
        assert_eq!(
            ask(forged).await,
            RelayToClient::Error(ErrorCode::BadProof)
        );
        let from_another_connection = telework_tests::connect_request(&other, "pc-ok");
        assert_eq!(
            ask(from_another_connection).await,
            RelayToClient::Error(ErrorCode::BadProof)
        );
        let (_c, mut f) = client_asking_for_pc_ok(&relay, PROTOCOL_VERSION).await;
        assert_eq!(
            f.read::<RelayToClient>().await.unwrap(),
            RelayToClient::Paired
        );
    }

    /// Software from before this build's minor version is told to update, on both roles,
    /// instead of failing later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_minor_versions_are_told_to_update() {
        let relay = TestRelay::start().await;
        let (_desktop, _agent) = relay.office_pc("pc-ok", PW).await;
        let (_c, mut f) = client_asking_for_pc_ok(&relay, MIN_PROTOCOL_VERSION - 1).await;
        assert_eq!(
            f.read::<RelayToClient>().await.unwrap(),
            RelayToClient::Error(ErrorCode::VersionTooOld)
        );
        // The oldest version still served gets its office PC.
        let (_c, mut f) = client_asking_for_pc_ok(&relay, MIN_PROTOCOL_VERSION).await;
        assert_eq!(
            f.read::<RelayToClient>().await.unwrap(),
            RelayToClient::Paired
        );
        // Clients before 6 sent no device proof; they too are told to update.
        let (_c, stream) = client_stream(&relay).await;
        let mut f = Framed::new(stream);
        f.write(&ClientToRelay::Connect {
            version: MIN_PROTOCOL_VERSION - 1,
            id: "pc-ok".parse().unwrap(),
        })
        .await
        .unwrap();
        assert_eq!(
            f.read::<RelayToClient>().await.unwrap(),
            RelayToClient::Error(ErrorCode::VersionTooOld)
        );
        let (_c, mut f) = agent_control(&relay).await;
        f.write(&AgentToRelay::Hello {
            version: MIN_PROTOCOL_VERSION - 1,
            id: "pc-ok".parse().unwrap(),
            proof: vec![0; 64],
            unreachable: Vec::new(),
        })
        .await
        .unwrap();
        assert_eq!(
            f.read::<RelayToAgent>().await.unwrap(),
            RelayToAgent::Error(ErrorCode::VersionTooOld)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_capped() {
    let options = RelayOptions {
        max_unauthenticated: 2,
        ..Default::default()
    };
    let relay = TestRelay::start_with(options).await;
    let _a = TcpStream::connect(relay.addr).await.unwrap();
    let _b = TcpStream::connect(relay.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(relay.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf))
        .await
        .expect("closed at once");
    assert!(matches!(n, Ok(0) | Err(_)));
}

/// A relay whose per-address failure budget is `burst`, refilled at `per_sec`.
async fn relay_with_failure_budget(per_sec: f64, burst: f64) -> TestRelay {
    use telework_relay::limits::{Limits, Rate};
    TestRelay::start_with(RelayOptions {
        limits: Limits {
            failures: Rate { per_sec, burst },
            ..Limits::default()
        },
        ..Default::default()
    })
    .await
}

on_both_transports! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn probing_for_computer_ids_is_rate_limited() {
        let relay = relay_with_failure_budget(0.01, 5.0).await;
        let (_desktop, _agent) = relay.office_pc("pc-ok", PW).await;
        let mut answers = Vec::new();
        for i in 0..8 {
            let err = relay
                .login(&format!("pc-guess-{i}"), PW)
                .await
                .err()
                .unwrap();
            answers.push(err.to_string());
        }
        assert!(
            answers[..5]
                .iter()
                .all(|a| a.contains("no office PC is registered")),
            "{answers:?}"
        );
        assert!(
            answers[5..]
                .iter()
                .all(|a| a.contains("too many attempts from this address")),
            "{answers:?}"
        );
        // Once the failures are used up, even a real ID gets the same answer: nothing to learn.
        let err = relay.login("pc-ok", PW).await.err().unwrap();
        assert!(err.to_string().contains("too many attempts"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_passwords_also_cost_the_guessers_address_at_the_relay() {
        let relay = relay_with_failure_budget(0.001, 3.0).await;
        let (_desktop, _agent) = relay.office_pc("pc-ok", PW).await;
        for _ in 0..3 {
            let err = relay.login("pc-ok", "a guess").await.err().unwrap();
            assert!(err.to_string().starts_with("wrong password"), "{err}");
        }
        // The agent reported each failure; the relay charged this address. The agent's own
        // lockout (5 tries) has not even started.
        let mut refused = false;
        for _ in 0..20 {
            let err = relay.login("pc-ok", "another guess").await.err().unwrap();
            if err
                .to_string()
                .contains("too many attempts from this address")
            {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(refused, "the relay never throttled the guessing address");
    }
}
