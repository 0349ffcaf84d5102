//! Open sessions end when what they logged in under changes: a revoked device, a changed
//! password, one-time codes turned on, checked at every resume and every 2 s, against the
//! record and secret the login itself was checked with.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use telework_agent::state::DataDir;
use telework_client::{ClientError, LoginOptions, Session};
use telework_net::framed::Framed;
use telework_net::pump::SecureTunnel;
use telework_net::transport::Stream;
use telework_protocol::e2e::keys::{after_login, Role};
use telework_protocol::e2e::messages::{
    AgentHandshake, AgentNotice, ClientHandshake, ClientNotice, EndReason, Refusal,
};
use telework_protocol::e2e::pake::ClientLogin;
use telework_protocol::proof::MachineKey;
use telework_tests::hand_login::start_login;
use telework_tests::{
    echo_once, require_totp, revoke, EchoServer, TestAgent, TestClient, TestRelay,
};
use tokio::net::TcpStream;

const PW: &str = "access-control-password";

/// An agent with a session served like `telework connect`, for the revocation tests.
async fn open_session(
    id: &str,
) -> (
    TestRelay,
    EchoServer,
    TestAgent,
    TestClient,
    Arc<MachineKey>,
) {
    let relay = TestRelay::start().await;
    let (desktop, agent) = relay.office_pc(id, PW).await;
    let device = Arc::new(MachineKey::generate().unwrap());
    let options = LoginOptions {
        device: device.clone(),
        device_name: "tanaka-laptop".into(),
        ..LoginOptions::default()
    };
    let session = Session::login_with(&relay.target(id), PW.as_bytes(), &options)
        .await
        .unwrap();
    let client = TestClient::serve(session).await;
    let mut rdp = TcpStream::connect(client.local).await.unwrap();
    echo_once(&mut rdp).await;
    (relay, desktop, agent, client, device)
}

/// Waits (at most 5 s) for the client's session to end, and returns why.
async fn ended_within_5_s(
    client: TestClient,
) -> Result<telework_client::session::Ended, ClientError> {
    tokio::time::timeout(Duration::from_secs(5), client.task)
        .await
        .expect("the open session ended within 5 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_device_ends_its_open_session() {
    let (_relay, _desktop, agent, client, device) = open_session("pc-revoke").await;
    revoke(&agent, &device);
    let ended = ended_within_5_s(client).await;
    assert!(
        matches!(ended, Err(ClientError::Ended(EndReason::DeviceRevoked))),
        "{ended:?}"
    );
    assert!(ClientError::Ended(EndReason::DeviceRevoked)
        .to_string()
        .contains("revoked this device"));
    assert_eq!(agent.agent.sessions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_password_ends_open_sessions() {
    let (_relay, _desktop, agent, client, _device) = open_session("pc-newpw").await;
    let data = DataDir::open(agent.dir.path()).unwrap();
    let new = data
        .password()
        .unwrap()
        .unwrap()
        .change_password(b"a brand new password")
        .unwrap();
    data.save_password(&new).unwrap();
    let ended = ended_within_5_s(client).await;
    assert!(
        matches!(ended, Err(ClientError::Ended(EndReason::PasswordChanged))),
        "{ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_one_time_codes_on_ends_open_sessions() {
    let (_relay, _desktop, agent, client, _device) = open_session("pc-totp-on").await;
    require_totp(&agent);
    let ended = ended_within_5_s(client).await;
    assert!(
        matches!(ended, Err(ClientError::Ended(EndReason::PolicyChanged))),
        "{ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resume_checks_the_device_again() {
    let relay = TestRelay::start().await;
    let (desktop, agent) = relay.office_pc("pc-resume", PW).await;
    let device = Arc::new(MachineKey::generate().unwrap());
    let options = LoginOptions {
        device: device.clone(),
        ..LoginOptions::default()
    };
    let session = Session::login_with(&relay.target("pc-resume"), PW.as_bytes(), &options)
        .await
        .unwrap();
    let opener = session.opener();
    opener.open().await.unwrap();
    revoke(&agent, &device);
    // At once, before the periodic check: the next tunnel is refused with the reason.
    let err = opener.open().await.err().unwrap();
    assert!(
        matches!(
            err,
            ClientError::Ended(EndReason::DeviceRevoked)
                | ClientError::Refused(Refusal::SessionInvalid)
        ),
        "{err:?}"
    );
    assert_eq!(desktop.connections(), 1);
}

/// A client that logs in step by step, so the test can act between the steps: pairs through
/// the relay, sends the hello and the OPAQUE request, and returns the tunnel, the login state
/// and the agent's challenge.
async fn login_by_hand(
    relay: &TestRelay,
    id: &str,
) -> (
    Framed<Stream>,
    ClientLogin,
    Vec<u8>,
    telework_protocol::e2e::stretch::StretchParams,
) {
    let mut f = relay.pair(id).await;
    let id: telework_protocol::ComputerId = id.parse().unwrap();
    let (state, answer) = start_login(&mut f, &id, PW.as_bytes()).await;
    let AgentHandshake::LoginChallenge {
        response, stretch, ..
    } = answer
    else {
        panic!("no challenge: {answer:?}")
    };
    (f, state, response, stretch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_while_a_login_is_under_way_ends_that_session() {
    let relay = TestRelay::start().await;
    let (_desktop, agent) = relay.office_pc("pc-midway", PW).await;
    let (mut f, state, response, stretch) = login_by_hand(&relay, "pc-midway").await;
    // IT staff change the password after the agent answered with the old record.
    let data = DataDir::open(agent.dir.path()).unwrap();
    let new = data
        .password()
        .unwrap()
        .unwrap()
        .change_password(b"changed midway")
        .unwrap();
    data.save_password(&new).unwrap();
    // The login with the old password finishes (it was checked against the old record)...
    let id = "pc-midway".parse().unwrap();
    let done =
        tokio::task::spawn_blocking(move || state.finish(PW.as_bytes(), &response, stretch, &id))
            .await
            .unwrap()
            .unwrap();
    f.write(&ClientHandshake::LoginFinish {
        finalization: done.finalization,
    })
    .await
    .unwrap();
    let (keys, _) = after_login(&done.session_key, Role::Client);
    let (stream, leftover) = f.into_parts();
    let mut tunnel = SecureTunnel::new(stream, leftover, keys);
    tunnel
        .send_control(&ClientNotice::DeviceName {
            name: "midway".into(),
        })
        .await
        .unwrap();
    assert!(matches!(
        tunnel.recv_notice().await.unwrap(),
        AgentNotice::SessionReady { .. }
    ));
    // ...but the session it opens is under the old password, so it ends at once.
    let ended = tokio::time::timeout(Duration::from_secs(5), tunnel.recv_notice())
        .await
        .expect("the session ended within 5 s")
        .unwrap();
    assert_eq!(ended, AgentNotice::SessionEnded(EndReason::PasswordChanged));
}
