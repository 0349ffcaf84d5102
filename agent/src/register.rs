//! `telework-agent register`: make the machine key, claim the computer ID on the relay, and
//! save the settings.

use telework_net::framed::Framed;
use telework_net::transport::dial::Dialer;
use telework_net::transport::Role;
use telework_net::HANDSHAKE_TIMEOUT;
use telework_protocol::messages::{AgentToRelay, RelayOpens, RelayToAgent, PROTOCOL_VERSION};
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
    let dialer = Dialer::new(
        settings.relay_addr()?,
        &settings.relay_trust()?,
        Role::Agent,
        settings.transport,
    )?;
    let connection = dialer.dial().await?.connection;
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connection.accept())
        .await
        .map_err(|_| AgentError::Timeout)?
        .map_err(|e| AgentError::Frame(e.into()))?;
    let mut framed = Framed::new(stream);
    match framed.read_within::<RelayOpens>(HANDSHAKE_TIMEOUT).await? {
        RelayOpens::Control { .. } => {}
        RelayOpens::Tunnel { .. } => return Err(AgentError::Unexpected),
    }
    let id = settings.computer_id.clone();
    framed
        .write(&AgentToRelay::Register {
            version: PROTOCOL_VERSION,
            id: id.clone(),
            public_key: key.public_key(),
            token,
            proof: key.prove(&id, connection.channel_binding()),
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
