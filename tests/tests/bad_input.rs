//! Hostile and broken peers: garbage, oversize frames, stalls and bad tickets. Each is closed
//! with a reason (or cleanly), and the relay and agent keep serving everyone else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bytes::BytesMut;
use telework_net::connect::connect;
use telework_net::framed::Framed;
use telework_net::tls::RelayTrust;
use telework_protocol::frame::decode_frame;
use telework_protocol::messages::{
    alpn, RelayToAgent, RelayToClient, RelayToTunnel, TunnelToRelay,
};
use telework_protocol::{ErrorCode, Ticket};
use telework_relay::RelayOptions;
use telework_tests::{TestClient, TestRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PW: &str = "bad-input-password";

async fn tls(relay: &TestRelay, role: &[u8]) -> telework_net::connect::RelayConnection {
    let config = RelayTrust::Fingerprint(relay.fingerprint)
        .client_config(role)
        .unwrap();
    connect(&relay.addr.to_string().parse().unwrap(), config)
        .await
        .unwrap()
}

/// Reads until the peer closes; returns what it sent. Fails the test if it takes too long.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the relay closed the connection in time");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversize_frames_are_refused_and_others_keep_working() {
    let relay = TestRelay::start().await;
    let (_desktop, _agent) = relay.office_pc("pc-ok", PW).await;

    // Not TLS at all.
    let mut raw = TcpStream::connect(relay.addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_until_closed(&mut raw).await;

    // Oversize frame on each role: the relay answers "protocol violation" and closes.
    for role in [alpn::CLIENT, alpn::CONTROL, alpn::TUNNEL] {
        let mut s = tls(&relay, role).await;
        s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
            .await
            .unwrap();
        let answer = read_until_closed(&mut s).await;
        let mut buf = BytesMut::from(&answer[..]);
        let code = if role == alpn::CLIENT {
            decode_frame::<RelayToClient>(&mut buf).unwrap()
                == Some(RelayToClient::Error(ErrorCode::ProtocolViolation))
        } else if role == alpn::CONTROL {
            decode_frame::<RelayToAgent>(&mut buf).unwrap()
                == Some(RelayToAgent::Error(ErrorCode::ProtocolViolation))
        } else {
            decode_frame::<RelayToTunnel>(&mut buf).unwrap()
                == Some(RelayToTunnel::Error(ErrorCode::ProtocolViolation))
        };
        assert!(
            code,
            "role {:?} answered {answer:?}",
            String::from_utf8_lossy(role)
        );
    }

    // Well-framed junk.
    let mut s = tls(&relay, alpn::CLIENT).await;
    s.write_all(&[0, 0, 0, 3, 0xee, 0xee, 0xee]).await.unwrap();
    assert!(!read_until_closed(&mut s).await.is_empty());

    relay_still_serves(&relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_ticket_is_refused() {
    let relay = TestRelay::start().await;
    let (_desktop, _agent) = relay.office_pc("pc-ok", PW).await;
    assert_eq!(
        attach_made_up_ticket(&relay, telework_protocol::messages::PROTOCOL_VERSION).await,
        RelayToTunnel::Error(ErrorCode::BadTicket)
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

    // TLS done, but no hello.
    let mut quiet = tls(&relay, alpn::CLIENT).await;
    let answer = read_until_closed(&mut quiet).await;
    let mut buf = BytesMut::from(&answer[..]);
    assert_eq!(
        decode_frame::<RelayToClient>(&mut buf).unwrap(),
        Some(RelayToClient::Error(ErrorCode::ProtocolViolation))
    );

    // Half a frame, then silence.
    let mut half = tls(&relay, alpn::CONTROL).await;
    half.write_all(&[0, 0, 0, 50, 1, 2]).await.unwrap();
    read_until_closed(&mut half).await;

    relay_still_serves(&relay).await;
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

/// The relay's answer to a tunnel attaching a ticket it never issued, speaking minor `version`.
async fn attach_made_up_ticket(relay: &TestRelay, version: u16) -> RelayToTunnel {
    let mut f = Framed::new(tls(relay, alpn::TUNNEL).await);
    f.write(&TunnelToRelay::Attach {
        version,
        ticket: Ticket([7; 16]),
    })
    .await
    .unwrap();
    f.read::<RelayToTunnel>().await.unwrap()
}

/// A client connection that has asked the relay for `pc-ok`, speaking minor `version`.
async fn client_asking_for_pc_ok(
    relay: &TestRelay,
    version: u16,
) -> Framed<telework_net::connect::RelayConnection> {
    let mut f = Framed::new(tls(relay, alpn::CLIENT).await);
    f.write(&telework_protocol::messages::ClientToRelay::Connect {
        version,
        id: "pc-ok".parse().unwrap(),
    })
    .await
    .unwrap();
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_inside_a_paired_tunnel_is_refused_by_the_agent() {
    let relay = TestRelay::start().await;
    let (desktop, _agent) = relay.office_pc("pc-ok", PW).await;
    let mut f =
        client_asking_for_pc_ok(&relay, telework_protocol::messages::PROTOCOL_VERSION).await;
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

/// Software from before the login answer named its stretching parameters (minor version 1)
/// is told to update, on every role, instead of failing inside the end-to-end handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_minor_versions_are_told_to_update() {
    let relay = TestRelay::start().await;
    let (_desktop, _agent) = relay.office_pc("pc-ok", PW).await;
    let mut f = client_asking_for_pc_ok(&relay, 1).await;
    assert_eq!(
        f.read::<RelayToClient>().await.unwrap(),
        RelayToClient::Error(ErrorCode::VersionTooOld)
    );
    assert_eq!(
        attach_made_up_ticket(&relay, 1).await,
        RelayToTunnel::Error(ErrorCode::VersionTooOld)
    );
}
