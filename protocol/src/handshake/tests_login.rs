//! Whole logins in memory, client machine to agent machine: the paths that succeed.

use super::test_util::*;
use super::{
    AgentEvent, AgentMachine, AgentOutcome, ClientLoginEvent, DeviceStanding, TOTP_TIMEOUT,
};
use crate::e2e::messages::{ClientNotice, Refusal};
use crate::e2e::record::RecordKind;
use rand::rngs::OsRng;

#[test]
fn a_pinned_login_succeeds_and_gives_the_attempt_back() {
    let mut office = Office::default();
    let run = login(&mut office, &Employee::default(), usize::MAX, START);
    let done = run.client.unwrap().unwrap();
    assert!(!done.first_use);
    assert_eq!(done.agent_key, agent_key());
    assert_eq!(run.agent, Some(AgentOutcome::SessionStarted(done.session)));
    assert_eq!(
        (office.counted, office.succeeded, office.reports),
        (1, 1, 0)
    );
    // Both ends hold matching record keys for the session's first tunnel.
    let (mut ck, _) = run.client_machine.into_tunnel().unwrap();
    let (mut ak, leftover) = run.agent_machine.into_tunnel().unwrap();
    assert!(leftover.is_empty());
    let mut wire = bytes::BytesMut::new();
    ck.sealer
        .seal(
            RecordKind::Control,
            &postcard::to_allocvec(&ClientNotice::Ping).unwrap(),
            &mut wire,
        )
        .unwrap();
    assert_eq!(
        ak.opener.open(&mut wire).unwrap().unwrap().kind,
        RecordKind::Control
    );
}

#[test]
fn a_first_login_is_trust_on_first_use() {
    let mut office = Office::default();
    let employee = Employee {
        pinned: None,
        ..Employee::default()
    };
    let done = login(&mut office, &employee, usize::MAX, START)
        .client
        .unwrap()
        .unwrap();
    assert!(done.first_use);
    assert_eq!(done.agent_key, agent_key());
}

#[test]
fn a_login_fed_one_byte_at_a_time_succeeds() {
    let mut office = Office {
        totp: Some("123456".into()),
        ..Office::default()
    };
    let employee = Employee {
        totp: Some("123456".into()),
        ..Employee::default()
    };
    let run = login(&mut office, &employee, 1, START);
    assert!(run.client.unwrap().is_ok());
    assert!(matches!(run.agent, Some(AgentOutcome::SessionStarted(_))));
}

#[test]
fn a_login_fed_in_odd_fragments_succeeds() {
    for chunk in [2, 3, 7, 31, 100] {
        let mut office = Office::default();
        let run = login(&mut office, &Employee::default(), chunk, START);
        assert!(run.client.unwrap().is_ok(), "chunk {chunk}");
    }
}

#[test]
fn a_one_time_code_is_asked_for_checked_at_the_given_time_and_works_once() {
    let mut office = Office {
        totp: Some("654321".into()),
        ..Office::default()
    };
    let employee = Employee {
        totp: Some("654321".into()),
        ..Employee::default()
    };
    let run = login(&mut office, &employee, usize::MAX, START);
    assert!(run.client.unwrap().is_ok());
    assert!(office.events.iter().any(|e| e == "CheckTotp"));
    // The same code again: refused, and the attempt stays counted.
    let run = login(&mut office, &employee, usize::MAX, START);
    assert_eq!(
        run.client.unwrap().err(),
        Some(super::HandshakeError::Refused(Refusal::WrongTotp {
            tries_left: 4
        }))
    );
    assert_eq!(
        (
            office.counted,
            office.succeeded,
            office.given_back,
            office.reports
        ),
        (2, 1, 0, 1)
    );
}

#[test]
fn an_approved_device_logs_in_and_an_admitted_one_is_recorded_last() {
    let employee = Employee::default();
    let mut office = Office::default();
    office
        .devices
        .insert(employee.device.public_key(), DeviceStanding::Approved);
    assert!(login(&mut office, &employee, usize::MAX, START)
        .client
        .unwrap()
        .is_ok());
    let mut office = Office::default();
    assert!(login(&mut office, &employee, usize::MAX, START)
        .client
        .unwrap()
        .is_ok());
    let admit = office
        .events
        .iter()
        .position(|e| e == "AdmitDevice")
        .unwrap();
    let code = office
        .events
        .iter()
        .position(|e| e == "LoadTotpPolicy")
        .unwrap();
    assert!(code < admit, "{:?}", office.events);
}

/// The security property the machine keeps: the OPAQUE answer goes out only after the driver
/// reported the attempt counted on disk.
#[test]
fn nothing_that_depends_on_the_password_goes_out_before_the_attempt_is_counted() {
    let employee = Employee::default();
    let mut c = employee.machine();
    let mut a = AgentMachine::new(id(), TOTP_TIMEOUT, START);
    let Some(ClientLoginEvent::LookupPin) = c.poll_event() else {
        panic!()
    };
    c.pinned_key(employee.pinned.clone(), &mut OsRng, START);
    a.receive(&c.take_output().unwrap(), START);
    let Some(AgentEvent::LoadPasswordRecord) = a.poll_event() else {
        panic!()
    };
    a.password_record(Ok(record()), &mut OsRng, START);
    c.receive(&a.take_output().unwrap(), START);
    a.receive(&c.take_output().unwrap(), START);
    let Some(AgentEvent::CheckDevice { .. }) = a.poll_event() else {
        panic!()
    };
    a.device_checked(Ok(DeviceStanding::Unknown), &mut OsRng);
    let Some(AgentEvent::CountAttempt { device_key }) = a.poll_event() else {
        panic!()
    };
    assert_eq!(device_key, employee.device.public_key());
    assert!(
        a.take_output().is_none(),
        "the answer left before the attempt was counted"
    );
    assert_eq!(
        a.deadline(),
        None,
        "the machine waits on its driver, not the client"
    );
    a.attempt_counted(Ok(super::IfFailed::TriesLeft(4)), START);
    assert!(a.take_output().is_some());
}
