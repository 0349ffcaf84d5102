//! Many idle agents, opened straight from this process with the protocol library (registering
//! each with its own machine key, then coming online), to measure the relay's memory per agent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use telework_net::framed::Framed;
use telework_net::tls::RelayTrust;
use telework_net::transport::dial::Dialer;
use telework_net::transport::{Connection, Role, Stream, TransportChoice};
use telework_protocol::messages::{AgentToRelay, RelayOpens, RelayToAgent, PROTOCOL_VERSION};
use telework_protocol::proof::MachineKey;
use telework_protocol::ComputerId;

/// An idle agent: its connection and control stream.
pub type Idle = (Connection, Framed<Stream>);

/// Dials the relay and takes the control stream it opens.
async fn control(dialer: &Dialer) -> anyhow::Result<Idle> {
    let connection = dialer.dial().await?.connection;
    let mut f = Framed::new(connection.accept().await?);
    match f.read_within::<RelayOpens>(Duration::from_secs(30)).await? {
        RelayOpens::Control { .. } => Ok((connection, f)),
        other => bail!("expected the control stream, got {other:?}"),
    }
}

async fn one(dialer: &Dialer, id: ComputerId) -> anyhow::Result<Idle> {
    let key = MachineKey::generate().context("key")?;
    let (connection, mut f) = control(dialer).await?;
    f.write(&AgentToRelay::Register {
        version: PROTOCOL_VERSION,
        id: id.clone(),
        public_key: key.public_key(),
        token: None,
        proof: key.prove(&id, connection.channel_binding()),
    })
    .await?;
    match f
        .read_within::<RelayToAgent>(Duration::from_secs(30))
        .await?
    {
        RelayToAgent::Registered { .. } => {}
        other => bail!("registration refused: {other:?}"),
    }
    drop((connection, f));
    let (connection, mut f) = control(dialer).await?;
    f.write(&AgentToRelay::Hello {
        version: PROTOCOL_VERSION,
        proof: key.prove(&id, connection.channel_binding()),
        id,
    })
    .await?;
    match f
        .read_within::<RelayToAgent>(Duration::from_secs(30))
        .await?
    {
        RelayToAgent::Welcome => Ok((connection, f)),
        other => bail!("hello refused: {other:?}"),
    }
}

/// Brings `n` agents online, `parallel` at a time; returns their connections (keep them open).
pub async fn bring_online(
    relay: SocketAddr,
    fingerprint: &str,
    transport: TransportChoice,
    n: usize,
    parallel: usize,
) -> anyhow::Result<Vec<Idle>> {
    let dialer = Dialer::new(
        relay.to_string().parse()?,
        &RelayTrust::Fingerprint(fingerprint.parse()?),
        Role::Agent,
        transport,
    )?;
    let limit = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(n);
    let run = rand_suffix();
    for i in 0..n {
        let (dialer, limit) = (dialer.clone(), limit.clone());
        let id: ComputerId = format!("idle-{run}-{i}").parse()?;
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await?;
            one(&dialer, id).await
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for t in tasks {
        conns.push(t.await??);
    }
    Ok(conns)
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        % 100_000
}
