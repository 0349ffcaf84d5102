//! What IT staff change on an office PC, as the tests do it: the access policy, one-time codes,
//! revoking a device.

use telework_agent::devices::DeviceStatus;
use telework_agent::policy::Policy;
use telework_agent::state::DataDir;
use telework_agent::totp::TotpSecret;
use telework_protocol::proof::MachineKey;

use crate::TestAgent;

/// Turns on "approved devices only" on `agent`, and returns its data dir.
pub fn require_approved_devices(agent: &TestAgent) -> DataDir {
    let data = DataDir::open(agent.dir.path()).unwrap();
    data.save_policy(&Policy {
        require_approved_devices: true,
        ..Policy::default()
    })
    .unwrap();
    data
}

/// Turns the second factor on for `agent`, as `telework-agent totp enable` does.
pub fn require_totp(agent: &TestAgent) -> TotpSecret {
    let secret = TotpSecret::generate();
    DataDir::open(agent.dir.path())
        .unwrap()
        .save_totp(Some(&secret))
        .unwrap();
    secret
}

/// Revokes `device` on `agent`, as `telework-agent devices revoke` does.
pub fn revoke(agent: &TestAgent, device: &MachineKey) {
    let data = DataDir::open(agent.dir.path()).unwrap();
    let mut devices = data.lock_devices().unwrap();
    devices
        .set_status(
            &telework_protocol::proof::key_fingerprint(&device.public_key()),
            DeviceStatus::Revoked,
        )
        .unwrap();
    devices.save().unwrap();
}

/// Login options whose one-time codes come from `secret` at the time they are asked for, as
/// the employee's authenticator app gives them.
pub fn with_current_codes(secret: TotpSecret) -> telework_client::LoginOptions {
    telework_client::LoginOptions {
        totp: Some(std::sync::Arc::new(move || {
            Some(secret.code_at(telework_agent::unix_now()))
        })),
        ..telework_client::LoginOptions::default()
    }
}
