//! Every refusal of a login, in memory: what each side ends with, what was counted, and that
//! out-of-place or malformed input ends in a refusal, never a panic.

use std::time::Duration;

use rand::rngs::OsRng;

use super::client_error::{authenticated_refusal, plaintext_refusal};
use super::test_util::*;
use super::{
    AgentEvent, AgentMachine, AgentOutcome, ClientLoginEvent, DeviceStanding, HandshakeError,
    TOTP_TIMEOUT,
};
use crate::e2e::messages::{AgentHandshake, ClientHandshake, Refusal};
use crate::frame::{decode_frame, encode_frame};
use crate::proof::{key_fingerprint, MachineKey};

fn refused(office: &mut Office, employee: &Employee) -> (HandshakeError, Option<AgentOutcome>) {
    let run = login(office, employee, usize::MAX, START);
    (run.client.unwrap().err().unwrap(), run.agent)
}

#[test]
fn a_wrong_password_is_counted_reported_and_refused_with_a_proof() {
    let mut office = Office::default();
    let employee = Employee {
        password: b"wrong".to_vec(),
        ..Employee::default()
    };
    let (err, agent) = refused(&mut office, &employee);
    assert_eq!(
        err,
        HandshakeError::Refused(Refusal::WrongPassword { tries_left: 4 })
    );
    assert_eq!(
        agent,
        Some(AgentOutcome::Refused(Refusal::WrongPassword {
            tries_left: 4
        }))
    );
    assert_eq!(
        (
            office.counted,
            office.given_back,
            office.succeeded,
            office.reports
        ),
        (1, 0, 0, 1)
    );
}

#[test]
fn a_wrong_password_on_a_first_connection_is_unconfirmed() {
    let mut office = Office::default();
    let employee = Employee {
        password: b"wrong".to_vec(),
        pinned: None,
        ..Employee::default()
    };
    assert_eq!(
        refused(&mut office, &employee).0,
        HandshakeError::WrongPasswordUnconfirmed
    );
    assert_eq!(office.counted, 1);
}

#[test]
fn the_fifth_failure_locks_out_and_a_locked_office_pc_gives_no_answer() {
    let mut office = Office {
        tries_left: 1,
        ..Office::default()
    };
    let employee = Employee {
        password: b"wrong".to_vec(),
        ..Employee::default()
    };
    assert_eq!(
        refused(&mut office, &employee).0,
        HandshakeError::Refused(Refusal::LockedOut {
            retry_after_secs: 60
        })
    );
    let mut office = Office {
        locked: true,
        ..Office::default()
    };
    let (err, _) = refused(&mut office, &Employee::default());
    assert_eq!(
        err,
        HandshakeError::Refused(Refusal::LockedOut {
            retry_after_secs: 60
        })
    );
    assert!(!office.events.iter().any(|e| e == "ReportFailure"));
}

#[test]
fn a_revoked_device_gets_no_password_step() {
    let employee = Employee::default();
    let mut office = Office::default();
    office
        .devices
        .insert(employee.device.public_key(), DeviceStanding::Revoked);
    assert_eq!(
        refused(&mut office, &employee).0,
        HandshakeError::Refused(Refusal::DeviceRevoked)
    );
    assert_eq!(office.counted, 0);
}

#[test]
fn a_device_that_needs_approval_waits_with_its_own_fingerprint() {
    let employee = Employee::default();
    let mut office = Office {
        require_approval: true,
        ..Office::default()
    };
    let (err, _) = refused(&mut office, &employee);
    let fingerprint = key_fingerprint(&employee.device.public_key());
    assert_eq!(
        err,
        HandshakeError::Refused(Refusal::DeviceNotApproved {
            device: fingerprint
        })
    );
    // Every secret proved right: the attempt is given back.
    assert_eq!((office.counted, office.given_back), (1, 1));
    // Approved by IT staff, it logs in.
    office
        .devices
        .insert(employee.device.public_key(), DeviceStanding::Approved);
    assert!(login(&mut office, &employee, usize::MAX, START)
        .client
        .unwrap()
        .is_ok());
}

#[test]
fn a_wrong_or_missing_one_time_code_is_refused_and_stays_counted() {
    let mut office = Office {
        totp: Some("111111".into()),
        ..Office::default()
    };
    let employee = Employee {
        totp: Some("222222".into()),
        ..Employee::default()
    };
    assert_eq!(
        refused(&mut office, &employee).0,
        HandshakeError::Refused(Refusal::WrongTotp { tries_left: 4 })
    );
    assert_eq!((office.given_back, office.reports), (0, 1));
    let employee = Employee {
        totp: None,
        ..Employee::default()
    };
    assert_eq!(
        refused(&mut office, &employee).0,
        HandshakeError::Refused(Refusal::TotpMissing)
    );
    assert_eq!(office.given_back, 0);
}

#[test]
fn a_changed_office_pc_key_is_refused_before_the_password_step() {
    let mut office = Office::default();
    let other = crate::e2e::pake::PasswordRecord::create(b"another pc").unwrap();
    let pinned = other.agent_public_key().unwrap();
    let employee = Employee {
        pinned: Some(pinned.clone()),
        ..Employee::default()
    };
    assert_eq!(
        refused(&mut office, &employee).0,
        HandshakeError::AgentKeyChanged { pinned }
    );
    assert!(!office
        .events
        .iter()
        .any(|e| e.starts_with("CheckDevice") || e == "CountAttempt"));
}

#[test]
fn no_password_set_is_refused_in_plaintext_and_believed_only_unpinned() {
    let mut office = Office {
        has_password: false,
        ..Office::default()
    };
    let unpinned = Employee {
        pinned: None,
        ..Employee::default()
    };
    assert_eq!(
        refused(&mut office, &unpinned).0,
        HandshakeError::Refused(Refusal::NoPassword)
    );
    // A pinned client expects the identity proof: a plaintext refusal there is not believed.
    assert_eq!(
        refused(&mut office, &Employee::default()).0,
        HandshakeError::BadProof
    );
}

#[test]
fn plaintext_refusals_that_only_the_agent_can_send_are_not_believed() {
    let forged = Refusal::DeviceNotApproved {
        device: "attacker-device'; rm -rf /".into(),
    };
    assert_eq!(plaintext_refusal(forged), HandshakeError::BadProof);
    assert_eq!(
        plaintext_refusal(Refusal::WrongTotp { tries_left: 1 }),
        HandshakeError::BadProof
    );
    assert_eq!(
        plaintext_refusal(Refusal::TotpMissing),
        HandshakeError::BadProof
    );
    assert_eq!(
        plaintext_refusal(Refusal::WrongPassword { tries_left: 3 }),
        HandshakeError::WrongPasswordUnconfirmed
    );
    let device = MachineKey::generate().unwrap();
    let shown = authenticated_refusal(
        Refusal::DeviceNotApproved {
            device: "spoofed".into(),
        },
        &device.public_key(),
    );
    assert_eq!(
        shown,
        HandshakeError::Refused(Refusal::DeviceNotApproved {
            device: key_fingerprint(&device.public_key())
        })
    );
}

fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    encode_frame(msg, &mut out).unwrap();
    out.to_vec()
}

fn agent_outcome(a: &mut AgentMachine) -> Option<AgentOutcome> {
    let mut office = Office::default();
    let mut last = None;
    while let Some(ev) = a.poll_event() {
        last = office.handle(a, ev, START).or(last);
    }
    last
}

#[test]
fn garbage_oversize_and_out_of_order_input_is_refused_never_a_panic() {
    let cases: Vec<Vec<u8>> = vec![
        vec![0, 0, 0, 3, 9, 9, 9],
        vec![0xff, 0xff, 0xff, 0xff],
        frame(&ClientHandshake::LoginFinish {
            finalization: vec![1; 64],
        }),
        frame(&ClientHandshake::ResumeFinish { mac: [0; 32] }),
        frame(&ClientHandshake::LoginFailed),
    ];
    for bytes in cases {
        let mut a = AgentMachine::new(id(), TOTP_TIMEOUT, START);
        a.receive(&bytes, START);
        assert_eq!(
            agent_outcome(&mut a),
            Some(AgentOutcome::Refused(Refusal::ProtocolViolation)),
            "{bytes:?}"
        );
    }
    // A flood while the machine waits on its driver.
    let mut a = AgentMachine::new(id(), TOTP_TIMEOUT, START);
    a.receive(
        &frame(&ClientHandshake::Hello {
            nonce: [1; 32],
            identity_challenge: [2; 32],
        }),
        START,
    );
    for _ in 0..200 {
        a.receive(&[0u8; 1024], START);
    }
    let events: Vec<_> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(
        matches!(
            events.last(),
            Some(AgentEvent::Finished(AgentOutcome::Refused(
                Refusal::ProtocolViolation
            )))
        ),
        "{events:?}"
    );
    // A hello whose challenge is not a valid point.
    let mut a = AgentMachine::new(id(), TOTP_TIMEOUT, START);
    a.receive(
        &frame(&ClientHandshake::Hello {
            nonce: [1; 32],
            identity_challenge: [0; 32],
        }),
        START,
    );
    assert_eq!(
        agent_outcome(&mut a),
        Some(AgentOutcome::Refused(Refusal::ProtocolViolation))
    );
    // A second hello where the login belongs: refused with a proof.
    let employee = Employee::default();
    let mut c = employee.machine();
    let _ = c.poll_event();
    c.pinned_key(None, &mut OsRng, START);
    let mut a = AgentMachine::new(id(), TOTP_TIMEOUT, START);
    let hello = c.take_output().unwrap();
    a.receive(&hello, START);
    a.receive(&hello, START);
    assert_eq!(
        agent_outcome(&mut a),
        Some(AgentOutcome::Refused(Refusal::ProtocolViolation))
    );
    let mut out = a.take_output().unwrap();
    assert!(matches!(
        decode_frame::<AgentHandshake>(&mut out),
        Ok(Some(AgentHandshake::Hello { .. }))
    ));
    assert!(matches!(
        decode_frame::<AgentHandshake>(&mut out),
        Ok(Some(AgentHandshake::LoginRefused { .. }))
    ));
}

#[test]
fn a_client_refuses_answers_out_of_place() {
    let employee = Employee::default();
    for answer in [
        frame(&AgentHandshake::LoginChallenge {
            response: vec![1; 8],
            stretch: crate::e2e::stretch::StretchParams::CURRENT,
            proof: [0; 32],
        }),
        frame(&AgentHandshake::ResumeChallenge {
            nonce: [0; 32],
            mac: [0; 32],
        }),
        frame(&AgentHandshake::Hello {
            nonce: [0; 32],
            proof: [0; 32],
        }),
        vec![0, 0, 0, 1, 200],
    ] {
        let mut c = employee.machine();
        let _ = c.poll_event();
        c.pinned_key(employee.pinned.clone(), &mut OsRng, START);
        c.receive(&answer, START);
        let Some(ClientLoginEvent::Finished(Err(e))) = c.poll_event() else {
            panic!()
        };
        assert!(
            matches!(
                e,
                HandshakeError::BadProof | HandshakeError::AgentKeyChanged { .. }
            ),
            "{e:?}"
        );
    }
}

#[test]
fn silence_after_the_challenge_is_a_counted_failure_at_the_deadline() {
    let employee = Employee::default();
    let mut office = Office::default();
    let mut c = employee.machine();
    let mut a = AgentMachine::new(id(), TOTP_TIMEOUT, START);
    let _ = c.poll_event();
    c.pinned_key(employee.pinned.clone(), &mut OsRng, START);
    a.receive(&c.take_output().unwrap(), START);
    while let Some(ev) = a.poll_event() {
        office.handle(&mut a, ev, START);
    }
    c.receive(&a.take_output().unwrap(), START);
    a.receive(&c.take_output().unwrap(), START);
    while let Some(ev) = a.poll_event() {
        office.handle(&mut a, ev, START);
    }
    // The challenge is out; the client never finishes.
    let deadline = a.deadline().unwrap();
    assert_eq!(deadline, START + super::STEP_TIMEOUT);
    a.handle_timeout(deadline - Duration::from_millis(1));
    assert!(a.poll_event().is_none());
    a.handle_timeout(deadline);
    let mut outcome = None;
    while let Some(ev) = a.poll_event() {
        outcome = office.handle(&mut a, ev, deadline).or(outcome);
    }
    assert_eq!(
        outcome,
        Some(AgentOutcome::Refused(Refusal::WrongPassword {
            tries_left: 4
        }))
    );
    assert_eq!(
        (office.counted, office.reports, office.given_back),
        (1, 1, 0)
    );
}

#[test]
fn a_client_waiting_for_the_hello_times_out() {
    let employee = Employee::default();
    let mut c = employee.machine();
    let _ = c.poll_event();
    c.pinned_key(None, &mut OsRng, START);
    let deadline = c.deadline().unwrap();
    c.handle_timeout(deadline);
    let Some(ClientLoginEvent::Finished(Err(HandshakeError::Timeout))) = c.poll_event() else {
        panic!()
    };
}
