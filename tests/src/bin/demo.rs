//! `telework-demo`: relay, agent and client on this machine, with one command.
//!
//! Starts a relay on embedded defaults (self-signed certificate, SQLite registry in a
//! temporary data dir), registers an agent, sets its connection password, logs a client in
//! end to end, and proves a connection works by sending bytes through the whole chain to a
//! built-in echo service. With `--target HOST:PORT` (for example a local RDP server) it then
//! keeps the session open and prints the address to point an RDP client at.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use telework_tests::{EchoServer, TestClient, TestRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Run a complete telework chain locally and show it working.
#[derive(Parser)]
#[command(about)]
struct Args {
    /// Forward to this desktop service (e.g. 127.0.0.1:3389) and stay up until Ctrl-C,
    /// instead of the built-in echo service.
    #[arg(long)]
    target: Option<SocketAddr>,
    /// Keep running until Ctrl-C even with the echo service.
    #[arg(long)]
    hold: bool,
}

const DEMO_ID: &str = "demo-pc";
const DEMO_PASSWORD: &str = "demo-connection-password";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let relay = TestRelay::start().await;
    println!(
        "relay      listening on {} (self-signed, fingerprint {})",
        relay.addr, relay.fingerprint
    );
    let echo = EchoServer::start().await;
    let target = args.target.unwrap_or(echo.addr);
    let agent = relay
        .agent(DEMO_ID, DEMO_PASSWORD)
        .target(target)
        .run()
        .await;
    println!("agent      registered as '{DEMO_ID}', online, forwarding to {target}");
    let started = Instant::now();
    let session = relay
        .login(DEMO_ID, DEMO_PASSWORD)
        .await
        .context("logging in")?;
    println!(
        "client     logged in end to end (OPAQUE) over {} in {} ms",
        session.transport(),
        started.elapsed().as_millis()
    );
    let client = TestClient::serve(session).await;
    println!(
        "client     listening on {} (point an RDP client here)",
        client.local
    );

    if args.target.is_none() {
        let message = b"hello office PC, this is home";
        let mut conn = tokio::net::TcpStream::connect(client.local).await?;
        let t = Instant::now();
        conn.write_all(message).await?;
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut back)).await??;
        ensure!(back == message, "echo mismatch");
        println!(
            "connection works: {} bytes went client -> relay -> agent -> echo service and back in {} us",
            message.len(),
            t.elapsed().as_micros()
        );
        drop(conn);
    }
    if args.target.is_some() || args.hold {
        println!("press Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    client.stop().await.ok();
    agent.stop().await;
    relay.stop().await;
    println!("demo finished");
    Ok(())
}
