//! The end-to-end tests' cluster variant: a [`crate::TestRelay`] whose relay is `node-1` of
//! three in-process nodes on a throwaway PostgreSQL. Agents and clients reach node 1 and are
//! sent on to the node their office PC belongs to, so every scenario crosses nodes. Also
//! [`crate::TestRelay::start_beside`]: a second node on a relay's own SQLite file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use telework_relay::identity::{self, TlsIdentity};
use telework_relay::registry::Registry;
use telework_relay::{Relay, RelayOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::postgres::Postgres;

tokio::task_local! {
    /// Whether the current test runs against a cluster (set by
    /// [`crate::on_both_transports_and_a_cluster!`]).
    pub static CLUSTER: bool;
}

/// Whether the test running now wants a cluster.
pub fn wanted() -> bool {
    CLUSTER.try_with(|c| *c).unwrap_or(false)
}

/// A node serving in this process.
pub struct Node {
    /// The relay.
    pub relay: Arc<Relay>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Node {
    /// Starts a node called `name` on a free loopback port.
    pub async fn start(
        url: &str,
        identity: &TlsIdentity,
        mut options: RelayOptions,
        name: &str,
    ) -> Self {
        let registry = Registry::connect(url).await.unwrap();
        options.node_name = name.to_owned();
        let relay = Relay::new(registry, identity, options).unwrap();
        let (listener, quic) = relay.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(relay.clone().serve(listener, quic, async move {
            let _ = stopped.await;
        }));
        Self {
            relay,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            drop(task);
        }
    }
}

/// Nodes 2 and 3 and the database of a cluster-variant [`crate::TestRelay`].
pub struct Others {
    /// Nodes 2 and 3.
    pub nodes: Vec<Node>,
    /// The database URL.
    pub url: String,
    /// Dropped last.
    _pg: Postgres,
}

impl Others {
    /// Starts the database and nodes 2 and 3; node 1 is started by the caller on `url`.
    /// `None` when PostgreSQL is not installed.
    pub async fn start(identity: &TlsIdentity, options: &RelayOptions) -> Option<Self> {
        let pg = tokio::task::spawn_blocking(Postgres::start)
            .await
            .unwrap()?;
        let url = pg.url();
        let mut nodes = Vec::new();
        for name in ["node-2", "node-3"] {
            nodes.push(Node::start(&url, identity, options.clone(), name).await);
        }
        Some(Self {
            nodes,
            url,
            _pg: pg,
        })
    }

    /// Waits until node 1 (`first`) and the others each see the two other nodes.
    pub async fn wait_joined(&self, first: &Relay) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let relays = || std::iter::once(first).chain(self.nodes.iter().map(|n| &*n.relay));
        while !relays().all(|r| r.cluster.others().len() == 2) {
            assert!(
                Instant::now() < deadline,
                "the three nodes did not see each other"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits (5 s at most) until `id` has a presence row in the database at `url`.
pub async fn wait_for_presence(url: &str, id: &telework_protocol::ComputerId) {
    let registry = Registry::connect(url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while registry.presence_of(id).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "no presence row for {id}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl crate::TestRelay {
    /// Starts another relay node beside this one, as a second node of a cluster: its own
    /// address and `options` (give it another `node_name`), this one's certificate (agents
    /// and clients pinned to it accept either node) and registry file.
    pub async fn start_beside(&self, options: RelayOptions) -> Self {
        assert!(
            self.others.is_none(),
            "a relay on SQLite, not the cluster variant"
        );
        let dir = tempfile::tempdir().unwrap();
        for file in [identity::CERT_FILE, identity::KEY_FILE] {
            std::fs::copy(self.dir.path().join(file), dir.path().join(file)).unwrap();
        }
        let id = identity::self_signed(dir.path(), &[]).unwrap();
        assert_eq!(id.fingerprint, self.fingerprint, "the same certificate");
        let registry = Registry::open(&self.dir.path().join("relay.db")).unwrap();
        let relay = Relay::new(registry, &id, options).unwrap();
        let (listener, quic) = relay.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(relay.clone().serve(listener, quic, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            fingerprint: id.fingerprint,
            relay,
            transport: self.transport,
            stop: Some(stop),
            task: Some(task),
            dir,
            others: None,
        }
    }
}
