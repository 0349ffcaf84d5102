//! In-process end to end: relay, agent and client on 127.0.0.1 with real TLS, the OPAQUE
//! login, resumed tunnels and the record layer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use telework_client::profile::Profile;
use telework_client::{ClientError, Session};
use telework_net::connect::ConnectError;
use telework_net::transport::TransportChoice;
use telework_protocol::e2e::messages::{EndReason, Refusal};
use telework_protocol::{CertFingerprint, ErrorCode};
use telework_tests::on_both_transports_and_a_cluster;
use telework_tests::{options_with_profile, SinkServer, TestClient, TestRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PW: &str = "correct horse battery";

async fn echo_round_trip(local: std::net::SocketAddr, data: &[u8]) {
    let mut conn = TcpStream::connect(local).await.unwrap();
    let (mut r, mut w) = conn.split();
    let write = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let read = async {
        let mut back = Vec::with_capacity(data.len());
        r.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = tokio::join!(write, read);
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");
}

on_both_transports_and_a_cluster! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_flow_both_ways_one_byte_and_one_mebibyte() {
        let relay = TestRelay::start().await;
        let (desktop, _agent) = relay.office_pc("pc-1", PW).await;
        let client = TestClient::serve(relay.login("pc-1", PW).await.unwrap()).await;
        echo_round_trip(client.local, b"x").await;
        let mib: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + 3) as u8).collect();
        echo_round_trip(client.local, &mib).await;
        assert_eq!(
            desktop.connections(),
            2,
            "one tunnel per local connection, no password re-prompt"
        );
        client.stop().await.unwrap();
    }
}

on_both_transports_and_a_cluster! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sixty_four_mebibytes_arrive_intact() {
        let relay = TestRelay::start().await;
        let sink = SinkServer::start().await;
        let _agent = relay.agent("pc-big", PW).target(sink.addr).run().await;
        let client = TestClient::serve(relay.login("pc-big", PW).await.unwrap()).await;
        let mut conn = TcpStream::connect(client.local).await.unwrap();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut block = vec![0u8; 1 << 20];
        for i in 0..64u32 {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (j as u32 ^ i.wrapping_mul(2_654_435_761)) as u8;
            }
            ctx.update(&block);
            conn.write_all(&block).await.unwrap();
        }
        conn.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(120), conn.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer.len(), 8 + 32);
        assert_eq!(
            u64::from_be_bytes(answer[..8].try_into().unwrap()),
            64 << 20
        );
        assert_eq!(
            &answer[8..],
            ctx.finish().as_ref(),
            "SHA-256 of what arrived"
        );
    }
}

on_both_transports_and_a_cluster! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_close_passes_through_the_chain() {
        let relay = TestRelay::start().await;
        let (_desktop, _agent) = relay.office_pc("pc-hc", PW).await;
        let client = TestClient::serve(relay.login("pc-hc", PW).await.unwrap()).await;
        let mut conn = TcpStream::connect(client.local).await.unwrap();
        conn.write_all(b"before close").await.unwrap();
        // Close our sending side only; the echo server sees EOF, finishes echoing, closes.
        conn.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, b"before close");
    }
}

on_both_transports_and_a_cluster! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_sessions() {
        // A load test from one address: per-address limits would be the thing measured.
        let options = telework_relay::RelayOptions {
            limits: telework_relay::limits::Limits::unlimited(),
            ..Default::default()
        };
        let relay = TestRelay::start_with(options).await;
        let (desktop, _a) = relay.office_pc("pc-a", PW).await;
        let _b = relay
            .agent("pc-b", "another password")
            .target(desktop.addr)
            .run()
            .await;
        let mut clients = Vec::new();
        for i in 0..8 {
            let (id, pw) = if i % 2 == 0 {
                ("pc-a", PW)
            } else {
                ("pc-b", "another password")
            };
            clients.push(TestClient::serve(relay.login(id, pw).await.unwrap()).await);
        }
        let mut conns = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            for j in 0..4 {
                let local = c.local;
                conns.push(tokio::spawn(async move {
                    let data: Vec<u8> = (0..100_000u32)
                        .map(|k| (k as usize * (i + 1) + j) as u8)
                        .collect();
                    echo_round_trip(local, &data).await;
                }));
            }
        }
        for c in conns {
            tokio::time::timeout(Duration::from_secs(60), c)
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(desktop.connections(), 32);
        for c in clients {
            c.stop().await.unwrap();
        }
    }
}

on_both_transports_and_a_cluster! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_and_offline_computer_ids_are_told_apart() {
        let relay = TestRelay::start().await;
        let err = relay.login("pc-nobody", PW).await.err().unwrap();
        assert!(
            matches!(err, ClientError::Relay(ErrorCode::UnknownId)),
            "{err:?}"
        );
        let (_desktop, agent) = relay.office_pc("pc-off", PW).await;
        agent.stop().await;
        let err = relay.login("pc-off", PW).await.err().unwrap();
        assert!(
            matches!(err, ClientError::Relay(ErrorCode::Offline)),
            "{err:?}"
        );
        assert!(err.to_string().contains("office PC is offline"));
    }
}

on_both_transports_and_a_cluster! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_password_is_refused_with_tries_left_and_never_reaches_the_target() {
        let relay = TestRelay::start().await;
        let (desktop, _agent) = relay.office_pc("pc-pw", PW).await;
        // Before anything is pinned, a failure cannot be confirmed as the office PC's own.
        let err = relay.login("pc-pw", "wrong password").await.err().unwrap();
        assert!(
            matches!(err, ClientError::WrongPasswordUnconfirmed),
            "{err:?}"
        );
        assert!(
            !err.is_wrong_password(),
            "no second prompt for an unconfirmed failure"
        );
        // A client that pinned the office PC gets its proven count.
        let home = tempfile::tempdir().unwrap();
        let options = options_with_profile(&Profile::open(home.path()).unwrap());
        let target = relay.target("pc-pw");
        let login =
            |password: &'static str| Session::login_with(&target, password.as_bytes(), &options);
        login(PW).await.unwrap();
        let err = login("wrong password").await.err().unwrap();
        assert!(
            err.is_wrong_password(),
            "a failure the office PC proved may be asked again"
        );
        assert!(
            matches!(
                err,
                ClientError::Refused(Refusal::WrongPassword { tries_left: 4 })
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "wrong password, 4 tries left before the office PC locks out"
        );
        for left in (1..4).rev() {
            let err = login("still wrong").await.err().unwrap();
            assert!(
                matches!(err, ClientError::Refused(Refusal::WrongPassword { tries_left }) if tries_left == left),
                "{err:?}"
            );
        }
        let err = login("fifth wrong").await.err().unwrap();
        assert!(
            matches!(
                err,
                ClientError::Refused(Refusal::LockedOut {
                    retry_after_secs: 60
                })
            ),
            "{err:?}"
        );
        // Locked out: even the right password waits.
        let err = login(PW).await.err().unwrap();
        assert!(
            matches!(err, ClientError::Refused(Refusal::LockedOut { .. })),
            "{err:?}"
        );
        assert_eq!(
            desktop.connections(),
            0,
            "the desktop service was never contacted"
        );
    }
}

on_both_transports_and_a_cluster! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_relay_fingerprint_is_refused_before_anything_is_sent() {
        let relay = TestRelay::start().await;
        let mut target = relay.target("pc-1");
        target.trust = telework_net::tls::RelayTrust::Fingerprint(CertFingerprint([0xaa; 32]));
        let err = telework_client::Session::login(&target, PW.as_bytes())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                ClientError::Connect(ConnectError::CertificateRejected { .. })
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("certificate we do not trust"));
    }
}

on_both_transports_and_a_cluster! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_relay_says_so() {
        // Bind then drop to get a port that nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let relay = TestRelay::start().await;
        let mut target = relay.target("pc-1");
        target.relay = format!("127.0.0.1:{port}").parse().unwrap();
        let err = telework_client::Session::login(&target, PW.as_bytes())
            .await
            .err()
            .unwrap();
        // TCP is refused at once; over QUIC a closed UDP port is silence until the deadline.
        if telework_tests::current_transport() == TransportChoice::Quic {
            assert!(
                matches!(err, ClientError::Connect(ConnectError::Timeout { .. })),
                "{err:?}"
            );
            return;
        }
        assert!(
            matches!(err, ClientError::Connect(ConnectError::Unreachable { .. })),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("cannot reach the relay at 127.0.0.1:"),
            "{err}"
        );
    }
}

on_both_transports_and_a_cluster! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn version_mismatch_is_named() {
        let relay = TestRelay::start().await;
        let mut config = telework_net::tls::RelayTrust::Fingerprint(relay.fingerprint)
            .client_config(b"telework/9-client")
            .unwrap();
        std::sync::Arc::get_mut(&mut config).unwrap().alpn_protocols =
            vec![b"telework/9-client".to_vec()];
        let addr = relay.addr.to_string().parse().unwrap();
        let err = if telework_tests::current_transport() == TransportChoice::Quic {
            telework_net::transport::quic::dial(&addr, relay.addr, config, 16)
                .await
                .err()
                .unwrap()
        } else {
            telework_net::connect::connect(&addr, config)
                .await
                .err()
                .unwrap()
        };
        assert!(
            matches!(err, ConnectError::VersionMismatch { .. }),
            "{err:?}"
        );
    }
}

on_both_transports_and_a_cluster! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refused_desktop_service_is_reported() {
        let relay = TestRelay::start().await;
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let _agent = relay
            .agent("pc-rdp-off", PW)
            .target(closed_port)
            .run()
            .await;
        let session = relay.login("pc-rdp-off", PW).await.unwrap();
        let err = session.opener().open().await.err().unwrap();
        assert!(matches!(err, ClientError::TargetRefused), "{err:?}");
        assert!(err.to_string().contains("is Remote Desktop enabled"));
    }
}

on_both_transports_and_a_cluster! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn agent_shutdown_ends_the_session_with_a_reason() {
        let relay = TestRelay::start().await;
        let (_desktop, agent) = relay.office_pc("pc-stop", PW).await;
        let client = TestClient::serve(relay.login("pc-stop", PW).await.unwrap()).await;
        agent.stop().await;
        let ended = tokio::time::timeout(Duration::from_secs(10), client.task)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(ended, Err(ClientError::Ended(EndReason::AgentShutdown))),
            "{ended:?}"
        );
    }
}

on_both_transports_and_a_cluster! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn agent_reconnects_after_a_relay_restart() {
        let relay = TestRelay::start().await;
        let (_desktop, agent) = relay.office_pc("pc-re", PW).await;
        let relay = relay.restart().await;
        let id = "pc-re".parse().unwrap();
        // Back-off starts at 0.5 s: the agent should be back well within 20 s.
        for _ in 0..200 {
            if relay.is_online(&id) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(relay.is_online(&id), "agent did not come back");
        assert!(*agent.agent.online().borrow());
        let client = TestClient::serve(relay.login("pc-re", PW).await.unwrap()).await;
        echo_round_trip(client.local, b"after restart").await;
    }
}

/// Echoes `data` through `local`, or says why not (for retries while a session reconnects).
async fn try_echo(local: std::net::SocketAddr, data: &[u8]) -> Result<(), String> {
    let mut conn = TcpStream::connect(local).await.map_err(|e| e.to_string())?;
    let (mut r, mut w) = conn.split();
    let write = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let mut back = Vec::new();
    let (wrote, read) = tokio::join!(write, r.read_to_end(&mut back));
    wrote.map_err(|e| e.to_string())?;
    read.map_err(|e| e.to_string())?;
    (back == data)
        .then_some(())
        .ok_or_else(|| format!("{} of {} bytes back", back.len(), data.len()))
}

on_both_transports_and_a_cluster! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_goes_on_after_a_relay_restart_without_the_password() {
        let relay = TestRelay::start().await;
        let (_desktop, _agent) = relay.office_pc("pc-on", PW).await;
        let client = TestClient::serve(relay.login("pc-on", PW).await.unwrap()).await;
        echo_round_trip(client.local, b"before the restart").await;
        let relay = relay.restart().await;
        // The agent comes back, the client re-attaches its session, and the next local
        // connection gets a tunnel with no login: the RDP client's own reconnect.
        let mut last = String::new();
        for _ in 0..100 {
            match try_echo(client.local, b"after the restart").await {
                Ok(()) => break,
                Err(e) => last = e,
            }
            assert!(!client.task.is_finished(), "the session ended: {last}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        try_echo(client.local, b"after the restart")
            .await
            .unwrap_or_else(|e| panic!("no tunnel after the restart: {e} ({last})"));
        assert!(!client.task.is_finished(), "the session is still on");
        drop(relay);
    }
}
