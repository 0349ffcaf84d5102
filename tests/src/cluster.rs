//! A cluster of relay nodes for tests: the real `telework-relay` binary, several times, on
//! one throwaway PostgreSQL ([`crate::postgres`]), sharing one certificate, each on its own
//! loopback port that is also its public address. Nodes can be killed (SIGKILL), stopped
//! (SIGTERM, a drain, with an 8 s grace period) and started again on the same port. With
//! [`TestCluster::start_with_admin`] each node also serves its admin listener (console, API,
//! metrics), which [`admin_request`] speaks to.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use telework_client::Target;
use telework_protocol::CertFingerprint;
use telework_relay::registry::{NodeRow, Presence, Registry};

use crate::netns::{binary, spawn_here, NsProcess};
use crate::postgres::Postgres;
use crate::{current_transport, AgentBuilder};

/// How long a node has to start listening.
const START: Duration = Duration::from_secs(20);

/// One node.
pub struct Node {
    /// Its name (`node-1`, …).
    pub name: String,
    /// Where it listens, and its public address.
    pub addr: SocketAddr,
    /// The running binary, if it runs.
    pub process: Option<NsProcess>,
    /// The address it tells agents and clients to use, when not `addr` (one that cannot
    /// be reached, say).
    pub public_addr: Option<String>,
    /// Its admin listener, when the cluster has them.
    pub admin: Option<SocketAddr>,
    data: tempfile::TempDir,
}

/// The nodes and their database.
pub struct TestCluster {
    /// The nodes, in the order made.
    pub nodes: Vec<Node>,
    /// The certificate every node serves.
    pub fingerprint: CertFingerprint,
    /// The registry, for looking at presence and node rows.
    pub registry: Registry,
    /// Whether nodes serve their admin listener (on a port of the system's choice).
    with_admin: bool,
    cert: tempfile::TempDir,
    /// Dropped last: the database.
    pub pg: Postgres,
}

/// A loopback port free on both TCP and UDP (QUIC shares the port).
///
/// # Panics
/// If none is found in 100 tries.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on TCP and UDP");
}

impl TestCluster {
    /// Starts `n` nodes and waits until each sees the others. `None` (with the reason on
    /// stderr) when PostgreSQL is not installed.
    pub async fn start(n: usize) -> Option<Self> {
        Self::start_nodes(n, false).await
    }

    /// As [`Self::start`], each node with its admin listener ([`Node::admin`]).
    pub async fn start_with_admin(n: usize) -> Option<Self> {
        Self::start_nodes(n, true).await
    }

    async fn start_nodes(n: usize, with_admin: bool) -> Option<Self> {
        let pg = tokio::task::spawn_blocking(Postgres::start)
            .await
            .unwrap()?;
        let cert = tempfile::tempdir().unwrap();
        let identity = telework_relay::identity::self_signed(cert.path(), &[]).unwrap();
        let registry = Registry::connect(&pg.url()).await.unwrap();
        let mut cluster = Self {
            nodes: Vec::new(),
            fingerprint: identity.fingerprint,
            registry,
            with_admin,
            cert,
            pg,
        };
        for _ in 0..n {
            cluster.add_node();
        }
        cluster.wait_live(n, Duration::from_secs(15)).await;
        Some(cluster)
    }

    /// Adds a node (`node-N`) and starts it.
    pub fn add_node(&mut self) -> usize {
        self.nodes.push(Node {
            name: format!("node-{}", self.nodes.len() + 1),
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            process: None,
            public_addr: None,
            admin: None,
            data: tempfile::tempdir().unwrap(),
        });
        let i = self.nodes.len() - 1;
        self.run(i);
        i
    }

    /// Starts node `i` (again), on its port.
    pub fn run(&mut self, i: usize) {
        let cert = self.cert.path().join(telework_relay::identity::CERT_FILE);
        let key = self.cert.path().join(telework_relay::identity::KEY_FILE);
        let node = &self.nodes[i];
        let addr = node.addr.to_string();
        let public = node.public_addr.clone().unwrap_or_else(|| addr.clone());
        let url = self.pg.url();
        let config = node.data.path().join("relay.toml");
        std::fs::write(&config, "shutdown_grace_secs = 8\n").unwrap();
        let mut args = vec![
            "serve",
            "--listen",
            &addr,
            "--public-addr",
            &public,
            "--node-name",
            &node.name,
            "--database",
            &url,
            "--data-dir",
            node.data.path().to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ];
        if self.with_admin {
            args.extend(["--admin-listen", "127.0.0.1:0"]);
        } else {
            args.push("--no-admin");
        }
        let process = spawn_here(&binary("telework-relay"), &args, &[("RUST_LOG", "info")]);
        process.wait_for("telework-relay listening on", START);
        if self.with_admin {
            let line = process.wait_for("admin console on http://", START);
            let addr = line
                .split("http://")
                .nth(1)
                .and_then(|rest| rest.trim_end().strip_suffix('/'))
                .and_then(|addr| addr.parse().ok())
                .unwrap_or_else(|| panic!("no admin address in {line:?}"));
            self.nodes[i].admin = Some(addr);
        }
        self.nodes[i].process = Some(process);
    }

    /// Kills node `i` outright (SIGKILL): no drain, its rows stay behind.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].process.take() {
            p.kill();
        }
    }

    /// Sends node `i` SIGTERM (a drain) without waiting.
    pub fn terminate(&self, i: usize) {
        if let Some(p) = &self.nodes[i].process {
            crate::netns::run("kill", &["-TERM", &p.pid().to_string()]);
        }
    }

    /// Node `i`'s process.
    pub fn process(&mut self, i: usize) -> &mut NsProcess {
        self.nodes[i].process.as_mut().expect("the node runs")
    }

    /// Waits until `n` nodes have live heartbeat rows, and then for one more heartbeat, so
    /// that each has read the others' rows.
    pub async fn wait_live(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let live = self.live_nodes().await;
            if live.len() == n {
                let beat = telework_relay::cluster::HEARTBEAT + Duration::from_millis(500);
                tokio::time::sleep(beat).await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} nodes live after {within:?}: {live:?}",
                live.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The nodes with unexpired rows.
    pub async fn live_nodes(&self) -> Vec<NodeRow> {
        let now = telework_relay::cluster::now_ms();
        let mut rows = self.registry.nodes().await.unwrap();
        rows.retain(|n| n.live(now));
        rows
    }

    /// Every presence row.
    pub async fn presence(&self) -> Vec<Presence> {
        self.registry.presence().await.unwrap()
    }

    /// An agent `id` that reaches the cluster through node `i`.
    pub fn agent(&self, i: usize, id: &str, password: Option<&str>) -> AgentBuilder {
        AgentBuilder {
            relay: self.nodes[i].addr,
            fingerprint: self.fingerprint,
            id: id.parse().unwrap(),
            password: password.map(str::to_owned),
            target: "127.0.0.1:9".parse().unwrap(),
            transport: current_transport(),
            quic_reprobe: None,
            presence_in: None,
        }
    }

    /// Where a client asks node `i` for `id`.
    pub fn target(&self, i: usize, id: &str) -> Target {
        Target {
            relay: self.nodes[i].addr.to_string().parse().unwrap(),
            trust: telework_net::tls::RelayTrust::Fingerprint(self.fingerprint),
            transport: current_transport(),
            id: id.parse().unwrap(),
        }
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }
}

/// Sends one HTTP/1.1 request to an admin listener with an API token, and returns the status
/// and the body. Plain HTTP on loopback, one request per connection: enough for the API.
pub async fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut response))
        .await
        .expect("the admin listener answers")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}
