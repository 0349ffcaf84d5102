//! Resumption in memory: success, bad proofs, unknown and ended sessions, time.

use std::time::Duration;

use rand::rngs::OsRng;
use zeroize::Zeroizing;

use super::test_util::*;
use super::{AgentEvent, AgentMachine, AgentOutcome, HandshakeError, TOTP_TIMEOUT};
use crate::e2e::messages::{AgentHandshake, ClientHandshake, EndReason, Refusal};
use crate::frame::encode_frame;
use crate::ids::SessionId;

fn logged_in(office: &mut Office) -> (SessionId, crate::e2e::keys::ResumptionSecret) {
    let done = login(office, &Employee::default(), usize::MAX, START)
        .client
        .unwrap()
        .unwrap();
    (done.session, done.secret)
}

#[test]
fn a_session_resumes_and_the_desktop_is_connected() {
    let mut office = Office::default();
    let (session, secret) = logged_in(&mut office);
    for chunk in [usize::MAX, 1] {
        let run = resume(&mut office, session, &secret, chunk, START);
        assert_eq!(run.client, Some(Ok(())));
        assert_eq!(run.agent, Some(AgentOutcome::TunnelReady(session)));
    }
}

#[test]
fn an_unknown_session_is_refused() {
    let mut office = Office::default();
    let run = resume(
        &mut office,
        SessionId([9; 16]),
        &Zeroizing::new([1; 32]),
        usize::MAX,
        START,
    );
    assert_eq!(
        run.client,
        Some(Err(HandshakeError::Refused(Refusal::SessionInvalid)))
    );
    assert_eq!(
        run.agent,
        Some(AgentOutcome::Refused(Refusal::SessionInvalid))
    );
}

#[test]
fn a_wrong_secret_fails_the_proofs_both_ways() {
    let mut office = Office::default();
    let (session, _) = logged_in(&mut office);
    let run = resume(
        &mut office,
        session,
        &Zeroizing::new([7; 32]),
        usize::MAX,
        START,
    );
    assert_eq!(run.client, Some(Err(HandshakeError::BadProof)));
    // The agent, sent a MAC that does not verify, refuses.
    let mut a = AgentMachine::new(id(), TOTP_TIMEOUT, START);
    let mut wire = bytes::BytesMut::new();
    encode_frame(
        &ClientHandshake::Resume {
            session,
            nonce: [1; 32],
        },
        &mut wire,
    )
    .unwrap();
    a.receive(&wire, START);
    let ev = a.poll_event().unwrap();
    office.handle(&mut a, ev, START);
    assert!(a.take_output().is_some());
    let mut wire = bytes::BytesMut::new();
    encode_frame(&ClientHandshake::ResumeFinish { mac: [0; 32] }, &mut wire).unwrap();
    a.receive(&wire, START);
    let Some(AgentEvent::Finished(outcome)) = a.poll_event() else {
        panic!()
    };
    assert_eq!(outcome, AgentOutcome::Refused(Refusal::SessionInvalid));
    let out = a.take_output().unwrap();
    let mut out = bytes::BytesMut::from(&out[..]);
    assert_eq!(
        crate::frame::decode_frame::<AgentHandshake>(&mut out).unwrap(),
        Some(AgentHandshake::Refused(Refusal::SessionInvalid))
    );
}

#[test]
fn a_session_past_its_maximum_length_ends_on_resume() {
    let mut office = Office {
        max_session: Some(Duration::from_secs(3600)),
        ..Office::default()
    };
    let (session, secret) = logged_in(&mut office);
    let run = resume(
        &mut office,
        session,
        &secret,
        usize::MAX,
        START + Duration::from_secs(3599),
    );
    assert_eq!(run.client, Some(Ok(())));
    office.events.clear();
    let run = resume(
        &mut office,
        session,
        &secret,
        usize::MAX,
        START + Duration::from_secs(3600),
    );
    assert_eq!(
        run.client,
        Some(Err(HandshakeError::Ended(EndReason::MaxDuration)))
    );
    assert_eq!(
        run.agent,
        Some(AgentOutcome::SessionEnded {
            session,
            reason: EndReason::MaxDuration
        })
    );
    assert!(!office.events.iter().any(|e| e == "ConnectTarget"));
}

#[test]
fn every_resume_checks_access_again_and_a_change_ends_the_session() {
    let mut office = Office::default();
    let (session, secret) = logged_in(&mut office);
    office.access = Err(EndReason::DeviceRevoked);
    let run = resume(&mut office, session, &secret, usize::MAX, START);
    assert_eq!(
        run.client,
        Some(Err(HandshakeError::Ended(EndReason::DeviceRevoked)))
    );
    assert!(!office.events.iter().any(|e| e == "ConnectTarget"));
}

#[test]
fn a_desktop_service_that_is_down_is_reported() {
    let mut office = Office {
        target_up: false,
        ..Office::default()
    };
    let (session, secret) = logged_in(&mut office);
    let run = resume(&mut office, session, &secret, usize::MAX, START);
    assert_eq!(run.client, Some(Err(HandshakeError::TargetRefused)));
    assert_eq!(run.agent, Some(AgentOutcome::TargetRefused));
}

#[test]
fn a_silent_agent_times_out_the_resume_at_its_deadline() {
    let mut c = super::ClientResumeMachine::new(
        SessionId([1; 16]),
        &Zeroizing::new([1; 32]),
        Duration::from_secs(10),
        &mut OsRng,
        START,
    );
    let deadline = c.deadline().unwrap();
    assert_eq!(deadline, START + super::STEP_TIMEOUT);
    c.handle_timeout(deadline - Duration::from_secs(1));
    assert!(c.result().is_none());
    c.handle_timeout(deadline);
    assert_eq!(c.result(), Some(&Err(HandshakeError::Timeout)));
}

#[test]
fn a_control_tunnel_is_reattached_without_touching_the_desktop() {
    let mut office = Office::default();
    let (session, secret) = logged_in(&mut office);
    office.events.clear();
    for chunk in [usize::MAX, 1] {
        let run = reattach(&mut office, session, &secret, chunk, START);
        assert_eq!(run.client, Some(Ok(())));
        assert_eq!(run.agent, Some(AgentOutcome::ControlReattached(session)));
    }
    assert!(!office.events.iter().any(|e| e == "ConnectTarget"));
    // Access is checked again: a revoked device gets no control tunnel either.
    office.access = Err(EndReason::DeviceRevoked);
    let run = reattach(&mut office, session, &secret, usize::MAX, START);
    assert_eq!(
        run.client,
        Some(Err(HandshakeError::Ended(EndReason::DeviceRevoked)))
    );
}

#[test]
fn a_relay_cannot_turn_a_reattachment_into_a_desktop_tunnel() {
    let mut office = Office::default();
    let (session, secret) = logged_in(&mut office);
    let mut c = super::ClientResumeMachine::reattach_control(session, &secret, &mut OsRng, START);
    let mut first = c.take_output().unwrap();
    let Some(ClientHandshake::ReattachControl { nonce, .. }) =
        crate::frame::decode_frame::<ClientHandshake>(&mut first).unwrap()
    else {
        panic!("the first message is the re-attachment");
    };
    // The relay sends the agent a plain resumption with the same nonce instead.
    let mut forged = bytes::BytesMut::new();
    encode_frame(&ClientHandshake::Resume { session, nonce }, &mut forged).unwrap();
    let mut a = AgentMachine::new(id(), TOTP_TIMEOUT, START);
    a.receive(&forged, START);
    while let Some(ev) = a.poll_event() {
        office.handle(&mut a, ev, START);
    }
    c.receive(&a.take_output().unwrap(), START);
    assert_eq!(c.result(), Some(&Err(HandshakeError::BadProof)));
    assert!(!office.events.iter().any(|e| e == "ConnectTarget"));
}
