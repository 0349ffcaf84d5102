//! Many idle agents, opened straight from this process with the protocol library (registering
//! each with its own machine key, then coming online), to measure the relay's memory per agent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use telework_net::connect::{client_exporter, connect, RelayAddr, RelayConnection};
use telework_net::framed::Framed;
use telework_net::tls::RelayTrust;
use telework_protocol::messages::{alpn, AgentToRelay, RelayToAgent, PROTOCOL_VERSION};
use telework_protocol::proof::MachineKey;
use telework_protocol::ComputerId;

/// An idle agent's control connection.
pub type Stream = Framed<RelayConnection>;

async fn one(
    relay: &RelayAddr,
    config: Arc<rustls::ClientConfig>,
    id: ComputerId,
) -> anyhow::Result<Stream> {
    let key = MachineKey::generate().context("key")?;
    let tls = connect(relay, config.clone()).await?;
    let exporter = client_exporter(&tls)?;
    let mut f = Framed::new(tls);
    f.write(&AgentToRelay::Register {
        version: PROTOCOL_VERSION,
        id: id.clone(),
        public_key: key.public_key(),
        token: None,
        proof: key.prove(&id, &exporter),
    })
    .await?;
    match f
        .read_within::<RelayToAgent>(Duration::from_secs(30))
        .await?
    {
        RelayToAgent::Registered { .. } => {}
        other => bail!("registration refused: {other:?}"),
    }
    drop(f);
    let tls = connect(relay, config).await?;
    let exporter = client_exporter(&tls)?;
    let mut f = Framed::new(tls);
    f.write(&AgentToRelay::Hello {
        version: PROTOCOL_VERSION,
        proof: key.prove(&id, &exporter),
        id,
    })
    .await?;
    match f
        .read_within::<RelayToAgent>(Duration::from_secs(30))
        .await?
    {
        RelayToAgent::Welcome => Ok(f),
        other => bail!("hello refused: {other:?}"),
    }
}

/// Brings `n` agents online, `parallel` at a time; returns their connections (keep them open).
pub async fn bring_online(
    relay: SocketAddr,
    fingerprint: &str,
    n: usize,
    parallel: usize,
) -> anyhow::Result<Vec<Stream>> {
    let relay: RelayAddr = relay.to_string().parse()?;
    let config = RelayTrust::Fingerprint(fingerprint.parse()?).client_config(alpn::CONTROL)?;
    let limit = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(n);
    let run = rand_suffix();
    for i in 0..n {
        let (relay, config, limit) = (relay.clone(), config.clone(), limit.clone());
        let id: ComputerId = format!("idle-{run}-{i}").parse()?;
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await?;
            one(&relay, config, id).await
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
