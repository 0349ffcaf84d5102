//! The libraries' own floor: what one idle connection costs a process that holds nothing but
//! the transport, set up by the relay's own code, beside what an idle agent costs the relay.
//! Three layers: TLS 1.3 alone (rustls over TCP, as the relay used before streams); TLS with
//! HTTP/2 (the relay's TLS/TCP accept, HTTP/2 opened as for an agent); QUIC (the relay's
//! endpoint and accept). The server is this binary in `floor-server` mode, a process of its
//! own, so its resident memory is the connections' and nothing else's.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use telework_net::transport::{quic, tcp, TransportChoice};
use telework_protocol::CertFingerprint;
use tokio::io::AsyncReadExt;

use crate::agents::{AgentDialer, Held};
use crate::procs::{read_line_with, Proc};

/// What the floor server holds per connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Layer {
    /// TLS 1.3 over TCP, nothing above it.
    Tls,
    /// TLS 1.3 over TCP with HTTP/2, as the relay holds an agent's connection.
    TlsH2,
    /// QUIC, as the relay holds an agent's connection.
    Quic,
}

/// How long the connections sit idle before the server's memory is read: past one QUIC
/// keep-alive (10 s), so every connection has sent and answered one.
const SETTLE: Duration = Duration::from_secs(11);

/// The floor server: listens on loopback, prints `floor server on ADDR FINGERPRINT`, and
/// holds every connection it accepts until the peer closes it.
pub async fn serve(layer: Layer) -> anyhow::Result<()> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let der = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let config = telework_net::tls::server_config(vec![der.clone()], key)?;
    let fingerprint = CertFingerprint::of_der(&der);
    if layer == Layer::Quic {
        // A throwaway process: any reset key does.
        let endpoint = quic::server_endpoint("127.0.0.1:0".parse()?, config, &[7; 32])?;
        println!("floor server on {} {fingerprint}", endpoint.local_addr()?);
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                if let Ok((_, conn)) = quic::accept(incoming).await {
                    conn.closed().await;
                }
            });
        }
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("floor server on {} {fingerprint}", listener.local_addr()?);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (socket, peer) = listener.accept().await?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if layer == Layer::Tls {
                if let Ok(mut tls) = acceptor.accept(socket).await {
                    let _ = tls.read(&mut [0u8; 1]).await;
                }
            } else if let Ok((_, conn)) = tcp::accept(&acceptor, socket, peer).await {
                conn.closed().await;
            }
        });
    }
}

/// Opens `n` idle connections to a fresh floor server for `layer`; returns the server's
/// resident KiB per connection once they have settled.
pub async fn kib_per_connection(layer: Layer, n: usize) -> anyhow::Result<f64> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["floor-server", "--layer"])
        .arg(
            clap::ValueEnum::to_possible_value(&layer)
                .context("layer")?
                .get_name(),
        )
        .stdout(Stdio::piped())
        .spawn()?;
    let line = read_line_with(&mut child, "floor server on ", Duration::from_secs(5))?;
    let server = Proc { child };
    let (addr, fingerprint) = line.split_once(' ').context("floor server line")?;
    let addr: SocketAddr = addr.parse()?;
    let transport = match layer {
        Layer::Quic => TransportChoice::Quic,
        _ => TransportChoice::Tcp,
    };
    let dialer = Arc::new(AgentDialer::new(addr, fingerprint, transport, n)?);
    let before = server.rss_kib();
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let opens: Vec<_> = (0..n)
        .map(|i| {
            let (dialer, limit) = (dialer.clone(), limit.clone());
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await?;
                let held: Held = match layer {
                    Layer::Quic => Box::new(dialer.quic(i).await?),
                    Layer::Tls => Box::new(dialer.tls(i).await?),
                    Layer::TlsH2 => {
                        Box::new(telework_net::transport::h2::acceptor(dialer.tls(i).await?).await?)
                    }
                };
                Ok::<_, anyhow::Error>(held)
            })
        })
        .collect();
    let mut held = Vec::with_capacity(n);
    for open in opens {
        held.push(open.await??);
    }
    tokio::time::sleep(SETTLE).await;
    let after = server.rss_kib();
    drop(held);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}
