//! A login driven by hand, one message at a time, so a test can act between the steps (as a
//! relay that starts logins itself would, or to change the office PC's settings mid-login).

use std::time::Duration;

use telework_net::framed::Framed;
use telework_protocol::e2e::identity::{device_login_message, IdentityChallenge, Transcript};
use telework_protocol::e2e::messages::{AgentHandshake, ClientHandshake, DeviceProof};
use telework_protocol::e2e::pake::ClientLogin;
use telework_protocol::proof::MachineKey;
use telework_protocol::ComputerId;
use tokio::io::{AsyncRead, AsyncWrite};

/// Sends a login's hello and then its OPAQUE request for `password` with a fresh device key,
/// as a client does, on a tunnel to the office PC `id`. Returns the login state and the
/// agent's answer to the request (its challenge, or a refusal), read within 10 s.
pub async fn start_login<S: AsyncRead + AsyncWrite + Unpin>(
    f: &mut Framed<S>,
    id: &ComputerId,
    password: &[u8],
) -> (ClientLogin, AgentHandshake) {
    let challenge = IdentityChallenge::generate();
    let nonce: [u8; 32] = rand::random();
    let mut transcript = Transcript::new(id);
    transcript.client_hello(&nonce, &challenge.public());
    f.write(&ClientHandshake::Hello {
        nonce,
        identity_challenge: challenge.public(),
    })
    .await
    .unwrap();
    let AgentHandshake::Hello { nonce, .. } = f.read::<AgentHandshake>().await.unwrap() else {
        panic!("the office PC did not answer the hello");
    };
    transcript.agent_hello(&nonce);
    let (state, request) = ClientLogin::start(password).unwrap();
    let device = MachineKey::generate().unwrap();
    transcript.login(&device.public_key(), &request);
    f.write(&ClientHandshake::Login {
        request,
        device: DeviceProof {
            public_key: device.public_key(),
            signature: device.sign(&device_login_message(&transcript)),
        },
    })
    .await
    .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), f.read::<AgentHandshake>())
        .await
        .expect("the office PC answered the login in time")
        .unwrap();
    (state, answer)
}
