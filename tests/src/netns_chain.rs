//! The real programs across the namespaces of [`crate::netns::Networks`]: `telework-relay
//! serve` in `relay`, `telework-agent register`/`run` in `office`, `telework connect` in
//! `home`, an echo and a sink desktop service in `office`, and many simulated agents in
//! `office` for load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use telework_net::framed::Framed;
use telework_net::tls::RelayTrust;
use telework_net::transport::dial::Dialer;
use telework_net::transport::{Role, TransportChoice};
use telework_protocol::messages::{AgentToRelay, RelayOpens, RelayToAgent, PROTOCOL_VERSION};
use telework_protocol::proof::MachineKey;
use telework_protocol::{CertFingerprint, ComputerId};
use tokio_util::sync::CancellationToken;

use crate::netns::{binary, Networks, Ns, NsProcess};
use crate::{EchoServer, SinkServer};

/// The programs' log settings: info, without colours (tests read the lines).
const LOG: &[(&str, &str)] = &[("RUST_LOG", "info"), ("NO_COLOR", "1")];

/// How long a program may take to start and say so.
pub const START: Duration = Duration::from_secs(15);

/// A `telework-relay serve` process in the relay namespace, on both of its addresses.
pub struct RelayProcess {
    /// The running relay (killed on drop).
    pub process: NsProcess,
    /// Its certificate's fingerprint, as it printed it.
    pub fingerprint: CertFingerprint,
    /// Its data dir: certificate and registry, kept across restarts.
    pub data_dir: PathBuf,
    ns: Ns,
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    /// Starts the relay with a new data dir and waits until it listens.
    pub fn start(nets: &Networks) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("relay");
        let (process, fingerprint) = Self::serve(&nets.relay, &data_dir);
        Self {
            process,
            fingerprint,
            data_dir,
            ns: nets.relay.clone(),
            _dir: dir,
        }
    }

    fn serve(ns: &Ns, data_dir: &Path) -> (NsProcess, CertFingerprint) {
        let process = ns.spawn_with(
            &binary("telework-relay"),
            &[
                "serve",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--listen",
                &format!("0.0.0.0:{}", crate::netns::RELAY_PORT),
            ],
            LOG,
        );
        process.wait_for("telework-relay listening on", START);
        let line = process.wait_for("certificate fingerprint:", START);
        let fingerprint = line
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|e| panic!("fingerprint in '{line}': {e:?}"));
        (process, fingerprint)
    }

    /// Kills the relay with SIGKILL (no goodbye to anyone) and starts it again on the same
    /// data dir and addresses, as a crash and a supervisor's restart do.
    pub fn kill_and_restart(&mut self) {
        self.process.kill();
        let (process, fingerprint) = Self::serve(&self.ns, &self.data_dir);
        assert_eq!(
            fingerprint, self.fingerprint,
            "same certificate after restart"
        );
        self.process = process;
    }

    /// Registers machines straight in the relay's registry (for simulated agents), as
    /// `telework-agent register` would have done one by one.
    pub fn register(&self, machines: &[(ComputerId, MachineKey)]) {
        let registry =
            telework_relay::registry::Registry::open(&self.data_dir.join("relay.db")).unwrap();
        crate::block_on(async {
            for (id, key) in machines {
                registry.register(id, &key.public_key()).await.unwrap();
            }
        });
    }
}

/// A `telework-agent run` process in `office`, registered and with its password set.
pub struct AgentProcess {
    /// The running agent (killed on drop).
    pub process: NsProcess,
    /// When `telework-agent run` was started.
    pub started: std::time::Instant,
    /// The agent's data dir (for `telework-agent wake …` and other commands).
    pub data: PathBuf,
    _dir: tempfile::TempDir,
}

/// An office PC registered and with its password set, not running yet (a PC that sleeps).
pub struct PreparedAgent {
    /// Its data dir.
    pub data: PathBuf,
    dir: tempfile::TempDir,
}

impl PreparedAgent {
    /// Registers `id` at `relay` from `office` and sets its password.
    pub fn new(
        nets: &Networks,
        relay: &RelayProcess,
        id: &str,
        password: &str,
        transport: &str,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("agent");
        let data_str = data.to_str().unwrap();
        let agent = binary("telework-agent");
        let relay_addr = nets.relay_from_office().to_string();
        let fingerprint = relay.fingerprint.to_string();
        nets.office.exec(
            agent.to_str().unwrap(),
            &[
                "register",
                "--data-dir",
                data_str,
                "--relay",
                &relay_addr,
                "--relay-fingerprint",
                &fingerprint,
                "--id",
                id,
                "--transport",
                transport,
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        );
        let mut set = nets.office.spawn(
            &agent,
            &["set-password", "--data-dir", data_str, "--password-stdin"],
        );
        set.write_line(password);
        let code = set.wait_exit(START);
        assert_eq!(code, Some(0), "set-password failed:\n{}", set.output());
        Self { data, dir }
    }

    /// Starts `telework-agent run` in `office`, forwarding to `target`.
    pub fn run(self, nets: &Networks, target: SocketAddr) -> AgentProcess {
        let started = std::time::Instant::now();
        let process = nets.office.spawn_with(
            &binary("telework-agent"),
            &[
                "run",
                "--data-dir",
                self.data.to_str().unwrap(),
                "--target",
                &target.to_string(),
            ],
            LOG,
        );
        AgentProcess {
            process,
            started,
            data: self.data,
            _dir: self.dir,
        }
    }
}

impl AgentProcess {
    /// Registers `id` on the relay (open registration), sets `password`, and starts
    /// `telework-agent run` forwarding to `target` (in `office`). Returns at once: wait for
    /// its `online over` line with [`NsProcess::wait_for`].
    pub fn start(
        nets: &Networks,
        relay: &RelayProcess,
        id: &str,
        password: &str,
        target: SocketAddr,
        transport: &str,
    ) -> Self {
        Self::start_with(nets, relay, id, password, target, transport, &[])
    }

    /// [`AgentProcess::start`] with `extra` arguments to `register` (which saves settings
    /// such as `--proxy` for `run`).
    pub fn start_with(
        nets: &Networks,
        relay: &RelayProcess,
        id: &str,
        password: &str,
        target: SocketAddr,
        transport: &str,
        extra: &[&str],
    ) -> Self {
        PreparedAgent::new(nets, relay, id, password, transport, extra).run(nets, target)
    }
}

/// A `telework connect` process in `home` with `--launch none` (logged in, once
/// [`ClientProcess::connect`] returns).
pub struct ClientProcess {
    /// The running client (killed on drop).
    pub process: NsProcess,
    /// Its local listener (in `home`'s loopback: connect with [`Ns::connect`]).
    pub local: SocketAddr,
    _profile: tempfile::TempDir,
}

impl ClientProcess {
    /// Connects to `id` with `password` and waits until its local port is open.
    pub fn connect(
        nets: &Networks,
        relay: &RelayProcess,
        id: &str,
        password: &str,
        transport: &str,
    ) -> Self {
        let mut client = Self::spawn(nets, relay, id, password, transport, &[]);
        client.local = client.wait_connected(START);
        client
    }

    /// Starts `telework connect ID … EXTRA` in `home` with the password on its standard
    /// input (not a terminal), without waiting; `local` is unset until
    /// [`ClientProcess::wait_connected`].
    pub fn spawn(
        nets: &Networks,
        relay: &RelayProcess,
        id: &str,
        password: &str,
        transport: &str,
        extra: &[&str],
    ) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let mut process = nets.home.spawn_with(
            &binary("telework"),
            &[
                "connect",
                id,
                "--relay",
                &nets.relay_from_home().to_string(),
                "--relay-fingerprint",
                &relay.fingerprint.to_string(),
                "--transport",
                transport,
                "--launch",
                "none",
                "--password-stdin",
                "--config-dir",
                profile.path().to_str().unwrap(),
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
            LOG,
        );
        process.write_line(password);
        Self {
            process,
            local: SocketAddr::from(([0, 0, 0, 0], 0)),
            _profile: profile,
        }
    }

    /// Waits for the client to say where its RDP client should connect; returns that.
    pub fn wait_connected(&self, timeout: Duration) -> SocketAddr {
        let line = self.process.wait_for("point your RDP client at", timeout);
        line.rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|e| panic!("local address in '{line}': {e}"))
    }
}

/// An echo and a sink desktop service listening on `office`'s loopback, served by a thread
/// inside `office`; stopped on drop.
pub struct OfficeServices {
    /// The echo service.
    pub echo: SocketAddr,
    /// The sink (answers with the byte count and SHA-256 of what it read).
    pub sink: SocketAddr,
    stop: CancellationToken,
}

impl OfficeServices {
    /// Starts both in `office`.
    pub fn start(office: &Ns) -> Self {
        let stop = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let stopped = stop.clone();
        office.thread(move || {
            current_thread().block_on(async move {
                let echo = EchoServer::start().await;
                let sink = SinkServer::start().await;
                tx.send((echo.addr, sink.addr)).unwrap();
                stopped.cancelled().await;
            })
        });
        let (echo, sink) = rx.recv_timeout(START).expect("office services started");
        Self { echo, sink, stop }
    }
}

impl Drop for OfficeServices {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Many office PCs simulated in this process by a thread inside `office`, each with its own
/// machine key and its own connection to the relay, coming online as the agent does (dial,
/// prove the key, and after a failure or a lost connection wait the agent's back-off and
/// dial again). Stopped on drop.
pub struct SimulatedAgents {
    /// Welcomes from the relay so far, over all agents and connections.
    pub welcomes: Arc<AtomicUsize>,
    /// Of those, the welcomes on QUIC connections.
    pub on_quic: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl SimulatedAgents {
    /// Registers `n` machines in `relay`'s registry and brings them online from `office`.
    pub fn start(
        nets: &Networks,
        relay: &RelayProcess,
        n: usize,
        transport: TransportChoice,
    ) -> Self {
        let machines: Vec<(ComputerId, MachineKey)> = (0..n)
            .map(|i| {
                let id = format!("sim-pc-{i}").parse().unwrap();
                (id, MachineKey::generate().unwrap())
            })
            .collect();
        relay.register(&machines);
        let welcomes = Arc::new(AtomicUsize::new(0));
        let on_quic = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let addr = nets.relay_from_office().to_string().parse().unwrap();
        let trust = RelayTrust::Fingerprint(relay.fingerprint);
        let (count, quic, stopped) = (welcomes.clone(), on_quic.clone(), stop.clone());
        nets.office.thread(move || {
            current_thread().block_on(async move {
                let dialer = Dialer::new(addr, &trust, Role::Agent, transport).unwrap();
                let mut tasks = tokio::task::JoinSet::new();
                for (id, key) in machines {
                    let counts = (count.clone(), quic.clone());
                    tasks.spawn(stopped.clone().run_until_cancelled_owned(stay_online(
                        dialer.clone(),
                        id,
                        key,
                        counts,
                    )));
                }
                while tasks.join_next().await.is_some() {}
            })
        });
        Self {
            welcomes,
            on_quic,
            stop,
        }
    }

    /// Waits until the relay has welcomed `total` times (bounded by `timeout`); returns
    /// whether it did.
    pub async fn wait_for_welcomes(&self, total: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.welcomes.load(Ordering::SeqCst) < total {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

impl Drop for SimulatedAgents {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One simulated agent, forever: online, keepalives, and again after the connection is lost.
async fn stay_online(
    dialer: Dialer,
    id: ComputerId,
    key: MachineKey,
    (welcomes, on_quic): (Arc<AtomicUsize>, Arc<AtomicUsize>),
) {
    let mut backoff = telework_agent::backoff::Backoff::default();
    loop {
        if let Ok((connection, mut control)) = online(&dialer, &id, &key).await {
            backoff.reset();
            if connection.kind() == telework_net::transport::TransportKind::Quic {
                on_quic.fetch_add(1, Ordering::SeqCst);
            }
            welcomes.fetch_add(1, Ordering::SeqCst);
            let mut seq = 0;
            loop {
                tokio::select! {
                    _ = connection.closed() => break,
                    _ = tokio::time::sleep(telework_agent::control::KEEPALIVE) => {
                        seq += 1;
                        if control.write(&AgentToRelay::Ping(seq)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(backoff.next_delay(rand::random::<f64>())).await;
    }
}

async fn online(
    dialer: &Dialer,
    id: &ComputerId,
    key: &MachineKey,
) -> anyhow::Result<(
    telework_net::transport::Connection,
    Framed<telework_net::transport::Stream>,
)> {
    let connection = dialer.dial().await?.connection;
    let mut f = Framed::new(connection.accept().await?);
    let RelayOpens::Control { .. } = f.read_within::<RelayOpens>(START).await? else {
        anyhow::bail!("expected the control stream");
    };
    f.write(&AgentToRelay::Hello {
        version: PROTOCOL_VERSION,
        proof: key.prove(id, connection.channel_binding()),
        id: id.clone(),
        unreachable: Vec::new(),
    })
    .await?;
    match f.read_within::<RelayToAgent>(START).await? {
        RelayToAgent::Welcome { .. } => Ok((connection, f)),
        other => anyhow::bail!("not welcomed: {other:?}"),
    }
}
