//! The office PC's handshake machine fed hostile bytes from a client (through a relay), whole
//! and one byte at a time, with every question it asks answered "yes": it must refuse or
//! finish, never panic, and never hold more than its bounded buffer.
#![no_main]
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use telework_protocol::e2e::keys::ResumptionSecret;
use telework_protocol::e2e::pake::PasswordRecord;
use telework_protocol::handshake::{
    AgentEvent, AgentMachine, DeviceStanding, IfFailed, SessionFacts, TOTP_TIMEOUT,
};
use telework_protocol::SessionId;

const NOW: Duration = Duration::from_secs(1_800_000_000);

fn record() -> PasswordRecord {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    let bytes = BYTES.get_or_init(|| {
        PasswordRecord::create(b"fuzz password")
            .expect("record")
            .to_bytes()
            .to_vec()
    });
    PasswordRecord::from_bytes(bytes).expect("record")
}

fn answer(machine: &mut AgentMachine) {
    let mut rng = rand::rngs::OsRng;
    for _ in 0..64 {
        while machine.take_output().is_some() {}
        let Some(event) = machine.poll_event() else { return };
        match event {
            AgentEvent::LoadPasswordRecord => machine.password_record(Ok(record()), &mut rng, NOW),
            AgentEvent::CheckDevice { .. } => {
                machine.device_checked(Ok(DeviceStanding::Approved), &mut rng)
            }
            AgentEvent::CountAttempt { .. } => machine.attempt_counted(Ok(IfFailed::TriesLeft(4)), NOW),
            AgentEvent::LoadTotpPolicy => machine.totp_required(Ok(true), NOW),
            AgentEvent::CheckTotp { .. } => machine.totp_checked(Ok(true)),
            AgentEvent::AdmitDevice { .. } => machine.device_admitted(Ok(DeviceStanding::Approved)),
            AgentEvent::RegisterSession { .. } => machine.session_registered(SessionId([1; 16])),
            AgentEvent::LookupSession { .. } => machine.session_looked_up(
                Some(SessionFacts {
                    secret: ResumptionSecret::new([7; 32]),
                    expires_at: None,
                }),
                &mut rng,
                NOW,
            ),
            AgentEvent::CheckAccess { .. } => machine.access_checked(Ok(())),
            AgentEvent::ConnectTarget => machine.target_connected(true),
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut whole = AgentMachine::new("pc-fuzz".parse().expect("id"), TOTP_TIMEOUT, NOW);
    whole.receive(data, NOW);
    answer(&mut whole);
    whole.handle_timeout(NOW + Duration::from_secs(3600));
    answer(&mut whole);

    let mut bytewise = AgentMachine::new("pc-fuzz".parse().expect("id"), TOTP_TIMEOUT, NOW);
    for b in data.iter().take(4096) {
        bytewise.receive(std::slice::from_ref(b), NOW);
        answer(&mut bytewise);
    }
});
