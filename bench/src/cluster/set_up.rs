//! New session to first byte on the cluster and on one SQLite relay.

use super::*;

/// A client's target: the bench's office PC `id` through `relay`.
fn target_at(
    relay: SocketAddr,
    fingerprint: &str,
    transport: TransportChoice,
    id: &str,
) -> anyhow::Result<telework_client::Target> {
    Ok(telework_client::Target {
        relay: relay.to_string().parse()?,
        trust: RelayTrust::Fingerprint(fingerprint.parse()?),
        transport,
        id: id.parse()?,
    })
}

/// New session to first byte: the real agent registered through node 2, asked for at its own
/// node and through another node, beside a chain on one SQLite relay; alternating.
pub(super) async fn measure_set_up(
    cluster: &Cluster,
    target: SocketAddr,
    transport: TransportChoice,
    runs: usize,
    path: &mut ClusterPath,
) -> anyhow::Result<()> {
    let id = format!("bench-pc-{}", crate::procs::transport_arg(transport));
    let dir = tempfile::tempdir()?;
    let via = cluster.nodes[1].entry.addr;
    let agent: Proc = start_agent(
        &dir.path().join("agent"),
        &id,
        via,
        &cluster.fingerprint,
        target,
        transport,
    )?;
    let computer: ComputerId = id.parse()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let home = loop {
        if let Some(p) = cluster.registry.presence_of(&computer).await? {
            break p.node;
        }
        if Instant::now() > deadline {
            bail!("the agent did not come online in the cluster");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let home_addr = cluster.addr_of(&home).context("the agent's node")?;
    let other = cluster
        .nodes
        .iter()
        .map(|n| n.entry.addr)
        .find(|&a| a != home_addr)
        .context("another node")?;
    let at_home = target_at(home_addr, &cluster.fingerprint, transport, &id)?;
    let via_other = target_at(other, &cluster.fingerprint, transport, &id)?;
    let chain = Chain::start(target, transport)?;
    let (mut sq, mut home_ms, mut other_ms) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        sq.push(scenarios::time_to_first_byte(&chain).await?);
        home_ms.push(scenarios::session_to_first_byte(&at_home).await?);
        other_ms.push(scenarios::session_to_first_byte(&via_other).await?);
    }
    path.ttfb_sqlite_ms = median(&sq);
    path.ttfb_postgres_at_home_ms = median(&home_ms);
    path.ttfb_postgres_via_other_node_ms = median(&other_ms);
    drop(chain);
    drop(agent);
    eprintln!(
        "{}: new session to first byte (ms): SQLite {:.1}; PostgreSQL at the PC's node {:.1}, via another {:.1}",
        path.transport,
        path.ttfb_sqlite_ms,
        path.ttfb_postgres_at_home_ms,
        path.ttfb_postgres_via_other_node_ms
    );
    Ok(())
}
