//! What the relay's operator can see and do, on both transports: live sessions with the
//! device that proved itself and the bytes each way, ending a session (the client says so
//! and does not reconnect), disabling an office PC, and the metrics that count all of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use telework_client::ClientError;
use telework_protocol::proof::key_fingerprint;
use telework_protocol::ErrorCode;
use telework_tests::on_both_transports;
use telework_tests::{options_with_profile, TestClient, TestRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PW: &str = "correct horse battery";

/// Sends `data` through the client's local port and reads the echo back; the connection
/// stays open.
async fn echo(local: std::net::SocketAddr, data: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(local).await.unwrap();
    conn.write_all(data).await.unwrap();
    let mut back = vec![0; data.len()];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(back, data);
    conn
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

on_both_transports! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_operator_sees_a_live_session_and_ends_it() {
        let relay = TestRelay::start().await;
        let (_desktop, _agent) = relay.office_pc("pc-op", PW).await;
        let dir = tempfile::tempdir().unwrap();
        let options = options_with_profile(&telework_client::profile::Profile::open(dir.path()).unwrap());
        let device = key_fingerprint(&options.device.public_key());
        let session = telework_client::Session::login_with(
            &relay.target("pc-op"),
            PW.as_bytes(),
            &options,
        )
        .await
        .unwrap();
        let client = TestClient::serve(session).await;
        let _open = echo(client.local, &[7; 10_000]).await;

        let live = relay.relay.sessions.list();
        assert_eq!(live.len(), 1, "one session: {live:?}");
        let s = &live[0];
        assert_eq!(s.computer_id.as_str(), "pc-op");
        assert_eq!(s.device, device, "named by the device key it proved");
        assert!(s.client.ip().is_loopback());
        let expected = match telework_tests::current_transport() {
            telework_net::transport::TransportChoice::Tcp => "TLS/TCP",
            _ => "QUIC",
        };
        assert_eq!(s.transport, expected);
        assert!(s.bytes_up >= 10_000 && s.bytes_down >= 10_000, "{s:?}");
        assert!(s.tunnels >= 1);

        let metrics = relay.relay.metrics_text();
        assert!(metrics.contains("telework_sessions_active 1"), "{metrics}");

        assert!(relay.relay.end_session(s.id));
        let ended = tokio::time::timeout(Duration::from_secs(10), client.task)
            .await
            .expect("the client stops at once")
            .unwrap();
        match ended {
            Err(e @ ClientError::Relay(ErrorCode::EndedByOperator)) => {
                assert_eq!(e.to_string(), "the relay operator ended the session");
            }
            other => panic!("expected the operator's end, got {other:?}"),
        }
        until("the session leaves the list", || {
            relay.relay.sessions.count() == 0
        })
        .await;
        assert!(!relay.relay.end_session(s.id), "already over");
        // The audit log has the session's start and end: who by device, from where, how
        // long, the bytes, and why it ended.
        let audit = relay.relay.audit.clone();
        assert!(tokio::task::spawn_blocking(move || audit.flush(Duration::from_secs(5)))
            .await
            .unwrap());
        let rows = |kind: &str| {
            telework_tests::block_on(relay.relay.registry.audit_rows(
                &telework_relay::registry::audit::AuditFilter {
                    kind: Some(kind.into()),
                    computer_id: Some("pc-op".into()),
                    ..Default::default()
                },
            ))
            .unwrap()
        };
        let started = rows("session_started");
        assert_eq!(started.len(), 1, "{started:?}");
        let ended = rows("session_ended");
        assert_eq!(ended.len(), 1, "{ended:?}");
        let detail = &ended[0].detail;
        assert_eq!(detail["device"], device.as_str(), "{detail}");
        assert_eq!(detail["reason"], "ended by the relay operator", "{detail}");
        assert!(detail["bytes_up"].as_u64().unwrap() >= 10_000, "{detail}");
        assert!(ended[0].address.as_deref().unwrap().starts_with("127.0.0.1"));
        let metrics = relay.relay.metrics_text();
        assert!(metrics.contains("telework_sessions_active 0"), "{metrics}");
        assert!(
            !metrics.contains("telework_relayed_bytes_total{direction=\"up\"} 0\n"),
            "{metrics}"
        );
    }
}

on_both_transports! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_disabled_office_pc_goes_offline_and_stays_refused_until_enabled() {
        let relay = TestRelay::start().await;
        let (_desktop, agent) = relay.office_pc("pc-off", PW).await;
        let client = TestClient::serve(relay.login("pc-off", PW).await.unwrap()).await;
        let _open = echo(client.local, b"hello").await;
        let id = "pc-off".parse().unwrap();
        until("the agent names its version", || {
            relay
                .relay
                .hub
                .online()
                .first()
                .is_some_and(|a| a.agent_version.starts_with("telework-agent "))
        })
        .await;

        assert!(relay.relay.set_disabled(&id, true).await.unwrap());
        let ended = tokio::time::timeout(Duration::from_secs(10), client.task)
            .await
            .expect("the session ends")
            .unwrap();
        assert!(
            matches!(ended, Err(ClientError::Relay(ErrorCode::Disabled))),
            "{ended:?}"
        );
        until("the agent is offline", || !relay.relay.hub.is_online(&id)).await;
        // The agent keeps trying; the relay keeps refusing.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!relay.relay.hub.is_online(&id));
        match relay.login("pc-off", PW).await {
            Err(ClientError::Relay(ErrorCode::Offline)) => {}
            other => panic!("expected offline, got {:?}", other.map(|_| ())),
        }

        assert!(relay.relay.set_disabled(&id, false).await.unwrap());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        while !relay.relay.hub.is_online(&id) {
            assert!(tokio::time::Instant::now() < deadline, "back online once enabled");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let client = TestClient::serve(relay.login("pc-off", PW).await.unwrap()).await;
        let _open = echo(client.local, b"again").await;
        client.stop().await.unwrap();
        drop(agent);
    }
}
