//! A malicious relay records, replays, reorders, truncates and flips bytes in tunnels, swaps
//! tunnels between sessions, opens tunnels nobody asked for, and replays machine proofs. Every attack must end in
//! a refused or closed session, never in altered plaintext accepted as genuine and never in a
//! connection to the desktop service without the password.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use telework_client::profile::Profile;
use telework_client::{ClientError, LoginOptions, Session};
use telework_net::framed::Framed;
use telework_net::transport::{Role, Stream};
use telework_protocol::e2e::messages::{AgentHandshake, ClientHandshake, Refusal};
use telework_protocol::e2e::pake::PasswordRecord;
use telework_protocol::frame::decode_frame;
use telework_protocol::messages::{AgentToRelay, RelayOpens, RelayToAgent};
use telework_protocol::ErrorCode;
use telework_relay::limits::Limits;
use telework_relay::RelayOptions;
use telework_tests::evil::{Attack, Direction, EvilRelay};
use telework_tests::hand_login::start_login;
use telework_tests::on_both_transports;
use telework_tests::{EchoServer, TestRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PW: &str = "malicious-relay-password";

async fn evil_relay(hook: Arc<EvilRelay>) -> TestRelay {
    TestRelay::start_with(RelayOptions {
        splice_hook: Some(hook),
        limits: Limits::unlimited(),
        ..Default::default()
    })
    .await
}

fn attacks(offsets: &[usize]) -> Vec<Attack> {
    let mut out = Vec::new();
    for &direction in &[Direction::ToAgent, Direction::ToClient] {
        for &offset in offsets {
            out.push(Attack::FlipBit { direction, offset });
            out.push(Attack::Truncate { direction, offset });
        }
        out.push(Attack::Duplicate {
            direction,
            offset: 0,
        });
        out.push(Attack::Reorder {
            direction,
            offset: 0,
        });
        out.push(Attack::Duplicate {
            direction,
            offset: offsets[offsets.len() / 2],
        });
    }
    out
}

/// One login through a relay that attacks the login tunnel; returns (attack applied, login
/// succeeded, desktop connections).
async fn attacked_login(attack: Attack) -> (bool, bool, usize) {
    let hook = EvilRelay::new(vec![attack]);
    let relay = evil_relay(hook.clone()).await;
    let (desktop, _agent) = relay.office_pc("pc-evil", PW).await;
    let login = tokio::time::timeout(Duration::from_secs(40), relay.login("pc-evil", PW)).await;
    let ok = matches!(login, Ok(Ok(_)));
    (
        hook.applied.load(Ordering::SeqCst),
        ok,
        desktop.connections(),
    )
}

on_both_transports! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tampering_with_the_login_never_logs_in_or_reaches_the_desktop() {
        let cases = attacks(&[0, 3, 4, 10, 40, 80, 150, 300, 600]);
        let results = futures_join_all(cases.iter().map(|a| attacked_login(*a))).await;
        let mut applied = 0;
        for (attack, (was_applied, ok, connections)) in cases.iter().zip(results) {
            assert_eq!(connections, 0, "{attack:?} reached the desktop");
            if was_applied {
                applied += 1;
                assert!(!ok, "{attack:?} was applied but the login succeeded");
            }
        }
        assert!(applied >= 20, "only {applied} attacks touched the login");
    }
}

/// A login, then one tunnel through an attacked splice, carrying 100 kB to an echo service.
/// Returns (applied, tunnel refused or pump failed, received bytes are a prefix of sent).
async fn attacked_tunnel(attack: Attack) -> (bool, bool, bool) {
    let hook = EvilRelay::new(vec![Attack::None, attack]);
    let relay = evil_relay(hook.clone()).await;
    let (_desktop, _agent) = relay.office_pc("pc-evil", PW).await;
    let session = relay.login("pc-evil", PW).await.unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let run = async {
        let tunnel = match session.opener().open().await {
            Ok(t) => t,
            Err(_) => return (true, Vec::new()),
        };
        let (local, app) = tokio::io::duplex(64 * 1024);
        let pump = tokio::spawn(tunnel.pump(local));
        let (mut app_r, mut app_w) = tokio::io::split(app);
        let to_send = data.clone();
        let writer = tokio::spawn(async move {
            let _ = app_w.write_all(&to_send).await;
            let _ = app_w.shutdown().await;
        });
        let mut received = Vec::new();
        let _ = app_r.read_to_end(&mut received).await;
        let _ = writer.await;
        let failed = !matches!(pump.await, Ok(Ok(_)));
        (failed, received)
    };
    let (failed, received) = tokio::time::timeout(Duration::from_secs(40), run)
        .await
        .unwrap_or((true, Vec::new()));
    let prefix = received.len() <= data.len() && received == data[..received.len()];
    (hook.applied.load(Ordering::SeqCst), failed, prefix)
}

on_both_transports! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tampering_with_a_tunnel_is_detected_and_never_delivers_altered_bytes() {
        let cases = attacks(&[0, 20, 60, 100, 200, 1_000, 20_000, 60_000, 99_000]);
        let results = futures_join_all(cases.iter().map(|a| attacked_tunnel(*a))).await;
        let mut applied = 0;
        for (attack, (was_applied, failed, prefix)) in cases.iter().zip(results) {
            assert!(prefix, "{attack:?} delivered bytes that were not sent");
            if was_applied {
                applied += 1;
                assert!(
                    failed,
                    "{attack:?} was applied but the tunnel ended cleanly"
                );
            }
        }
        assert!(applied >= 20, "only {applied} attacks touched the tunnel");
    }
}

on_both_transports! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn swapping_tunnels_between_sessions_fails_closed() {
        // Logins crossed: the client for pc-a talks to pc-b's agent (same password even).
        let relay = evil_relay(EvilRelay::swapping(0)).await;
        let (desktop, _a) = relay.office_pc("pc-a", PW).await;
        let _b = relay.agent("pc-b", PW).target(desktop.addr).run().await;
        let (ra, rb) = tokio::join!(relay.login("pc-a", PW), relay.login("pc-b", PW));
        assert!(ra.is_err() && rb.is_err(), "crossed logins must fail");
        assert_eq!(desktop.connections(), 0);

        // Sessions set up honestly, then their tunnels crossed.
        let relay = evil_relay(EvilRelay::swapping(2)).await;
        let _a = relay.agent("pc-a", PW).target(desktop.addr).run().await;
        let _b = relay.agent("pc-b", PW).target(desktop.addr).run().await;
        let sa = relay.login("pc-a", PW).await.unwrap();
        let sb = relay.login("pc-b", PW).await.unwrap();
        let (opener_a, opener_b) = (sa.opener(), sb.opener());
        let (oa, ob) = tokio::join!(opener_a.open(), opener_b.open());
        assert!(oa.is_err() && ob.is_err(), "crossed tunnels must fail");
        assert_eq!(
            desktop.connections(),
            0,
            "no desktop connection for a crossed tunnel"
        );
    }
}

/// Sends recorded client bytes on a fresh pairing and returns what the agent answered.
async fn replay(relay: &TestRelay, id: &str, bytes: &[u8]) -> Vec<AgentHandshake> {
    let (mut s, _) = relay.pair(id).await.into_parts();
    let _ = s.write_all(bytes).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer)).await;
    let mut buf = BytesMut::from(&answer[..]);
    let mut frames = Vec::new();
    while let Ok(Some(m)) = decode_frame::<AgentHandshake>(&mut buf) {
        frames.push(m);
    }
    frames
}

on_both_transports! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recorded_logins_and_tunnels_cannot_be_replayed() {
        let hook = EvilRelay::new(vec![]);
        let relay = evil_relay(hook.clone()).await;
        let (desktop, _agent) = relay.office_pc("pc-rec", PW).await;
        let session = relay.login("pc-rec", PW).await.unwrap();
        let tunnel = session.opener().open().await.unwrap();
        let (local, mut app) = tokio::io::duplex(1024);
        let pump = tokio::spawn(tunnel.pump(local));
        app.write_all(b"recorded desktop bytes").await.unwrap();
        app.shutdown().await.unwrap();
        let mut back = Vec::new();
        app.read_to_end(&mut back).await.unwrap();
        pump.await.unwrap().unwrap();
        assert_eq!(desktop.connections(), 1);
        let recorded = hook.recorded.lock().unwrap().clone();
        assert_eq!(recorded.len(), 2);

        // The recorded login: the agent answers the hello with a fresh nonce, so the recorded
        // device proof (over the old nonce) fails and no OPAQUE answer is ever sent.
        let answers = replay(&relay, "pc-rec", &recorded[0]).await;
        assert!(
            matches!(answers.first(), Some(AgentHandshake::Hello { .. })),
            "{answers:?}"
        );
        assert!(
            matches!(
                answers.get(1),
                Some(AgentHandshake::LoginRefused {
                    why: Refusal::ProtocolViolation,
                    ..
                })
            ),
            "{answers:?}"
        );
        assert_eq!(answers.len(), 2, "{answers:?}");

        // The recorded tunnel: a fresh agent nonce, so the old MAC fails.
        let answers = replay(&relay, "pc-rec", &recorded[1]).await;
        assert!(
            matches!(
                answers.first(),
                Some(AgentHandshake::ResumeChallenge { .. })
            ),
            "{answers:?}"
        );
        assert_eq!(
            answers.get(1),
            Some(&AgentHandshake::Refused(Refusal::SessionInvalid))
        );
        assert_eq!(
            desktop.connections(),
            1,
            "replays never reached the desktop"
        );
    }
}

on_both_transports! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn made_up_tunnels_and_replayed_machine_proofs_get_nothing() {
        let relay = TestRelay::start().await;
        let (desktop, agent) = relay.office_pc("pc-proof", PW).await;
        let id: telework_protocol::ComputerId = "pc-proof".parse().unwrap();

        // The relay opens tunnels nobody asked for: one silent, one with garbage, one closed at
        // once. The agent refuses each and keeps serving.
        let (ticket, connection) = relay
            .relay
            .hub
            .request_tunnel(&id, "127.0.0.1".parse().unwrap(), std::time::Instant::now())
            .unwrap();
        let mut silent = Framed::new(connection.open().await.unwrap());
        silent
            .write(&RelayOpens::Tunnel { tunnel: ticket })
            .await
            .unwrap();
        let mut garbage = Framed::new(connection.open().await.unwrap());
        garbage
            .write(&RelayOpens::Tunnel { tunnel: ticket })
            .await
            .unwrap();
        let (mut g, _) = garbage.into_parts();
        g.write_all(&[0xff; 64]).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), g.read_to_end(&mut answer)).await;
        drop(connection.open().await.unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(relay.relay.hub.is_online(&id));
        relay
            .login("pc-proof", PW)
            .await
            .unwrap()
            .opener()
            .open()
            .await
            .unwrap();
        assert_eq!(desktop.connections(), 1, "only the logged-in tunnel");
        drop(silent);

        // A machine proof made for one connection, replayed on another.
        let key = telework_agent::state::DataDir::open(agent.dir.path())
            .unwrap()
            .machine_key()
            .unwrap();
        let first = relay.dialer(Role::Agent).dial().await.unwrap().connection;
        let proof = key.prove(&id, first.channel_binding());
        let second = relay.dialer(Role::Agent).dial().await.unwrap().connection;
        let mut control = Framed::new(second.accept().await.unwrap());
        assert!(matches!(
            control.read::<RelayOpens>().await.unwrap(),
            RelayOpens::Control { .. }
        ));
        control
            .write(&AgentToRelay::Hello {
                version: telework_protocol::messages::PROTOCOL_VERSION,
                id: id.clone(),
                proof,
                unreachable: Vec::new(),
            })
            .await
            .unwrap();
        assert_eq!(
            control.read::<RelayToAgent>().await.unwrap(),
            RelayToAgent::Error(ErrorCode::BadProof)
        );
        assert!(
            relay.relay.hub.is_online(&id),
            "the genuine agent stays online"
        );
    }
}

async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// The relay itself opens a tunnel to the office PC (as it does for a client) and starts a
/// login with `guess`, getting the OPAQUE answer that lets it test the guess offline. Returns
/// the open tunnel (never answered further) and the agent's answer.
async fn relay_starts_login(
    relay: &TestRelay,
    id: &telework_protocol::ComputerId,
    guess: &str,
) -> (Framed<Stream>, AgentHandshake) {
    let (ticket, connection) = relay
        .relay
        .hub
        .request_tunnel(id, "127.0.0.1".parse().unwrap(), std::time::Instant::now())
        .unwrap();
    let mut f = Framed::new(connection.open().await.unwrap());
    f.write(&RelayOpens::Tunnel { tunnel: ticket })
        .await
        .unwrap();
    let (_state, answer) = start_login(&mut f, id, guess.as_bytes()).await;
    (f, answer)
}

on_both_transports! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn logins_a_relay_abandons_stay_counted_across_a_restart() {
        let relay = TestRelay::start().await;
        let (desktop, agent) = relay.office_pc("pc-guess", PW).await;
        let id: telework_protocol::ComputerId = "pc-guess".parse().unwrap();

        // Five tunnels, a login with a different guess on each; every answer lets the relay test
        // one guess offline. None is ever finished.
        let mut held = Vec::new();
        for guess in 0..5 {
            let (tunnel, answer) = relay_starts_login(&relay, &id, &format!("guess-{guess}")).await;
            assert!(
                matches!(answer, AgentHandshake::LoginChallenge { .. }),
                "{answer:?}"
            );
            held.push(tunnel);
        }
        // The relay says the machine proof was bad: the agent treats it as permanent and exits,
        // with the five logins still waiting.
        relay
            .relay
            .hub
            .broadcast(RelayToAgent::Error(ErrorCode::BadProof));
        let mut online = agent.agent.online();
        tokio::time::timeout(Duration::from_secs(10), online.wait_for(|up| !*up))
            .await
            .unwrap()
            .unwrap();
        // What a killed process leaves on disk, and a service manager's restart from it.
        let dir = agent.copy_data_dir();
        drop(agent);
        let data = telework_agent::state::DataDir::open(dir.path()).unwrap();
        assert_eq!(
            data.lockout().unwrap().shared().failures,
            5,
            "every answered guess is on disk"
        );
        let restarted = telework_agent::Agent::load(data, desktop.addr.to_string()).unwrap();
        let task = telework_tests::run_until_online(restarted).await;
        let sixth = relay.login("pc-guess", PW).await;
        assert!(
            matches!(sixth, Err(ClientError::Refused(Refusal::LockedOut { .. }))),
            "the sixth try, even with the right password, is refused: {:?}",
            sixth.err()
        );
        assert_eq!(desktop.connections(), 0);
        task.abort();
        drop(held);
    }
}

/// Starts an office PC that is not the one the client pinned: a copy of the real agent's
/// machine (so the relay routes to it) whose password record the relay made itself from
/// `guess`, as a relay that impersonates the office PC would.
async fn impersonator(
    machine: &std::path::Path,
    desktop: &EchoServer,
    guess: &str,
) -> (
    tempfile::TempDir,
    tokio::task::JoinHandle<Result<(), telework_agent::AgentError>>,
) {
    let dir = telework_tests::copy_dir(machine);
    let data = telework_agent::state::DataDir::open(dir.path()).unwrap();
    data.save_password(&PasswordRecord::create(guess.as_bytes()).unwrap())
        .unwrap();
    let agent = telework_agent::Agent::load(data, desktop.addr.to_string()).unwrap();
    (dir, telework_tests::run_until_online(agent).await)
}

on_both_transports! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relay_with_its_own_record_learns_nothing_from_a_pinned_client() {
        let hook = EvilRelay::new(vec![]);
        let relay = evil_relay(hook.clone()).await;
        let (desktop, real) = relay.office_pc("pc-pinned", PW).await;
        let profile_dir = tempfile::tempdir().unwrap();
        let options = LoginOptions {
            profile: Some(Profile::open(profile_dir.path()).unwrap()),
            ..LoginOptions::default()
        };
        let target = relay.target("pc-pinned");
        // The first login pins the real office PC's key on this relay.
        drop(
            Session::login_with(&target, PW.as_bytes(), &options)
                .await
                .unwrap(),
        );
        let pinned_logins = hook.recorded.lock().unwrap().len();
        // The relay will route the client to a machine of its own making: the real office PC is
        // gone (its data dir is what the impostors start from).
        let machine = real.copy_data_dir();
        real.stop().await;

        let mut outcomes = Vec::new();
        for guess in [PW, "a-wrong-guess"] {
            // The relay answers the client from a record of its own for `guess`.
            let (fake_dir, fake) = impersonator(machine.path(), &desktop, guess).await;
            let fake_data = telework_agent::state::DataDir::open(fake_dir.path()).unwrap();
            let attempts_before = fake_data.lockout().unwrap();
            let result = Session::login_with(&target, PW.as_bytes(), &options).await;
            let err = result.err().expect("an impersonated login never succeeds");
            assert!(
                matches!(err, ClientError::AgentKeyChanged { .. }),
                "{guess}: {err:?}"
            );
            // All the relay got from the client was its hello: nothing that depends on the
            // password, so nothing to tell a right guess from a wrong one.
            let recorded = hook.recorded.lock().unwrap().clone();
            let sent = recorded.last().unwrap().clone();
            let mut buf = BytesMut::from(&sent[..]);
            let mut frames = Vec::new();
            while let Ok(Some(m)) = decode_frame::<ClientHandshake>(&mut buf) {
                frames.push(m);
            }
            assert!(
                matches!(&frames[..], [ClientHandshake::Hello { .. }]),
                "{guess}: {frames:?}"
            );
            assert_eq!(
                fake_data.lockout().unwrap(),
                attempts_before,
                "no attempt was started"
            );
            outcomes.push((err.to_string(), sent.len()));
            fake.abort();
        }
        assert_eq!(
            outcomes[0], outcomes[1],
            "right and wrong guesses look the same"
        );
        assert!(hook.recorded.lock().unwrap().len() > pinned_logins);
        assert_eq!(desktop.connections(), 0);
    }
}
