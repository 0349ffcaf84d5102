//! End-to-end harness: start a relay, agents and clients in process on `127.0.0.1:0`, with
//! real TLS, and simple desktop stand-ins (echo and sink servers) to forward to.
//!
//! ```no_run
//! # async fn demo() {
//! use telework_tests::*;
//! let relay = TestRelay::start().await;
//! let desktop = EchoServer::start().await;
//! let agent = relay.agent("pc-1", "password-1").target(desktop.addr).run().await;
//! let session = relay.login("pc-1", "password-1").await.unwrap();
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod cluster;
pub mod desktop;
pub mod evil;
pub mod gate;
pub mod hand_login;
pub mod impair;
pub mod in_process_cluster;
pub mod it_staff;
pub mod netns;
pub mod netns_chain;
pub mod packages;
pub mod postgres;
pub mod relay_process;
pub mod tinyproxy;
pub mod tmux;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use telework_agent::state::{AgentSettings, DataDir};
use telework_agent::Agent;
use telework_client::{ClientError, Session, Target};
use telework_net::framed::Framed;
use telework_net::tls::RelayTrust;
use telework_net::transport::dial::Dialer;
use telework_net::transport::{Connection, Role, Stream, TransportChoice};
use telework_protocol::e2e::pake::PasswordRecord;
use telework_protocol::messages::{ClientToRelay, RelayToClient, PROTOCOL_VERSION};
use telework_protocol::proof::MachineKey;
use telework_protocol::{CertFingerprint, ComputerId};
use telework_relay::identity;
use telework_relay::registry::Registry;
use telework_relay::{Relay, RelayOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Runs `work` to completion on a fresh thread with its own small runtime, from sync code or
/// from inside another runtime alike (for registry calls in test set-up).
///
/// # Panics
/// If the runtime cannot start or `work` panics.
pub fn block_on<F>(work: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a test runtime")
                    .block_on(work)
            })
            .join()
            .expect("the work panicked")
    })
}

pub use desktop::{echo_once, EchoServer, SinkServer};
pub use it_staff::{require_approved_devices, require_totp, revoke, with_current_codes};

tokio::task_local! {
    /// The transport the current test runs on (set by [`on_both_transports!`]).
    pub static TRANSPORT: TransportChoice;
}

/// The transport of the test running now: the one [`on_both_transports!`] chose, else `auto`.
pub fn current_transport() -> TransportChoice {
    TRANSPORT.try_with(|t| *t).unwrap_or(TransportChoice::Auto)
}

/// One variant of a test: `$body` on `$transport`, against a cluster when `$cluster`.
#[doc(hidden)]
#[macro_export]
macro_rules! __test_variant {
    ($variant:ident, $transport:ident, $cluster:expr, [$(#[$meta:meta])*], $body:block) => {
        $(#[$meta])*
        async fn $variant() {
            $crate::in_process_cluster::CLUSTER
                .scope(
                    $cluster,
                    $crate::TRANSPORT.scope(
                        telework_net::transport::TransportChoice::$transport,
                        async $body,
                    ),
                )
                .await
        }
    };
}

/// Runs each test twice, as `NAME::quic` and `NAME::tcp`: relays, agents and clients the
/// harness makes inside it use that transport.
#[macro_export]
macro_rules! on_both_transports {
    ($( $(#[$meta:meta])* async fn $name:ident() $body:block )*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                $crate::__test_variant!(quic, Quic, false, [$(#[$meta])*], $body);
                $crate::__test_variant!(tcp, Tcp, false, [$(#[$meta])*], $body);
            }
        )*
    };
}

/// [`on_both_transports!`], and a third time as `NAME::cluster` (QUIC): the harness's relay
/// is then node 1 of three in-process nodes on a throwaway PostgreSQL
/// ([`in_process_cluster`]), and agents and clients are sent on to their nodes.
#[macro_export]
macro_rules! on_both_transports_and_a_cluster {
    ($( $(#[$meta:meta])* async fn $name:ident() $body:block )*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                $crate::__test_variant!(quic, Quic, false, [$(#[$meta])*], $body);
                $crate::__test_variant!(tcp, Tcp, false, [$(#[$meta])*], $body);
                $crate::__test_variant!(cluster, Quic, true, [$(#[$meta])*], $body);
            }
        )*
    };
}

/// Installs a test log subscriber once (`RUST_LOG` controls it).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A relay running in this process.
pub struct TestRelay {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its self-signed certificate's fingerprint.
    pub fingerprint: CertFingerprint,
    /// The relay itself, for inspecting presence and the registry.
    pub relay: Arc<Relay>,
    /// The transport the harness's agents and clients use to reach it.
    pub transport: TransportChoice,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// Its data dir (removed on drop).
    pub dir: tempfile::TempDir,
    /// In the cluster variant: nodes 2 and 3 and the database (this relay is node 1).
    pub others: Option<in_process_cluster::Others>,
}

impl TestRelay {
    /// Starts a relay with default options.
    pub async fn start() -> Self {
        Self::start_with(RelayOptions::default()).await
    }

    /// Starts a relay with `options`.
    pub async fn start_with(mut options: RelayOptions) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let id = identity::self_signed(dir.path(), &[]).unwrap();
        let others = match in_process_cluster::wanted() {
            true => in_process_cluster::Others::start(&id, &options).await,
            false => None,
        };
        let registry = match &others {
            Some(others) => {
                options.node_name = "node-1".into();
                Registry::connect(&others.url).await.unwrap()
            }
            None => Registry::open(&dir.path().join("relay.db")).unwrap(),
        };
        let relay = Relay::new(registry, &id, options).unwrap();
        let (listener, quic) = relay.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(relay.clone().serve(listener, quic, async move {
            let _ = stopped.await;
        }));
        if let Some(others) = &others {
            others.wait_joined(&relay).await;
        }
        Self {
            addr,
            fingerprint: id.fingerprint,
            relay,
            transport: current_transport(),
            stop: Some(stop),
            task: Some(task),
            dir,
            others,
        }
    }

    /// Whether `id` is online at any node.
    pub fn is_online(&self, id: &ComputerId) -> bool {
        self.relay.hub.is_online(id)
            || self
                .others
                .iter()
                .flat_map(|o| &o.nodes)
                .any(|n| n.relay.hub.is_online(id))
    }

    /// Stops the relay and starts a new one on the same address with the same data dir
    /// (certificate and registry), as an operator's restart does.
    pub async fn restart(mut self) -> Self {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        let id = identity::self_signed(self.dir.path(), &[]).unwrap();
        let (registry, options) = match &self.others {
            Some(others) => (
                Registry::connect(&others.url).await.unwrap(),
                RelayOptions {
                    node_name: "node-1".into(),
                    ..RelayOptions::default()
                },
            ),
            None => (
                Registry::open(&self.dir.path().join("relay.db")).unwrap(),
                RelayOptions::default(),
            ),
        };
        let relay = Relay::new(registry, &id, options).unwrap();
        let listener = TcpListener::bind(self.addr).await.unwrap();
        // The old endpoint's UDP socket goes when its last connection has.
        let mut quic = relay.quic_endpoint(&listener);
        for _ in 0..50 {
            if quic.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            quic = relay.quic_endpoint(&listener);
        }
        let quic = quic.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(relay.clone().serve(listener, quic, async move {
            let _ = stopped.await;
        }));
        self.relay = relay;
        self.stop = Some(stop);
        self.task = Some(task);
        self
    }

    /// Where a client connects to reach `id`.
    pub fn target(&self, id: &str) -> Target {
        Target {
            relay: self.addr.to_string().parse().unwrap(),
            trust: RelayTrust::Fingerprint(self.fingerprint),
            transport: self.transport,
            id: id.parse().unwrap(),
        }
    }

    /// A dialler for `role` on this relay's transport.
    pub fn dialer(&self, role: Role) -> Dialer {
        Dialer::new(
            self.addr.to_string().parse().unwrap(),
            &RelayTrust::Fingerprint(self.fingerprint),
            role,
            self.transport,
        )
        .unwrap()
    }

    /// A new client connection to this relay.
    pub async fn client_connection(&self) -> Connection {
        self.dialer(Role::Client).dial().await.unwrap().connection
    }

    /// Starts building an agent registered on this relay.
    pub fn agent(&self, id: &str, password: &str) -> AgentBuilder {
        AgentBuilder {
            relay: self.addr,
            fingerprint: self.fingerprint,
            id: id.parse().unwrap(),
            password: Some(password.to_owned()),
            target: "127.0.0.1:9".parse().unwrap(),
            transport: self.transport,
            quic_reprobe: None,
            presence_in: self.others.as_ref().map(|o| o.url.clone()),
        }
    }

    /// Starts an echo service as the office desktop and an agent `id` forwarding to it,
    /// online: the set-up most tests begin with.
    pub async fn office_pc(&self, id: &str, password: &str) -> (EchoServer, TestAgent) {
        let desktop = EchoServer::start().await;
        let agent = self.agent(id, password).target(desktop.addr).run().await;
        (desktop, agent)
    }

    /// A client stream paired with the office PC `id` by hand (the relay's `Paired` already
    /// read): what is written next goes to the agent unchanged. The stream keeps its
    /// connection open.
    pub async fn pair(&self, id: &str) -> Framed<Stream> {
        let connection = self.client_connection().await;
        let mut f = Framed::new(connection.open().await.unwrap());
        f.write(&connect_request(&connection, id)).await.unwrap();
        assert_eq!(
            f.read::<RelayToClient>().await.unwrap(),
            RelayToClient::Paired
        );
        f
    }

    /// Logs in to `id` with `password`.
    pub async fn login(&self, id: &str, password: &str) -> Result<Session, ClientError> {
        Session::login(&self.target(id), password.as_bytes()).await
    }

    /// Stops the relay and waits for it to finish its shutdown.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Configures an agent before it starts.
pub struct AgentBuilder {
    relay: SocketAddr,
    fingerprint: CertFingerprint,
    id: ComputerId,
    password: Option<String>,
    target: SocketAddr,
    transport: TransportChoice,
    quic_reprobe: Option<Duration>,
    /// In a cluster: the database whose presence row `run` waits for, so that a client
    /// asking another node at once finds the agent (the row is written a moment after the
    /// agent is welcomed).
    presence_in: Option<String>,
}

impl AgentBuilder {
    /// The desktop service to forward to.
    pub fn target(mut self, addr: SocketAddr) -> Self {
        self.target = addr;
        self
    }

    /// The transport the agent reaches the relay on (default: the relay's test transport).
    pub fn transport(mut self, transport: TransportChoice) -> Self {
        self.transport = transport;
        self
    }

    /// Reaches the relay at `addr` instead (a [`gate::Gate`] in front of it).
    pub fn via(mut self, addr: SocketAddr) -> Self {
        self.relay = addr;
        self
    }

    /// How often the agent tries QUIC again while on TLS/TCP.
    pub fn quic_reprobe(mut self, every: Duration) -> Self {
        self.quic_reprobe = Some(every);
        self
    }

    /// Registers, sets the password, starts the agent, and waits until it is online.
    pub async fn run(self) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let settings = AgentSettings {
            computer_id: self.id.clone(),
            relay: self.relay.to_string(),
            relay_fingerprint: Some(self.fingerprint.to_string()),
            relay_ca: None,
            transport: self.transport,
            proxy: None,
        };
        telework_agent::register::register(&data, &settings, None)
            .await
            .unwrap();
        if let Some(pw) = &self.password {
            data.save_password(&PasswordRecord::create(pw.as_bytes()).unwrap())
                .unwrap();
        }
        let mut options = telework_agent::RunOptions::default();
        if let Some(every) = self.quic_reprobe {
            options.quic_reprobe = every;
        }
        let agent = Agent::open(data, self.target.to_string(), options).unwrap();
        let mut online = agent.online();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.clone().run(async move {
            let _ = stopped.await;
        }));
        tokio::time::timeout(Duration::from_secs(10), online.wait_for(|up| *up))
            .await
            .expect("agent came online in time")
            .unwrap();
        if let Some(url) = &self.presence_in {
            in_process_cluster::wait_for_presence(url, &self.id).await;
        }
        TestAgent {
            agent,
            stop: Some(stop),
            task: Some(task),
            dir,
        }
    }
}

/// Runs `agent` (loaded by the test, say from a copied data dir) until the returned task is
/// aborted, once it is online.
pub async fn run_until_online(
    agent: Arc<Agent>,
) -> JoinHandle<Result<(), telework_agent::AgentError>> {
    let mut online = agent.online();
    let task = tokio::spawn(agent.clone().run(std::future::pending()));
    tokio::time::timeout(Duration::from_secs(10), online.wait_for(|up| *up))
        .await
        .expect("agent came online in time")
        .unwrap();
    task
}

/// An agent running in this process.
pub struct TestAgent {
    /// The agent.
    pub agent: Arc<Agent>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), telework_agent::AgentError>>>,
    /// Its data dir.
    pub dir: tempfile::TempDir,
}

/// A copy of a data dir as a new process would find it: the files it holds now, without the
/// hidden temporary files a write still under way is renaming into place.
pub fn copy_dir(dir: &std::path::Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        match std::fs::copy(entry.path(), copy.path().join(entry.file_name())) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("copying {}: {e}", entry.path().display()),
        }
    }
    copy
}

impl TestAgent {
    /// A copy of the agent's data dir, to start the same machine again (its files outlive
    /// this agent, whose own dir is removed when it is dropped).
    pub fn copy_data_dir(&self) -> tempfile::TempDir {
        copy_dir(self.dir.path())
    }

    /// Stops the agent and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A client session serving a local listener, as `telework connect` does.
pub struct TestClient {
    /// Where the "RDP client" connects.
    pub local: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    /// The session's task; its result says how the session ended.
    pub task: JoinHandle<Result<telework_client::session::Ended, ClientError>>,
}

impl TestClient {
    /// Serves `session` on `127.0.0.1:0`.
    pub async fn serve(session: Session) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(session.serve(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            local,
            stop: Some(stop),
            task,
        }
    }

    /// Ends the session (as Ctrl-C does) and returns how it ended.
    pub async fn stop(mut self) -> Result<telework_client::session::Ended, ClientError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("client stopped")
            .unwrap()
    }
}

/// Login options for a device whose key and pins live in `profile`, as `telework connect` has.
pub fn options_with_profile(
    profile: &telework_client::profile::Profile,
) -> telework_client::LoginOptions {
    telework_client::LoginOptions {
        device: Arc::new(profile.device_key().unwrap()),
        device_name: "home-laptop".into(),
        profile: Some(profile.clone()),
        ..telework_client::LoginOptions::default()
    }
}

/// The request a client sends on a new stream of `connection` to reach the office PC `id`,
/// from a new device key proved on that connection.
pub fn connect_request(connection: &Connection, id: &str) -> ClientToRelay {
    let device = MachineKey::generate().expect("system random source");
    ClientToRelay::ConnectAs {
        version: PROTOCOL_VERSION,
        id: id.parse().expect("a valid computer ID"),
        device_key: device.public_key(),
        device_proof: device.sign(&telework_protocol::proof::device_proof_message(
            connection.channel_binding(),
        )),
    }
}
