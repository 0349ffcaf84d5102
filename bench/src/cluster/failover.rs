//! A node killed: how long until its agents are online elsewhere, as they and the presence
//! table see it.

use super::*;

/// How the presence table compares with where the agents are.
#[derive(Serialize, Default, Clone, Copy, Debug)]
pub(super) struct Agreement {
    /// Agents whose row names the node they are online at.
    pub(super) right: usize,
    /// Agents whose row names another node.
    pub(super) wrong: usize,
    /// Agents online without a row.
    pub(super) missing: usize,
}

/// Reads the presence table and compares it with the fleet; also says, per agent, whether
/// its row names its node.
async fn agreement(
    cluster: &Cluster,
    fleet: &Fleet,
    index: &HashMap<&str, usize>,
) -> anyhow::Result<(Agreement, Vec<bool>)> {
    let mut seen = vec![false; fleet.len()];
    let mut right = vec![false; fleet.len()];
    let mut a = Agreement::default();
    for row in cluster.registry.presence().await? {
        let Some(&i) = index.get(row.id.as_str()).filter(|&&i| i < fleet.len()) else {
            continue;
        };
        seen[i] = true;
        let at = fleet
            .node_of(i)
            .map(|n| cluster.nodes[n].entry.name.as_str());
        if at == Some(row.node.as_str()) {
            a.right += 1;
            right[i] = true;
        } else {
            a.wrong += 1;
        }
    }
    a.missing = seen.iter().filter(|s| !**s).count();
    Ok((a, right))
}

/// Polls [`agreement`] every 200 ms from `since` until the rows of the agents `of` (all when
/// `None`) name their nodes, at most until `since + within`; returns the seconds it took (if
/// it came) and the last comparison of all agents.
pub(super) async fn wait_agreement(
    cluster: &Cluster,
    fleet: &Fleet,
    index: &HashMap<&str, usize>,
    of: Option<&[usize]>,
    since: Instant,
    within: Duration,
) -> anyhow::Result<(Option<f64>, Agreement)> {
    loop {
        let (a, right) = agreement(cluster, fleet, index).await?;
        let done = match of {
            Some(agents) => agents.iter().all(|&i| right[i]),
            None => a.right == fleet.len(),
        };
        if done {
            return Ok((Some(since.elapsed().as_secs_f64()), a));
        }
        if since.elapsed() > within {
            if std::env::var_os("TELEWORK_BENCH_VERBOSE").is_some() {
                let missing: Vec<&str> = index
                    .iter()
                    .filter(|(_, &i)| i < fleet.len() && !right[i])
                    .map(|(id, _)| *id)
                    .collect();
                for id in missing.iter().take(3) {
                    let rows = cluster
                        .registry
                        .audit_rows(&telework_relay::registry::AuditFilter {
                            computer_id: Some((*id).to_owned()),
                            ..Default::default()
                        })
                        .await?;
                    eprintln!(
                        "{id}: at {:?}",
                        index.get(id).and_then(|&i| fleet.node_of(i))
                    );
                    for r in rows {
                        eprintln!("  {} {} {:?} {}", r.at, r.kind, r.address, r.detail);
                    }
                }
            }
            return Ok((None, a));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Kills node [`KILLED`] and measures until its agents are online elsewhere, as the agents
/// and as the presence table see it.
pub(super) async fn measure_failover(
    cluster: &mut Cluster,
    fleet: &Fleet,
    index: &HashMap<&str, usize>,
) -> anyhow::Result<Failover> {
    let killed_name = cluster.nodes[KILLED].entry.name.clone();
    let moving: Vec<usize> = (0..fleet.len())
        .filter(|&i| fleet.node_of(i) == Some(KILLED))
        .collect();
    let moves_before = fleet.moves();
    let relay = cluster.nodes[KILLED]
        .relay
        .take()
        .context("the node runs")?;
    let killed_at = Instant::now();
    // SIGKILL, then reaped.
    drop(relay);
    let all_back = fleet.wait_online(Some(KILLED), BACK_WITHIN).await;
    let back: Vec<f64> = moving
        .iter()
        .filter(|&&i| fleet.node_of(i).is_some_and(|n| n != KILLED))
        .map(|&i| {
            fleet
                .welcomed_at(i)
                .saturating_duration_since(killed_at)
                .as_secs_f64()
        })
        .collect();
    if !all_back && std::env::var_os("TELEWORK_BENCH_VERBOSE").is_some() {
        for &i in moving
            .iter()
            .filter(|&&i| fleet.node_of(i).is_none())
            .take(10)
        {
            eprintln!("agent {i} not back: {} failed attempts", fleet.failing(i));
        }
    }
    let (presence_agrees_s, presence) =
        wait_agreement(cluster, fleet, index, Some(&moving), killed_at, BACK_WITHIN).await?;
    let f = Failover {
        killed_node: killed_name,
        agents_on_killed_node: moving.len(),
        first_back_s: percentile(&back, 0.0),
        p50_back_s: percentile(&back, 50.0),
        p99_back_s: percentile(&back, 99.0),
        all_back_s: all_back.then(|| percentile(&back, 100.0)),
        presence_agrees_s,
        presence,
        moves: fleet.moves() - moves_before,
    };
    eprintln!(
        "SIGKILL of {} ({} agents): back in {:.2} s first, {:.2} p50, {:.2} p99, {} all; presence table agrees {} ({:?})",
        f.killed_node,
        f.agents_on_killed_node,
        f.first_back_s,
        f.p50_back_s,
        f.p99_back_s,
        f.all_back_s.map_or("not".to_owned(), |s| format!("{s:.2} s")),
        f.presence_agrees_s.map_or("not".to_owned(), |s| format!("{s:.2} s")),
        f.presence,
    );
    Ok(f)
}
