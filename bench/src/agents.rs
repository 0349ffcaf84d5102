//! Many idle agents, opened straight from this process with the protocol library (registering
//! each with its own machine key, then coming online and sending keepalives), to measure the
//! relay's memory per agent and how many it holds.
//!
//! Each agent dials from one of several loopback source addresses (127.0.0.2 and up), as many
//! offices behind their own addresses would, so that neither the relay's per-address limits nor
//! the 28,000 ephemeral ports of one address bound the count. The dial is the bench's own (the
//! programs' [`telework_net::transport::dial::Dialer`] always binds the wildcard address):
//! QUIC shares one quinn endpoint per source address (the relay cannot tell, and it keeps
//! this process's sockets few); TLS/TCP binds each socket before connecting, then speaks
//! HTTP/2 as the agent's end does ([`telework_net::transport::h2::acceptor`]).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _};
use telework_net::framed::Framed;
use telework_net::tls::RelayTrust;
use telework_net::transport::{alpn, TransportChoice};
use telework_protocol::messages::{AgentToRelay, RelayOpens, RelayToAgent, PROTOCOL_VERSION};
use telework_protocol::proof::{MachineKey, EXPORTER_LABEL, EXPORTER_LEN};
use telework_protocol::ComputerId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;

/// Agents per loopback source address: inside one address's ephemeral ports (32768 to 60999).
const AGENTS_PER_ADDRESS: usize = 20_000;

/// How often an idle agent pings (the agent's own keepalive; the relay drops it after 45 s of
/// silence).
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(15);

/// Deadline for each step of bringing one agent online.
pub(crate) const STEP: Duration = Duration::from_secs(30);

/// A bidirectional byte stream on either transport, as the bench's own dial makes it.
pub(crate) enum AgentStream {
    Quic(tokio::io::Join<quinn::RecvStream, quinn::SendStream>),
    Tcp(telework_net::transport::h2::H2Stream),
}

impl AsyncRead for AgentStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AgentStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Quic(s) => Pin::new(s).poll_write(cx, b),
            Self::Tcp(s) => Pin::new(s).poll_write(cx, b),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(s) => Pin::new(s).poll_flush(cx),
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What keeps a connection open (dropping it closes the connection).
pub(crate) type Held = Box<dyn std::any::Any + Send>;

/// How this process reaches the relay as an agent.
pub(crate) struct AgentDialer {
    relay: SocketAddr,
    transport: TransportChoice,
    tls: Arc<rustls::ClientConfig>,
    /// QUIC endpoints, each for `per_endpoint` agents (all of one source address, or fewer).
    endpoints: Vec<quinn::Endpoint>,
    per_endpoint: usize,
}

/// The source address of agent number `i`: 127.0.0.2 for the first [`AGENTS_PER_ADDRESS`],
/// then 127.0.0.3, and so on.
fn source_address(i: usize) -> IpAddr {
    let n = 2 + i / AGENTS_PER_ADDRESS;
    IpAddr::V4(Ipv4Addr::new(127, 0, (n / 256) as u8, (n % 256) as u8))
}

impl AgentDialer {
    /// For `n` agents dialling `relay` (by default), one QUIC endpoint per source address.
    pub(crate) fn new(
        relay: SocketAddr,
        fingerprint: &str,
        transport: TransportChoice,
        n: usize,
    ) -> anyhow::Result<Self> {
        Self::with_endpoints_of(relay, fingerprint, transport, n, AGENTS_PER_ADDRESS)
    }

    /// As [`AgentDialer::new`], with one QUIC endpoint (and UDP socket) per `per_endpoint`
    /// agents (a divisor of [`AGENTS_PER_ADDRESS`]).
    pub(crate) fn with_endpoints_of(
        relay: SocketAddr,
        fingerprint: &str,
        transport: TransportChoice,
        n: usize,
        per_endpoint: usize,
    ) -> anyhow::Result<Self> {
        let tls = RelayTrust::Fingerprint(fingerprint.parse()?).client_config(alpn::AGENT)?;
        let mut endpoints = vec![];
        if transport == TransportChoice::Quic {
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.clone())?;
            let mut config = quinn::ClientConfig::new(Arc::new(crypto));
            let mut t = quinn::TransportConfig::default();
            t.keep_alive_interval(Some(telework_net::transport::quic::KEEP_ALIVE))
                .max_idle_timeout(
                    quinn::IdleTimeout::try_from(telework_net::transport::quic::IDLE_TIMEOUT).ok(),
                )
                .max_concurrent_uni_streams(0u32.into());
            config.transport_config(Arc::new(t));
            for a in 0..n.div_ceil(per_endpoint) {
                let mut endpoint =
                    quinn::Endpoint::client(SocketAddr::new(source_address(a * per_endpoint), 0))
                        .context("QUIC endpoint on a loopback source address")?;
                endpoint.set_default_client_config(config.clone());
                endpoints.push(endpoint);
            }
        }
        Ok(Self {
            relay,
            transport,
            tls,
            endpoints,
            per_endpoint,
        })
    }

    /// A QUIC connection from agent number `i`'s source address.
    pub(crate) async fn quic(&self, i: usize) -> anyhow::Result<quinn::Connection> {
        self.quic_to(i, self.relay).await
    }

    /// A QUIC connection from agent number `i`'s source address to `to`.
    async fn quic_to(&self, i: usize, to: SocketAddr) -> anyhow::Result<quinn::Connection> {
        let endpoint = &self.endpoints[i / self.per_endpoint];
        Ok(endpoint.connect(to, "127.0.0.1")?.await?)
    }

    /// A TLS connection over TCP from agent number `i`'s source address.
    pub(crate) async fn tls(
        &self,
        i: usize,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        self.tls_to(i, self.relay).await
    }

    /// A TLS connection over TCP from agent number `i`'s source address to `to`.
    async fn tls_to(
        &self,
        i: usize,
        to: SocketAddr,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source_address(i), 0))?;
        let tcp = socket.connect(to).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
        Ok(tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?)
    }

    /// Dials `to` as agent number `i`; returns the connection, the control stream the relay
    /// opens, and the channel binding.
    async fn control(
        &self,
        i: usize,
        to: SocketAddr,
    ) -> anyhow::Result<(Held, Framed<AgentStream>, [u8; EXPORTER_LEN])> {
        let mut binding = [0u8; EXPORTER_LEN];
        let (held, stream) = match self.transport {
            TransportChoice::Quic => {
                let conn = self.quic_to(i, to).await?;
                conn.export_keying_material(&mut binding, EXPORTER_LABEL, b"")
                    .map_err(|_| anyhow::anyhow!("no QUIC exporter"))?;
                let (send, recv) = conn.accept_bi().await?;
                (
                    Box::new(conn) as Held,
                    AgentStream::Quic(tokio::io::join(recv, send)),
                )
            }
            _ => {
                let tls = self.tls_to(i, to).await?;
                tls.get_ref()
                    .1
                    .export_keying_material(&mut binding, EXPORTER_LABEL, None)?;
                let conn = telework_net::transport::h2::acceptor(tls).await?;
                let stream = conn.accept().await?;
                (Box::new(conn) as Held, AgentStream::Tcp(stream))
            }
        };
        let mut f = Framed::new(stream);
        match f.read_within::<RelayOpens>(STEP).await? {
            RelayOpens::Control { .. } => Ok((held, f, binding)),
            other => bail!("expected the control stream, got {other:?}"),
        }
    }
}

async fn register_and_hello(
    dialer: &AgentDialer,
    i: usize,
    id: ComputerId,
) -> anyhow::Result<(Held, Framed<AgentStream>)> {
    let key = MachineKey::generate().context("key")?;
    let (held, mut f, binding) = dialer.control(i, dialer.relay).await?;
    f.write(&AgentToRelay::Register {
        version: PROTOCOL_VERSION,
        id: id.clone(),
        public_key: key.public_key(),
        token: None,
        proof: key.prove(&id, &binding),
    })
    .await?;
    match f.read_within::<RelayToAgent>(STEP).await? {
        RelayToAgent::Registered { .. } => {}
        other => bail!("registration refused: {other:?}"),
    }
    drop((held, f));
    match hello(dialer, i, dialer.relay, &key, &id, Vec::new()).await? {
        (held, f, RelayToAgent::Welcome { .. }) => Ok((held, f)),
        (_, _, other) => bail!("hello refused: {other:?}"),
    }
}

/// Dials `to` as agent number `i` and says hello as `id`, naming the nodes in `unreachable`;
/// returns the connection, its control stream and the relay's answer.
pub(crate) async fn hello(
    dialer: &AgentDialer,
    i: usize,
    to: SocketAddr,
    key: &MachineKey,
    id: &ComputerId,
    unreachable: Vec<String>,
) -> anyhow::Result<(Held, Framed<AgentStream>, RelayToAgent)> {
    let (held, mut f, binding) = dialer.control(i, to).await?;
    f.write(&AgentToRelay::Hello {
        version: PROTOCOL_VERSION,
        proof: key.prove(id, &binding),
        id: id.clone(),
        unreachable,
    })
    .await?;
    let answer = f.read_within::<RelayToAgent>(STEP).await?;
    Ok((held, f, answer))
}

/// Pings on the control stream until it fails; counts the failure in `lost`.
async fn stay_online(
    held: Held,
    mut f: Framed<AgentStream>,
    first: Duration,
    lost: Arc<AtomicUsize>,
) {
    let _held = held;
    tokio::time::sleep(first).await;
    let mut n = 0u64;
    loop {
        n += 1;
        let ok = f.write(&AgentToRelay::Ping(n)).await.is_ok()
            && matches!(
                f.read_within::<RelayToAgent>(STEP).await,
                Ok(RelayToAgent::Pong(_))
            );
        if !ok {
            lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tokio::time::sleep(KEEPALIVE).await;
    }
}

/// Idle agents, online and pinging until dropped.
pub struct IdleAgents {
    tasks: Vec<JoinHandle<()>>,
    lost: Arc<AtomicUsize>,
    /// Agents that failed to come online, with the first error.
    pub failed: usize,
    /// The first error, if any failed.
    pub first_error: Option<String>,
    _endpoints: Vec<quinn::Endpoint>,
}

impl IdleAgents {
    /// How many online agents lost their connection since.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::Relaxed)
    }

    /// How many came online.
    pub fn online(&self) -> usize {
        self.tasks.len()
    }
}

impl Drop for IdleAgents {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Brings `n` agents online over `transport` (`Quic` or `Tcp`), `parallel` at a time, from
/// 127.0.0.2 and up; progress goes to stderr every 10,000 agents.
pub async fn bring_online(
    relay: SocketAddr,
    fingerprint: &str,
    transport: TransportChoice,
    n: usize,
    parallel: usize,
) -> anyhow::Result<IdleAgents> {
    let dialer = Arc::new(AgentDialer::new(relay, fingerprint, transport, n)?);
    let limit = Arc::new(tokio::sync::Semaphore::new(parallel));
    let lost = Arc::new(AtomicUsize::new(0));
    let mut starts = Vec::with_capacity(n);
    let run = rand_suffix();
    for i in 0..n {
        let (dialer, limit, lost) = (dialer.clone(), limit.clone(), lost.clone());
        let id: ComputerId = format!("idle-{run}-{i}").parse()?;
        // Spread the keepalives over the interval, as independent agents would.
        let first = KEEPALIVE.mul_f64((i % 1000) as f64 / 1000.0);
        starts.push(tokio::spawn(async move {
            let (held, f) = {
                let _permit = limit.acquire_owned().await?;
                register_and_hello(&dialer, i, id).await?
            };
            Ok::<_, anyhow::Error>(tokio::spawn(stay_online(held, f, first, lost)))
        }));
    }
    let mut agents = IdleAgents {
        tasks: Vec::with_capacity(n),
        lost,
        failed: 0,
        first_error: None,
        _endpoints: dialer.endpoints.clone(),
    };
    for (i, t) in starts.into_iter().enumerate() {
        match t.await? {
            Ok(task) => agents.tasks.push(task),
            Err(e) => {
                agents.failed += 1;
                agents.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
        if (i + 1) % 10_000 == 0 {
            eprintln!(
                "  {} agents: {} online, {} failed",
                i + 1,
                agents.online(),
                agents.failed
            );
        }
    }
    Ok(agents)
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        % 100_000
}
