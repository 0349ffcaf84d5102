//! The office PC's failure budgets: every attempt counted before it is answered, known devices
//! with budgets of their own, nothing counted or recorded that should not be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use telework_agent::state::DataDir;
use telework_client::profile::Profile;
use telework_client::{ClientError, LoginOptions, Session};
use telework_protocol::e2e::messages::Refusal;
use telework_protocol::proof::MachineKey;
use telework_tests::{
    options_with_profile, require_approved_devices, require_totp, revoke, with_current_codes,
    TestRelay,
};

const PW: &str = "access-control-password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_who_lock_the_office_pc_never_lock_out_a_known_device() {
    let relay = TestRelay::start().await;
    let (desktop, _agent) = relay.office_pc("pc-known", PW).await;
    let home = tempfile::tempdir().unwrap();
    let employee = options_with_profile(&Profile::open(home.path()).unwrap());
    // The employee's device has logged in before.
    drop(
        Session::login_with(&relay.target("pc-known"), PW.as_bytes(), &employee)
            .await
            .unwrap(),
    );
    // A stranger who knows the computer ID uses up the shared budget.
    for _ in 0..5 {
        let err = relay
            .login("pc-known", "a stranger's guess")
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                ClientError::WrongPasswordUnconfirmed
                    | ClientError::Refused(Refusal::LockedOut { .. })
            ),
            "{err:?}"
        );
    }
    let err = relay.login("pc-known", PW).await.err().unwrap();
    assert!(
        matches!(err, ClientError::Refused(Refusal::LockedOut { .. })),
        "strangers are locked out, even with the right password: {err:?}"
    );
    // The known device proves its key before the password step and has its own budget.
    let session = Session::login_with(&relay.target("pc-known"), PW.as_bytes(), &employee)
        .await
        .unwrap();
    session.opener().open().await.unwrap();
    assert_eq!(desktop.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_attempt_that_cannot_be_recorded_is_refused() {
    let relay = TestRelay::start().await;
    let (desktop, agent) = relay.office_pc("pc-cannot-count", PW).await;
    // The wrong-password state cannot be read or written (a directory stands in its place).
    std::fs::create_dir(agent.dir.path().join("lockout.toml")).unwrap();
    let err = relay.login("pc-cannot-count", PW).await.err().unwrap();
    assert!(
        matches!(err, ClientError::Refused(Refusal::Misconfigured)),
        "an attempt that cannot be counted is not answered: {err:?}"
    );
    std::fs::remove_dir(agent.dir.path().join("lockout.toml")).unwrap();
    relay.login("pc-cannot-count", PW).await.unwrap();
    assert_eq!(desktop.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_recorded_only_after_its_one_time_code_is_right() {
    let relay = TestRelay::start().await;
    let (_desktop, agent) = relay.office_pc("pc-no-flood", PW).await;
    let data = require_approved_devices(&agent);
    let secret = require_totp(&agent);
    // Someone with the password but not the code tries from many devices: none is listed, so
    // the list cannot be flooded nor a look-alike planted for IT staff to approve.
    for _ in 0..3 {
        let now = telework_agent::unix_now();
        let wrong = ["000000", "111111"]
            .into_iter()
            .find(|c| {
                [now - 30, now, now + 30]
                    .iter()
                    .all(|t| secret.code_at(*t) != *c)
            })
            .unwrap()
            .to_owned();
        let options = LoginOptions {
            totp: Some(Arc::new(move || Some(wrong.clone()))),
            ..LoginOptions::default()
        };
        let err = Session::login_with(&relay.target("pc-no-flood"), PW.as_bytes(), &options)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, ClientError::Refused(Refusal::WrongTotp { .. })),
            "{err:?}"
        );
    }
    assert!(data.devices().unwrap().devices.is_empty());
    // With the code, the device is recorded (and waits for approval).
    let right = with_current_codes(secret);
    let err = Session::login_with(&relay.target("pc-no-flood"), PW.as_bytes(), &right)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ClientError::Refused(Refusal::DeviceNotApproved { .. })),
        "{err:?}"
    );
    assert_eq!(data.devices().unwrap().devices.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_gets_no_password_step() {
    let relay = TestRelay::start().await;
    let (_desktop, agent) = relay.office_pc("pc-revoked-early", PW).await;
    let device = Arc::new(MachineKey::generate().unwrap());
    let options = LoginOptions {
        device: device.clone(),
        ..LoginOptions::default()
    };
    drop(
        Session::login_with(&relay.target("pc-revoked-early"), PW.as_bytes(), &options)
            .await
            .unwrap(),
    );
    revoke(&agent, &device);
    let data = DataDir::open(agent.dir.path()).unwrap();
    // The successful login's attempt is given back just after the client has its answer.
    for _ in 0..100 {
        if data.lockout().unwrap().shared().failures == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = data.lockout().unwrap();
    assert_eq!(before.shared().failures, 0);
    for _ in 0..3 {
        let err = Session::login_with(&relay.target("pc-revoked-early"), b"a guess", &options)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, ClientError::Refused(Refusal::DeviceRevoked)),
            "{err:?}"
        );
    }
    assert_eq!(
        DataDir::open(agent.dir.path()).unwrap().lockout().unwrap(),
        before,
        "no attempt was started, so no guess was answered"
    );
}
