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

/// What a run of requests got back.
#[derive(Default)]
struct Rate {
    per_sec: f64,
    unexpected: u64,
    first_unexpected: Option<String>,
}

/// Lookups through relay nodes for `secs`: [`LOOKUP_CONNECTIONS`] client connections (the
/// client library's own, with a device key), connection `c` to `targets[c % len]` asking for
/// its IDs in turn, [`LOOKUP_IN_FLIGHT`] requests in flight on each. Answers that `expected`
/// accepts count.
async fn lookups(
    targets: &[(SocketAddr, Arc<Vec<ComputerId>>)],
    fingerprint: &str,
    transport: TransportChoice,
    secs: f64,
    expected: fn(&RelayToClient) -> bool,
) -> anyhow::Result<Rate> {
    let trust = RelayTrust::Fingerprint(fingerprint.parse()?);
    let (done, unexpected) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let first = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut links = Vec::with_capacity(LOOKUP_CONNECTIONS);
    for c in 0..LOOKUP_CONNECTIONS {
        let (addr, ids) = &targets[c % targets.len()];
        let dialer = Dialer::new(addr.to_string().parse()?, &trust, Role::Client, transport)?;
        let device = Arc::new(MachineKey::generate().context("device key")?);
        let link = telework_client::link::Link::new(dialer, device);
        let connection = link.connection().await?;
        links.push((link, connection, ids.clone()));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, (link, connection, ids)) in links.iter().enumerate() {
        for k in 0..LOOKUP_IN_FLIGHT {
            let (link, connection, ids) = (link.clone(), connection.clone(), ids.clone());
            let (done, unexpected, first) = (done.clone(), unexpected.clone(), first.clone());
            tasks.push(tokio::spawn(async move {
                let mut next = (c * LOOKUP_IN_FLIGHT + k) * 7919;
                while started.elapsed().as_secs_f64() < secs {
                    let id = &ids[next % ids.len()];
                    next += 1;
                    let stream = connection.open().await?;
                    let mut framed = Framed::new(stream);
                    framed.write(&link.connect_request(&connection, id)).await?;
                    let answer = framed
                        .read_within::<RelayToClient>(Duration::from_secs(10))
                        .await?;
                    if expected(&answer) {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        unexpected.fetch_add(1, Ordering::Relaxed);
                        first
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert_with(|| format!("{id}: {answer:?}"));
                    }
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
    }
    for t in tasks {
        t.await?.context("lookup")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(links);
    let first_unexpected = first.lock().unwrap_or_else(|e| e.into_inner()).take();
    Ok(Rate {
        per_sec: done.load(Ordering::Relaxed) as f64 / elapsed,
        unexpected: unexpected.load(Ordering::Relaxed),
        first_unexpected,
    })
}

/// [`Registry::presence_of`] for `ids` in turn from this process for `secs`, [`RAW_IN_FLIGHT`]
/// at a time; a call that finds no row counts as unexpected.
async fn presence_calls(
    registry: &Arc<Registry>,
    ids: &Arc<Vec<ComputerId>>,
    secs: f64,
) -> anyhow::Result<Rate> {
    let (done, missing) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let tasks: Vec<_> = (0..RAW_IN_FLIGHT)
        .map(|w| {
            let (registry, ids) = (registry.clone(), ids.clone());
            let (done, missing) = (done.clone(), missing.clone());
            tokio::spawn(async move {
                let mut next = w * 7919;
                while started.elapsed().as_secs_f64() < secs {
                    let found = registry.presence_of(&ids[next % ids.len()]).await?;
                    next += 1;
                    if found.is_some() {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        missing.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let unexpected = missing.load(Ordering::Relaxed);
    Ok(Rate {
        per_sec: done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        unexpected,
        first_unexpected: (unexpected > 0).then(|| "presence_of found no row".to_owned()),
    })
}

/// The single relay on SQLite, its registry made beforehand with as many machines and
/// presence rows as the cluster's.
struct SqliteRelay {
    relay: RelayProc,
    /// The same file, open in this process for the raw calls.
    registry: Arc<Registry>,
}

impl SqliteRelay {
    async fn start(
        cluster: &Cluster,
        fleet: &[Member],
        offline: &[Member],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = RelayProc::data_dir(dir.path());
        std::fs::create_dir_all(&data)?;
        let registry = Arc::new(Registry::open(&data.join("relay.db"))?);
        register(&registry, fleet).await?;
        register(&registry, offline).await?;
        let since = telework_relay::cluster::now_ms() / 1000;
        registry
            .record_presence(
                fleet
                    .iter()
                    .map(|m| {
                        PresenceChange::Online(Presence {
                            id: m.id.clone(),
                            node: "elsewhere".to_owned(),
                            since,
                            since_ms: since * 1000,
                            address: "127.0.0.2:1".to_owned(),
                            transport: "TLS/TCP".to_owned(),
                            away_from: None,
                        })
                    })
                    .collect(),
            )
            .await?;
        let relay = RelayProc::start_in(
            dir,
            "127.0.0.1:0",
            &cluster.shared_args,
            Some(cluster.fingerprint.clone()),
        )?;
        Ok(Self { relay, registry })
    }
}

fn is_move_to(answer: &RelayToClient) -> bool {
    matches!(answer, RelayToClient::MoveTo(_))
}

fn is_offline(answer: &RelayToClient) -> bool {
    *answer == RelayToClient::Error(ErrorCode::Offline)
}

fn note(rates: &mut Vec<f64>, lookups: &mut Lookups, rate: Rate) {
    rates.push(rate.per_sec);
    lookups.unexpected_answers += rate.unexpected;
    if lookups.first_unexpected.is_none() {
        lookups.first_unexpected = rate.first_unexpected;
    }
}

/// The lookup measures, PostgreSQL and SQLite alternating, while the fleet is online.
async fn measure_lookups(
    cluster: &Cluster,
    sqlite: &SqliteRelay,
    fleet: &Fleet,
    members: &[Member],
    offline: &Arc<Vec<ComputerId>>,
    opts: &Options,
) -> anyhow::Result<Lookups> {
    let transport = opts.transports[0];
    // For each node, the agents online at the others.
    let elsewhere: Vec<(SocketAddr, Arc<Vec<ComputerId>>)> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(k, node)| {
            let ids = (0..members.len())
                .filter(|&i| fleet.node_of(i).is_some_and(|at| at != k))
                .map(|i| members[i].id.clone())
                .collect();
            (node.entry.addr, Arc::new(ids))
        })
        .collect();
    let offline_pg: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| (n.entry.addr, offline.clone()))
        .collect();
    let offline_sqlite = [(sqlite.relay.addr, offline.clone())];
    let online: Arc<Vec<ComputerId>> = Arc::new(members.iter().map(|m| m.id.clone()).collect());
    let fp = &cluster.fingerprint;
    let secs = opts.seconds;
    let mut l = Lookups {
        transport: name(transport),
        runs: opts.runs,
        seconds_each: secs,
        client_connections: LOOKUP_CONNECTIONS,
        in_flight_per_connection: LOOKUP_IN_FLIGHT,
        raw_calls_in_flight: RAW_IN_FLIGHT,
        ..Lookups::default()
    };
    let (mut moved, mut off_pg, mut off_sq, mut raw_pg, mut raw_sq) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..opts.runs {
        let r = lookups(&elsewhere, fp, transport, secs, is_move_to).await?;
        note(&mut moved, &mut l, r);
        let r = lookups(&offline_sqlite, fp, transport, secs, is_offline).await?;
        note(&mut off_sq, &mut l, r);
        let r = lookups(&offline_pg, fp, transport, secs, is_offline).await?;
        note(&mut off_pg, &mut l, r);
        let r = presence_calls(&sqlite.registry, &online, secs).await?;
        note(&mut raw_sq, &mut l, r);
        let r = presence_calls(&cluster.registry, &online, secs).await?;
        note(&mut raw_pg, &mut l, r);
    }
    l.move_to_per_sec_postgres = median(&moved);
    l.offline_per_sec_postgres = median(&off_pg);
    l.offline_per_sec_sqlite = median(&off_sq);
    l.presence_of_per_sec_postgres = median(&raw_pg);
    l.presence_of_per_sec_sqlite = median(&raw_sq);
    eprintln!(
        "lookups/s: MoveTo {:.0}; offline PostgreSQL {:.0}, SQLite {:.0}; presence_of PostgreSQL {:.0}, SQLite {:.0}",
        l.move_to_per_sec_postgres,
        l.offline_per_sec_postgres,
        l.offline_per_sec_sqlite,
        l.presence_of_per_sec_postgres,
        l.presence_of_per_sec_sqlite
    );
    Ok(l)
}

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
async fn measure_set_up(
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

/// How the presence table compares with where the agents are.
#[derive(Serialize, Default, Clone, Copy, Debug)]
struct Agreement {
    /// Agents whose row names the node they are online at.
    right: usize,
    /// Agents whose row names another node.
    wrong: usize,
    /// Agents online without a row.
    missing: usize,
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
async fn wait_agreement(
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
async fn measure_failover(
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
