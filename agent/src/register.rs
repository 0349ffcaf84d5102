//! `telework-agent register`: make the machine key, claim the computer ID on the relay, and
//! save the settings.

use telework_net::connect::{client_exporter, connect};
use telework_net::framed::Framed;
use telework_net::HANDSHAKE_TIMEOUT;
use telework_protocol::messages::{alpn, AgentToRelay, RelayToAgent, PROTOCOL_VERSION};
use telework_protocol::ComputerId;

use crate::state::{AgentSettings, DataDir};
use crate::AgentError;

/// Registers this machine as `settings.computer_id` on `settings.relay` and saves the
/// settings on success.
///
/// # Errors
/// [`AgentError`] with the relay's reason (ID taken, token required, …) or the connection
/// problem.
pub async fn register(
    data: &DataDir,
    settings: &AgentSettings,
    token: Option<String>,
) -> Result<ComputerId, AgentError> {
    let key = data.machine_key()?;
    let relay = settings.relay_addr()?;
    let tls = settings.relay_trust()?.client_config(alpn::CONTROL)?;
    let stream = connect(&relay, tls).await?;
    let exporter = client_exporter(&stream).map_err(|e| AgentError::Tls(e.into()))?;
    let id = settings.computer_id.clone();
    let mut framed = Framed::new(stream);
    framed
        .write(&AgentToRelay::Register {
            version: PROTOCOL_VERSION,
            id: id.clone(),
            public_key: key.public_key(),
            token,
            proof: key.prove(&id, &exporter),
        })
        .await?;
    match framed
        .read_within::<RelayToAgent>(HANDSHAKE_TIMEOUT)
        .await?
    {
        RelayToAgent::Registered { id: got } if got == id => {
            data.save_settings(settings)?;
            Ok(id)
        }
        RelayToAgent::Error(code) => Err(AgentError::Refused(code)),
        _ => Err(AgentError::Unexpected),
    }
}
