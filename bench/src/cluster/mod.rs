//! `telework-bench --cluster`: three `telework-relay` processes sharing one throwaway
//! PostgreSQL (the tests' [`Postgres`]), beside one relay on SQLite, on loopback.
//!
//! - Many simulated agents ([`crate::roaming`]) come online over the three nodes; one node is
//!   killed (SIGKILL) and the time until its agents are all online at the others is measured,
//!   as the agents see it (welcomed again) and as the presence table does.
//! - Lookups per second: clients asking a node for office PCs online at another node (each
//!   lookup reads the presence table and is answered `MoveTo`), and for registered PCs that
//!   are offline (PostgreSQL: presence and machine rows; SQLite: the machine row), beside raw
//!   [`Registry::presence_of`] calls on each backend.
//! - New session to first byte (the main bench's measure) with the real agent on the cluster,
//!   asking the PC's own node and asking another node (one `MoveTo` more), beside one relay
//!   on SQLite.
//!
//! The machines of the simulated agents are written into the registry directly
//! ([`Registry::register`]), not registered through the relay, to keep the run short.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use telework_net::framed::Framed;
use telework_net::tls::RelayTrust;
use telework_net::transport::dial::Dialer;
use telework_net::transport::{Role, TransportChoice};
use telework_protocol::messages::RelayToClient;
use telework_protocol::proof::MachineKey;
use telework_protocol::{ComputerId, ErrorCode};
use telework_relay::registry::{Presence, PresenceChange, Registry};
use telework_tests::postgres::Postgres;

use crate::procs::{start_agent, Chain, Proc, RelayProc};
use crate::report::machine;
use crate::roaming::{Fleet, Member, NodeEntry};
use crate::stats::{median, percentile};
use crate::{name, scenarios, target};

mod failover;
mod lookups;
mod set_up;

use failover::{measure_failover, wait_agreement, Agreement};
use lookups::{measure_lookups, SqliteRelay};
use set_up::measure_set_up;

/// Nodes in the cluster.
const NODES: usize = 3;
/// The node killed (its index).
const KILLED: usize = 0;
/// Registered machines that never come online, for the offline lookups.
const OFFLINE_IDS: usize = 1_000;
/// Agents handshaking at once while the fleet first comes online.
const BRING_UP_PARALLEL: usize = 64;
/// Client connections of the lookup runs, and requests in flight on each.
const LOOKUP_CONNECTIONS: usize = 6;
const LOOKUP_IN_FLIGHT: usize = 8;
/// Raw registry calls in flight.
const RAW_IN_FLIGHT: usize = 16;
/// How long the fleet may take to come online, and to come back after the kill.
const ONLINE_WITHIN: Duration = Duration::from_secs(180);
const BACK_WITHIN: Duration = Duration::from_secs(90);
/// How long the presence table may take to agree with the agents after they came online.
const AGREE_WITHIN: Duration = Duration::from_secs(20);
/// Connections a node may hold beyond the agents.
const CONNECTION_HEADROOM: usize = 1_000;

/// What `--cluster` was asked for.
pub(crate) struct Options {
    /// Agents over TLS/TCP (and the machines registered).
    pub(crate) agents: usize,
    /// Agents over QUIC (the first of them).
    pub(crate) quic_agents: usize,
    pub(crate) transports: Vec<TransportChoice>,
    /// Runs of each lookup measure, and of each set-up measure at least 5 (medians).
    pub(crate) runs: usize,
    /// Seconds of each lookup run.
    pub(crate) seconds: f64,
    pub(crate) json: PathBuf,
}

#[derive(Serialize, Default)]
struct Lookups {
    transport: String,
    runs: usize,
    seconds_each: f64,
    client_connections: usize,
    in_flight_per_connection: usize,
    raw_calls_in_flight: usize,
    /// Through a node, for a PC online at another node: answered `MoveTo`.
    move_to_per_sec_postgres: f64,
    /// Through a node, for a registered PC that is offline: answered `Offline`.
    offline_per_sec_postgres: f64,
    offline_per_sec_sqlite: f64,
    /// `Registry::presence_of` from this process, for IDs with a presence row.
    presence_of_per_sec_postgres: f64,
    presence_of_per_sec_sqlite: f64,
    /// Answers other than the one expected, with the first.
    unexpected_answers: u64,
    first_unexpected: Option<String>,
}

#[derive(Serialize, Default)]
struct Failover {
    killed_node: String,
    agents_on_killed_node: usize,
    /// Seconds from the SIGKILL until the first, the median, the 99th percentile and the
    /// last of those agents was welcomed by another node.
    first_back_s: f64,
    p50_back_s: f64,
    p99_back_s: f64,
    all_back_s: Option<f64>,
    /// Seconds from the SIGKILL until the presence rows of every agent that was on the node
    /// named the node it is online at now, and the last comparison of all agents' rows.
    presence_agrees_s: Option<f64>,
    presence: Agreement,
    moves: usize,
}

#[derive(Serialize, Default)]
struct ClusterPath {
    transport: String,
    agents: usize,
    bring_up_s: f64,
    per_node: Vec<usize>,
    /// `MoveTo`s the agents followed to come online (about 2/3 of them: entry nodes are
    /// round-robin, homes are by hash).
    bring_up_moves: usize,
    /// Seconds from the last agent's welcome until every agent's presence row named its
    /// node, and the last comparison.
    presence_agrees_after_bring_up_s: Option<f64>,
    presence_after_bring_up: Agreement,
    failover: Failover,
    /// Failed attempts of the simulated agents (dial, handshake, refusals) over the run, by
    /// error.
    agent_errors: Vec<(String, usize)>,
    ttfb_sqlite_ms: f64,
    ttfb_postgres_at_home_ms: f64,
    ttfb_postgres_via_other_node_ms: f64,
}

#[derive(Serialize, Default)]
struct Results {
    machine: String,
    postgres: String,
    nodes: usize,
    /// Machines registered (the TLS/TCP agents; the QUIC agents are the first of them).
    machines: usize,
    registration: String,
    registration_s: f64,
    lookups: Lookups,
    paths: Vec<ClusterPath>,
    wall_seconds: f64,
}

/// A node of the cluster: where it is, and its process while it runs.
struct Node {
    entry: NodeEntry,
    relay: Option<RelayProc>,
}

/// Three nodes on one PostgreSQL; the nodes go first when dropped, the database last.
struct Cluster {
    nodes: Vec<Node>,
    registry: Arc<Registry>,
    fingerprint: String,
    /// The certificate, key and config every node and the SQLite relay share.
    shared_args: Vec<String>,
    _files: tempfile::TempDir,
    pg: Postgres,
}

impl Cluster {
    async fn start(agents: usize) -> anyhow::Result<Self> {
        let pg = tokio::task::spawn_blocking(Postgres::start)
            .await?
            .context("PostgreSQL is not installed (apt-get install postgresql)")?;
        let files = tempfile::tempdir()?;
        let identity = telework_relay::identity::self_signed(files.path(), &[])?;
        let config = files.path().join("relay.toml");
        std::fs::write(
            &config,
            format!("max_connections = {}\n", agents + CONNECTION_HEADROOM),
        )?;
        let path = |p: PathBuf| p.display().to_string();
        let shared_args = vec![
            "--cert".to_owned(),
            path(files.path().join(telework_relay::identity::CERT_FILE)),
            "--key".to_owned(),
            path(files.path().join(telework_relay::identity::KEY_FILE)),
            "--config".to_owned(),
            path(config),
            "--no-admin".to_owned(),
            // Every agent and client dials from a few loopback addresses.
            "--no-per-address-limits".to_owned(),
        ];
        let registry = Arc::new(Registry::connect(&pg.url()).await?);
        let mut cluster = Self {
            nodes: (0..NODES)
                .map(|i| Node {
                    entry: NodeEntry {
                        name: format!("node-{}", i + 1),
                        addr: SocketAddr::from((
                            [127, 0, 0, 1],
                            telework_tests::cluster::free_port(),
                        )),
                    },
                    relay: None,
                })
                .collect(),
            registry,
            fingerprint: identity.fingerprint.to_string(),
            shared_args,
            _files: files,
            pg,
        };
        for i in 0..NODES {
            cluster.run(i)?;
        }
        cluster.wait_live(NODES).await?;
        Ok(cluster)
    }

    /// Starts node `i` (again), on its address.
    fn run(&mut self, i: usize) -> anyhow::Result<()> {
        let entry = &self.nodes[i].entry;
        let addr = entry.addr.to_string();
        let mut args = self.shared_args.clone();
        args.extend([
            "--public-addr".to_owned(),
            addr.clone(),
            "--node-name".to_owned(),
            entry.name.clone(),
            "--database".to_owned(),
            self.pg.url(),
        ]);
        let relay = RelayProc::start_in(
            tempfile::tempdir()?,
            &addr,
            &args,
            Some(self.fingerprint.clone()),
        )
        .with_context(|| format!("starting {}", entry.name))?;
        self.nodes[i].relay = Some(relay);
        Ok(())
    }

    /// Waits until `n` nodes have live heartbeat rows, and then until each has read the
    /// others' (each node reads them at its beat): before that, a node may place agents as
    /// if the nodes it has not seen yet did not exist, and move them at its next beat.
    async fn wait_live(&self, n: usize) -> anyhow::Result<()> {
        self.wait_rows(n).await?;
        tokio::time::sleep(telework_relay::cluster::HEARTBEAT + Duration::from_millis(500)).await;
        Ok(())
    }

    /// Waits until `n` nodes have live heartbeat rows.
    async fn wait_rows(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = telework_relay::cluster::now_ms();
            let live = self.registry.nodes().await?;
            if live.iter().filter(|row| row.live(now)).count() == n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{n} nodes not live after 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn entries(&self) -> Vec<NodeEntry> {
        self.nodes.iter().map(|n| n.entry.clone()).collect()
    }

    fn addr_of(&self, name: &str) -> Option<SocketAddr> {
        self.nodes
            .iter()
            .find(|n| n.entry.name == name)
            .map(|n| n.entry.addr)
    }
}

/// `n` machines with fresh keys, IDs `{prefix}-{i}`.
fn members(prefix: &str, n: usize) -> anyhow::Result<Vec<Member>> {
    (0..n)
        .map(|i| {
            Ok(Member {
                id: format!("{prefix}-{i}").parse()?,
                key: Arc::new(MachineKey::generate().context("machine key")?),
            })
        })
        .collect()
}

/// Writes the members' machines into `registry`, [`RAW_IN_FLIGHT`] at a time.
async fn register(registry: &Arc<Registry>, members: &[Member]) -> anyhow::Result<()> {
    let rows: Arc<Vec<(ComputerId, Vec<u8>)>> = Arc::new(
        members
            .iter()
            .map(|m| (m.id.clone(), m.key.public_key()))
            .collect(),
    );
    let tasks: Vec<_> = (0..RAW_IN_FLIGHT)
        .map(|w| {
            let (registry, rows) = (registry.clone(), rows.clone());
            tokio::spawn(async move {
                for (id, key) in rows.iter().skip(w).step_by(RAW_IN_FLIGHT) {
                    registry.register(id, key).await?;
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Runs everything; prints the table and writes the JSON.
pub(crate) async fn run(opts: Options) -> anyhow::Result<()> {
    let wall = Instant::now();
    let target = target::start().await?;
    let mut cluster = Cluster::start(opts.agents).await?;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        % 100_000;
    let fleet_members = members(&format!("fleet-{run}"), opts.agents)?;
    let offline_members = members(&format!("off-{run}"), OFFLINE_IDS)?;
    let started = Instant::now();
    register(&cluster.registry, &fleet_members).await?;
    let registration_s = started.elapsed().as_secs_f64();
    register(&cluster.registry, &offline_members).await?;
    eprintln!(
        "{} machines written into the PostgreSQL registry in {registration_s:.1} s",
        opts.agents
    );
    let sqlite = SqliteRelay::start(&cluster, &fleet_members, &offline_members).await?;
    let index: HashMap<&str, usize> = fleet_members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.id.as_str(), i))
        .collect();
    let offline_ids: Arc<Vec<ComputerId>> =
        Arc::new(offline_members.iter().map(|m| m.id.clone()).collect());
    let mut r = Results {
        machine: machine(),
        postgres: telework_tests::postgres::binaries()
            .map(|b| b.display().to_string())
            .unwrap_or_default(),
        nodes: NODES,
        machines: opts.agents,
        registration: "written into the registry directly (Registry::register)".to_owned(),
        registration_s,
        ..Results::default()
    };
    for (k, &t) in opts.transports.iter().enumerate() {
        let count = match t {
            TransportChoice::Quic => opts.quic_agents.min(opts.agents),
            _ => opts.agents,
        };
        let members = &fleet_members[..count];
        let mut path = ClusterPath {
            transport: name(t),
            agents: count,
            ..ClusterPath::default()
        };
        let started = Instant::now();
        let fleet = Fleet::start(
            cluster.entries(),
            &cluster.fingerprint,
            t,
            members,
            BRING_UP_PARALLEL,
        )?;
        if !fleet.wait_online(None, ONLINE_WITHIN).await {
            bail!(
                "{}: only {} of {} agents online after {ONLINE_WITHIN:?} (errors: {:?})",
                path.transport,
                fleet.per_node().iter().sum::<usize>(),
                fleet.len(),
                fleet.errors()
            );
        }
        path.bring_up_s = started.elapsed().as_secs_f64();
        path.per_node = fleet.per_node();
        path.bring_up_moves = fleet.moves();
        (
            path.presence_agrees_after_bring_up_s,
            path.presence_after_bring_up,
        ) = wait_agreement(&cluster, &fleet, &index, None, Instant::now(), AGREE_WITHIN).await?;
        eprintln!(
            "{}: {} agents online in {:.1} s, per node {:?}; presence table agrees {} ({:?})",
            path.transport,
            count,
            path.bring_up_s,
            path.per_node,
            path.presence_agrees_after_bring_up_s
                .map_or("not".to_owned(), |s| format!("after {s:.2} s")),
            path.presence_after_bring_up
        );
        if k == 0 {
            r.lookups =
                measure_lookups(&cluster, &sqlite, &fleet, members, &offline_ids, &opts).await?;
        }
        measure_set_up(&cluster, target, t, opts.runs.max(5), &mut path).await?;
        path.failover = measure_failover(&mut cluster, &fleet, &index).await?;
        path.agent_errors = fleet.errors();
        drop(fleet);
        r.paths.push(path);
        // The node comes back for the next transport.
        cluster.run(KILLED)?;
        cluster.wait_live(NODES).await?;
    }
    drop(sqlite);
    drop(cluster);
    r.wall_seconds = wall.elapsed().as_secs_f64();
    print_table(&r);
    std::fs::write(&opts.json, serde_json::to_string_pretty(&r)?)?;
    println!("\nJSON written to {}", opts.json.display());
    Ok(())
}

fn print_table(r: &Results) {
    let thousands = |n: usize| {
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    let l = &r.lookups;
    println!(
        "telework cluster benchmark ({} nodes on one PostgreSQL beside one relay on SQLite; {} machines {} in {:.1} s; {})",
        r.nodes,
        thousands(r.machines),
        r.registration,
        r.registration_s,
        r.machine
    );
    println!();
    println!(
        "| measure | SQLite, one relay | PostgreSQL, {} nodes |",
        r.nodes
    );
    println!("|---|---|---|");
    println!(
        "| lookups/s through a node ({} connections x {} in flight, {}): PC online at another node, answered MoveTo | - | {:.0} |",
        l.client_connections, l.in_flight_per_connection, l.transport, l.move_to_per_sec_postgres
    );
    println!(
        "| ... PC registered, offline, answered Offline | {:.0} | {:.0} |",
        l.offline_per_sec_sqlite, l.offline_per_sec_postgres
    );
    println!(
        "| Registry::presence_of calls/s from one process, {} in flight | {:.0} | {:.0} |",
        l.raw_calls_in_flight, l.presence_of_per_sec_sqlite, l.presence_of_per_sec_postgres
    );
    for p in &r.paths {
        println!(
            "| {}: new session to first byte, ms (PostgreSQL: at the PC's node; via another node) | {:.1} | {:.1}; {:.1} |",
            p.transport, p.ttfb_sqlite_ms, p.ttfb_postgres_at_home_ms, p.ttfb_postgres_via_other_node_ms
        );
    }
    for p in &r.paths {
        let per_node: Vec<String> = p.per_node.iter().map(|&n| thousands(n)).collect();
        println!(
            "| {}: {} agents online from start, s (per node) | - | {:.1} ({}) |",
            p.transport,
            thousands(p.agents),
            p.bring_up_s,
            per_node.join(" / ")
        );
        let a = p.presence_after_bring_up;
        println!(
            "| {}: ... every presence row names the agent's node, s after the last came online | - | {} |",
            p.transport,
            p.presence_agrees_after_bring_up_s.map_or(
                format!(
                    "not within {AGREE_WITHIN:?}: {} right, {} wrong, {} missing",
                    a.right, a.wrong, a.missing
                ),
                |s| format!("{s:.2}")
            )
        );
        let f = &p.failover;
        let or_not =
            |s: Option<f64>| s.map_or(format!("not within {BACK_WITHIN:?}"), |s| format!("{s:.2}"));
        println!(
            "| {}: SIGKILL of a node, its {} agents online at the others, s: first / p50 / p99 / all | - | {:.2} / {:.2} / {:.2} / {} |",
            p.transport,
            thousands(f.agents_on_killed_node),
            f.first_back_s,
            f.p50_back_s,
            f.p99_back_s,
            or_not(f.all_back_s)
        );
        println!(
            "| {}: ... their presence rows name their new nodes, s after the kill | - | {} |",
            p.transport,
            or_not(f.presence_agrees_s)
        );
    }
    if l.unexpected_answers > 0 {
        println!(
            "\nunexpected lookup answers: {} (first: {})",
            l.unexpected_answers,
            l.first_unexpected.as_deref().unwrap_or("")
        );
    }
    for p in &r.paths {
        if !p.agent_errors.is_empty() {
            let kinds: Vec<String> = p
                .agent_errors
                .iter()
                .map(|(e, n)| format!("{n} x {e}"))
                .collect();
            println!(
                "{}: simulated agents' failed attempts: {}",
                p.transport,
                kinds.join("; ")
            );
        }
    }
    println!("wall time {:.0} s", r.wall_seconds);
}

/// The default JSON path of `--cluster`.
pub(crate) fn default_json() -> PathBuf {
    FsPath::new("bench").join("results-cluster.json")
}
