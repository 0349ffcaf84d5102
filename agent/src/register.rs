//! `telework-agent register`: make the machine key, claim the computer ID on the relay, and
//! save the settings.

use telework_net::framed::Framed;
use telework_net::proxy::ProxyEnv;
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
    register_with(data, settings, token, &ProxyEnv::default()).await
}

/// As [`register`], through the settings' proxy or else the one `env` names (see
/// [`telework_net::proxy::choose`]).
///
/// # Errors
/// As [`register`], and [`AgentError::Proxy`] for a proxy that cannot be used.
pub async fn register_with(
    data: &DataDir,
    settings: &AgentSettings,
    token: Option<String>,
    env: &ProxyEnv,
) -> Result<ComputerId, AgentError> {
    let key = data.machine_key()?;
    let relay = settings.relay_addr()?;
    let proxy =
        telework_net::proxy::choose(None, settings.proxy_setting()?.as_ref(), env, relay.host())?;
    let dialer = Dialer::new(
        relay,
        &settings.relay_trust()?,
        Role::Agent,
        settings.transport,
    )?
    .with_proxy(proxy)?;
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

/// The computer ID suggested from this computer's host name.
///
/// # Errors
/// A sentence saying why, when the host name makes no valid ID.
pub fn suggested_id() -> Result<ComputerId, String> {
    let host = std::env::var("COMPUTERNAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    ComputerId::suggest_from_hostname(host.trim())
        .ok_or_else(|| format!("cannot make a computer ID from the host name {host:?}"))
}
