//! What IT staff require of a login, and what a client trusts: pinned office-PC keys,
//! approved devices, one-time codes, session limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use telework_agent::devices::DeviceStatus;
use telework_agent::policy::Policy;
use telework_agent::state::DataDir;
use telework_client::profile::Profile;
use telework_client::{ClientError, LoginOptions, Session};
use telework_protocol::e2e::messages::{EndReason, Refusal};
use telework_protocol::e2e::pake::PasswordRecord;
use telework_protocol::proof::MachineKey;
use telework_tests::{
    echo_once, options_with_profile, require_approved_devices, require_totp, run_until_online,
    with_current_codes, TestClient, TestRelay,
};
use tokio::net::TcpStream;

const PW: &str = "access-control-password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_office_pc_key_is_refused_until_forgotten() {
    let home = tempfile::tempdir().unwrap();
    let profile = Profile::open(home.path()).unwrap();
    let options = options_with_profile(&profile);
    let relay = TestRelay::start().await;
    let (desktop, genuine) = relay.office_pc("pc-tofu", PW).await;
    Session::login_with(&relay.target("pc-tofu"), PW.as_bytes(), &options)
        .await
        .unwrap();
    // Second login: the pin matches.
    Session::login_with(&relay.target("pc-tofu"), PW.as_bytes(), &options)
        .await
        .unwrap();

    // Another relay with its own office PC under the same computer ID: pins are per relay, so
    // the two never clash.
    let relay2 = TestRelay::start().await;
    let (_desktop2, _other) = relay2.office_pc("pc-tofu", PW).await;
    Session::login_with(&relay2.target("pc-tofu"), PW.as_bytes(), &options)
        .await
        .unwrap();

    // The same relay, now answered by an office PC with another identity key (even with the
    // same password): refused before the password step.
    let impostor_dir = genuine.copy_data_dir();
    genuine.stop().await;
    let impostor = DataDir::open(impostor_dir.path()).unwrap();
    impostor
        .save_password(&PasswordRecord::create(PW.as_bytes()).unwrap())
        .unwrap();
    let task =
        run_until_online(telework_agent::Agent::load(impostor, desktop.addr.to_string()).unwrap())
            .await;
    let before = desktop.connections();
    let err = Session::login_with(&relay.target("pc-tofu"), PW.as_bytes(), &options)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ClientError::AgentKeyChanged { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(
            "WARNING: the office PC pc-tofu could not prove it holds the identity key"
        ),
        "{text}"
    );
    assert!(text.contains("telework forget pc-tofu"), "{text}");
    assert!(text.contains("Your password was not used"), "{text}");
    assert_eq!(desktop.connections(), before);

    // After IT staff confirm a reinstall, the employee forgets the pin and connects.
    assert!(profile.forget(&"pc-tofu".parse().unwrap()).unwrap());
    Session::login_with(&relay.target("pc-tofu"), PW.as_bytes(), &options)
        .await
        .unwrap();
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_password_keeps_the_pinned_key() {
    let home = tempfile::tempdir().unwrap();
    let profile = Profile::open(home.path()).unwrap();
    let options = options_with_profile(&profile);
    let relay = TestRelay::start().await;
    let agent = relay.agent("pc-repw", PW).run().await;
    Session::login_with(&relay.target("pc-repw"), PW.as_bytes(), &options)
        .await
        .unwrap();
    let data = DataDir::open(agent.dir.path()).unwrap();
    let new = data
        .password()
        .unwrap()
        .unwrap()
        .change_password(b"the new password")
        .unwrap();
    data.save_password(&new).unwrap();
    Session::login_with(&relay.target("pc-repw"), b"the new password", &options)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unapproved_device_waits_and_is_admitted_after_approval() {
    let relay = TestRelay::start().await;
    let (desktop, agent) = relay.office_pc("pc-dev", PW).await;
    let data = require_approved_devices(&agent);

    let device = Arc::new(MachineKey::generate().unwrap());
    let options = LoginOptions {
        device: device.clone(),
        device_name: "tanaka-home".into(),
        ..LoginOptions::default()
    };
    let err = Session::login_with(&relay.target("pc-dev"), PW.as_bytes(), &options)
        .await
        .err()
        .unwrap();
    let ClientError::Refused(Refusal::DeviceNotApproved {
        device: fingerprint,
    }) = &err
    else {
        panic!("{err:?}");
    };
    assert!(err.to_string().contains("waiting for approval"), "{err}");
    assert!(err
        .to_string()
        .contains(&format!("telework-agent devices approve {fingerprint}")));

    let mut devices = data.lock_devices().unwrap();
    assert_eq!(devices.devices.len(), 1);
    assert_eq!(devices.devices[0].name, "tanaka-home");
    assert_eq!(devices.devices[0].status, DeviceStatus::Pending);
    assert!(devices
        .set_status(&fingerprint[..8], DeviceStatus::Approved)
        .is_err());
    devices
        .set_status(fingerprint, DeviceStatus::Approved)
        .unwrap();
    devices.save().unwrap();

    let session = Session::login_with(&relay.target("pc-dev"), PW.as_bytes(), &options)
        .await
        .unwrap();
    session.opener().open().await.unwrap();

    // Another device is still refused; a revoked one is refused with its own reason.
    let stranger = LoginOptions::default();
    assert!(matches!(
        Session::login_with(&relay.target("pc-dev"), PW.as_bytes(), &stranger).await,
        Err(ClientError::Refused(Refusal::DeviceNotApproved { .. }))
    ));
    let mut devices = data.lock_devices().unwrap();
    devices
        .set_status(fingerprint, DeviceStatus::Revoked)
        .unwrap();
    devices.save().unwrap();
    assert!(matches!(
        Session::login_with(&relay.target("pc-dev"), PW.as_bytes(), &options).await,
        Err(ClientError::Refused(Refusal::DeviceRevoked))
    ));
    assert_eq!(
        desktop.connections(),
        1,
        "only the approved session reached the desktop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_list_held_by_another_process_means_try_again_not_misconfigured() {
    let relay = TestRelay::start().await;
    let (desktop, agent) = relay.office_pc("pc-held", PW).await;
    let data = require_approved_devices(&agent);
    // As if a `telework-agent devices` command were stuck half way through a change.
    let held = data.lock_devices().unwrap();
    let err = relay.login("pc-held", PW).await.err().unwrap();
    assert!(
        matches!(err, ClientError::Refused(Refusal::Busy)),
        "{err:?}"
    );
    assert!(err.to_string().contains("try again shortly"), "{err}");
    drop(held);
    let err = relay.login("pc-held", PW).await.err().unwrap();
    assert!(
        matches!(err, ClientError::Refused(Refusal::DeviceNotApproved { .. })),
        "once the lock is free the device is recorded as usual: {err:?}"
    );
    assert_eq!(desktop.connections(), 0);
}

/// The agent runs on one thread, which also carries every open session's desktop bytes. This
/// test runs everything on one thread too, as the agent does in production: a login waiting
/// for a device list held by another process (up to 2 s) must not freeze an open session.
#[tokio::test(flavor = "current_thread")]
async fn a_login_waiting_for_the_device_list_does_not_freeze_open_sessions() {
    let relay = TestRelay::start().await;
    let (_desktop, agent) = relay.office_pc("pc-busy-disk", PW).await;
    let client = TestClient::serve(relay.login("pc-busy-disk", PW).await.unwrap()).await;
    let mut rdp = TcpStream::connect(client.local).await.unwrap();
    echo_once(&mut rdp).await;

    let data = require_approved_devices(&agent);
    let held = data.lock_devices().unwrap();
    let asked = Instant::now();
    let login = relay.login("pc-busy-disk", PW);
    tokio::pin!(login);
    // A round trip through the open session every 20 ms until the login is answered. A frozen
    // thread shows as one long step, whether it froze a round trip or the pause between two.
    let mut slowest = Duration::ZERO;
    let refused = loop {
        let step = Instant::now();
        tokio::select! {
            answer = &mut login => {
                slowest = slowest.max(step.elapsed());
                break answer;
            }
            () = async {
                echo_once(&mut rdp).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            } => slowest = slowest.max(step.elapsed()),
        }
    };
    assert!(
        matches!(refused, Err(ClientError::Refused(Refusal::Busy))),
        "{:?}",
        refused.err()
    );
    // "Busy" also answers a login while too many are under way, at once; this one must have
    // waited for the lock.
    assert!(
        asked.elapsed() >= Duration::from_millis(1500),
        "refused after {:?}, before the device-list wait",
        asked.elapsed()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "the open session froze for {slowest:?} while a login waited for the device list"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_is_required_checked_and_counted() {
    let relay = TestRelay::start().await;
    let (desktop, agent) = relay.office_pc("pc-otp", PW).await;
    let secret = require_totp(&agent);

    let no_code = LoginOptions::default();
    let err = Session::login_with(&relay.target("pc-otp"), PW.as_bytes(), &no_code)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ClientError::Refused(Refusal::TotpMissing)),
        "{err:?}"
    );

    let wrong = LoginOptions {
        totp: Some(Arc::new(|| Some("000000".into()))),
        ..LoginOptions::default()
    };
    let now = telework_agent::unix_now();
    if secret.code_at(now) != "000000"
        && secret.code_at(now + 30) != "000000"
        && secret.code_at(now - 30) != "000000"
    {
        let err = Session::login_with(&relay.target("pc-otp"), PW.as_bytes(), &wrong)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, ClientError::Refused(Refusal::WrongTotp { .. })),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("wrong one-time code"), "{err}");
    }

    // Remember the exact code the first login sends, so the replay below is the same code.
    let sent = Arc::new(std::sync::Mutex::new(String::new()));
    let (s, record) = (secret.clone(), sent.clone());
    let right = LoginOptions {
        totp: Some(Arc::new(move || {
            let code = s.code_at(telework_agent::unix_now());
            *record.lock().unwrap() = code.clone();
            Some(code)
        })),
        ..LoginOptions::default()
    };
    let session = Session::login_with(&relay.target("pc-otp"), PW.as_bytes(), &right)
        .await
        .unwrap();
    session.opener().open().await.unwrap();
    // The same code again is a replay: its time step is not after the last one accepted.
    let code = sent.lock().unwrap().clone();
    let replay = LoginOptions {
        totp: Some(Arc::new(move || Some(code.clone()))),
        ..LoginOptions::default()
    };
    let second = Session::login_with(&relay.target("pc-otp"), PW.as_bytes(), &replay).await;
    assert!(
        matches!(second, Err(ClientError::Refused(Refusal::WrongTotp { .. }))),
        "a replayed code must be refused: {:?}",
        second.err()
    );

    // Still refused by the same machine restarted: the used step is kept on disk.
    drop(session);
    let keep = agent.copy_data_dir();
    agent.stop().await;
    let restarted = telework_agent::Agent::load(
        DataDir::open(keep.path()).unwrap(),
        desktop.addr.to_string(),
    )
    .unwrap();
    let task = run_until_online(restarted.clone()).await;
    let after_restart = Session::login_with(&relay.target("pc-otp"), PW.as_bytes(), &replay).await;
    assert!(
        matches!(
            after_restart,
            Err(ClientError::Refused(Refusal::WrongTotp { .. }))
        ),
        "a code replayed after a restart must be refused: {:?}",
        after_restart.err()
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_code_that_cannot_be_recorded_is_refused() {
    let relay = TestRelay::start().await;
    let (desktop, agent) = relay.office_pc("pc-otp-ro", PW).await;
    let secret = require_totp(&agent);
    // The record of the last code used cannot be written (its name is taken by a directory,
    // which a file cannot be renamed over; the agent read the record at start); accepting the
    // code anyway would let it work again after a restart.
    std::fs::create_dir(agent.dir.path().join("totp-last-step")).unwrap();
    let right = with_current_codes(secret);
    let err = Session::login_with(&relay.target("pc-otp-ro"), PW.as_bytes(), &right)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ClientError::Refused(Refusal::Misconfigured)),
        "{err:?}"
    );
    assert_eq!(desktop.connections(), 0);
}

/// Logs in to an agent whose policy is `policy`, serves the session, and returns how it ended.
async fn session_ending_under(
    policy: Policy,
) -> Result<telework_client::session::Ended, ClientError> {
    let relay = TestRelay::start().await;
    let (_desktop, agent) = relay.office_pc("pc-limits", PW).await;
    DataDir::open(agent.dir.path())
        .unwrap()
        .save_policy(&policy)
        .unwrap();
    let client = TestClient::serve(relay.login("pc-limits", PW).await.unwrap()).await;
    tokio::time::timeout(Duration::from_secs(10), client.task)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_maximum_session_limits_end_sessions_with_a_reason() {
    let idle = session_ending_under(Policy {
        idle_timeout_secs: Some(1),
        ..Policy::default()
    })
    .await;
    assert!(
        matches!(idle, Err(ClientError::Ended(EndReason::Idle))),
        "{idle:?}"
    );
    let max = session_ending_under(Policy {
        max_session_secs: Some(1),
        ..Policy::default()
    })
    .await;
    assert!(
        matches!(max, Err(ClientError::Ended(EndReason::MaxDuration))),
        "{max:?}"
    );
    assert_eq!(
        ClientError::Ended(EndReason::MaxDuration).to_string(),
        "the session ended: the session reached its maximum length"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_survives_an_agent_restart() {
    let relay = TestRelay::start().await;
    let agent = relay.agent("pc-lock", PW).run().await;
    for _ in 0..5 {
        let _ = relay.login("pc-lock", "wrong guess").await;
    }
    let keep = agent.copy_data_dir();
    agent.stop().await;
    let restarted =
        telework_agent::Agent::load(DataDir::open(keep.path()).unwrap(), "127.0.0.1:9".into())
            .unwrap();
    let task = run_until_online(restarted.clone()).await;
    let err = relay.login("pc-lock", PW).await.err().unwrap();
    assert!(
        matches!(err, ClientError::Refused(Refusal::LockedOut { .. })),
        "{err:?}"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_settings_refuse_logins_instead_of_switching_checks_off() {
    let relay = TestRelay::start().await;
    let (desktop, agent) = relay.office_pc("pc-broken", PW).await;
    // A typo in a hand-edited policy must not turn device approval off.
    std::fs::write(
        agent.dir.path().join("policy.toml"),
        "require_aproved_devices = true\n",
    )
    .unwrap();
    let err = relay.login("pc-broken", PW).await.err().unwrap();
    assert!(
        matches!(err, ClientError::Refused(Refusal::Misconfigured)),
        "{err:?}"
    );
    assert!(err.to_string().contains("settings are damaged"), "{err}");
    // Nor a damaged one-time-code secret turn the second factor off (or lock the employee out).
    std::fs::remove_file(agent.dir.path().join("policy.toml")).unwrap();
    std::fs::write(agent.dir.path().join("totp.secret"), "not base32 !!").unwrap();
    for _ in 0..6 {
        let err = relay.login("pc-broken", PW).await.err().unwrap();
        assert!(
            matches!(err, ClientError::Refused(Refusal::Misconfigured)),
            "{err:?}"
        );
    }
    std::fs::remove_file(agent.dir.path().join("totp.secret")).unwrap();
    relay
        .login("pc-broken", PW)
        .await
        .expect("no lockout was charged for the agent's own fault");
    assert_eq!(desktop.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_silent_loses_its_session() {
    let relay = TestRelay::start().await;
    let (desktop, started) = relay.office_pc("pc-quiet", PW).await;
    // The same machine, restarted with a short silence limit.
    let keep = started.copy_data_dir();
    started.stop().await;
    let agent = telework_agent::Agent::load_with(
        DataDir::open(keep.path()).unwrap(),
        desktop.addr.to_string(),
        Duration::from_secs(1),
    )
    .unwrap();
    let task = run_until_online(agent.clone()).await;

    // A session that keeps pinging (TestClient serves it like `telework connect`) lives on...
    let pinging = LoginOptions {
        ping_every: Duration::from_millis(200),
        ..LoginOptions::default()
    };
    let kept = TestClient::serve(
        Session::login_with(&relay.target("pc-quiet"), PW.as_bytes(), &pinging)
            .await
            .unwrap(),
    )
    .await;
    // ...one whose client never pings (a laptop that went to sleep) is ended by the agent.
    let silent = relay.login("pc-quiet", PW).await.unwrap();
    assert_eq!(agent.sessions(), 2);
    let opener = silent.opener();
    for _ in 0..50 {
        if agent.sessions() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(agent.sessions(), 1, "the silent session was ended");
    assert!(matches!(
        opener.open().await,
        Err(ClientError::Refused(Refusal::SessionInvalid))
    ));
    drop(silent);
    kept.stop().await.unwrap();
    task.abort();
}
