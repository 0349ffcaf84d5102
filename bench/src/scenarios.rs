//! The measurements. Each function does one run; `main` repeats them and takes medians.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::procs::{Chain, Proc, BENCH_ID, BENCH_PASSWORD};
use crate::target;

/// A connection to the target through `addr`, in `mode` (see [`target`]).
pub(crate) async fn open(addr: SocketAddr, mode: u8) -> anyhow::Result<TcpStream> {
    let mut conn = TcpStream::connect(addr).await?;
    conn.set_nodelay(true)?;
    conn.write_all(&[mode]).await?;
    Ok(conn)
}

/// Sends as fast as possible for `secs`; returns bytes per second as counted by the target.
pub async fn upload(addr: SocketAddr, secs: f64) -> anyhow::Result<(f64, u64)> {
    let mut conn = open(addr, target::SINK).await?;
    let chunk = vec![0x5au8; 256 * 1024];
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < secs {
        conn.write_all(&chunk).await?;
    }
    conn.shutdown().await?;
    let mut count = [0u8; 8];
    conn.read_exact(&mut count).await.context("sink count")?;
    let bytes = u64::from_be_bytes(count);
    Ok((bytes as f64 / started.elapsed().as_secs_f64(), bytes))
}

/// Receives for `secs` while the target sends as fast as it can; returns bytes per second.
pub async fn download(addr: SocketAddr, secs: f64) -> anyhow::Result<(f64, u64)> {
    let mut conn = open(addr, target::SOURCE).await?;
    conn.write_all(&((secs * 1000.0) as u32).to_be_bytes())
        .await?;
    let started = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
    }
    Ok((bytes as f64 / started.elapsed().as_secs_f64(), bytes))
}

/// CPU seconds per GB of one AES-256-GCM pass, sealing 16 KiB records with the tunnel's own
/// record layer, in the pump's batches of four (the sealer copies each record into its output).
pub fn aes_gcm_pass() -> f64 {
    use telework_protocol::e2e::record::{Sealer, BULK_RECORD_PLAINTEXT};
    const TOTAL: usize = 256 << 20;
    let chunk = vec![0x5au8; 4 * BULK_RECORD_PLAINTEXT];
    let mut sealer = Sealer::new(&[7; 32]);
    let mut out = bytes::BytesMut::with_capacity(chunk.len() + 4096);
    let Ok(started) = crate::procs::thread_cpu_ns() else {
        return f64::NAN;
    };
    for _ in 0..TOTAL / chunk.len() {
        out.clear();
        if sealer.seal_data(&chunk, &mut out).is_err() {
            return f64::NAN;
        }
        std::hint::black_box(&out);
    }
    match crate::procs::thread_cpu_ns() {
        Ok(now) => now.saturating_sub(started) as f64 / 1e9 / (TOTAL as f64 / 1e9),
        Err(_) => f64::NAN,
    }
}

/// GB/s of 16 KiB copies from a page-aligned source to a destination `past` bytes further on
/// modulo 4 KiB: the placement glibc's `rep movsb` is sensitive to on AMD Zen 3 and later
/// (see `telework_net::glibc_tuning`).
pub fn memcpy_gb_per_s(past: usize) -> f64 {
    const LEN: usize = 16 * 1024;
    const ROUNDS: usize = 100_000;
    let src_buf = vec![0x5au8; LEN + 4096];
    let mut dst_buf = vec![0u8; LEN + 8192];
    let src_at = (4096 - src_buf.as_ptr() as usize % 4096) % 4096;
    let dst_at = (4096 - dst_buf.as_ptr() as usize % 4096) % 4096 + past % 4096;
    let src = &src_buf[src_at..src_at + LEN];
    let started = Instant::now();
    for _ in 0..ROUNDS {
        dst_buf[dst_at..dst_at + LEN].copy_from_slice(std::hint::black_box(src));
        std::hint::black_box(&mut dst_buf);
    }
    (ROUNDS * LEN) as f64 / 1e9 / started.elapsed().as_secs_f64()
}

/// Round trips made on a new connection before any is timed.
const LATENCY_WARM_UP: usize = 200;

/// A connection to the echo service through `addr`, with its first round trips made (so the
/// timed ones below exclude connection set-up, for time and for CPU alike).
pub async fn warmed_up(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut conn = open(addr, target::ECHO).await?;
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    for _ in 0..LATENCY_WARM_UP {
        conn.write_all(&msg).await?;
        conn.read_exact(&mut back).await?;
    }
    Ok(conn)
}

/// Round-trip times of 64-byte messages on `conn`, in microseconds.
pub async fn round_trips(conn: &mut TcpStream, samples: usize) -> anyhow::Result<Vec<f64>> {
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        conn.write_all(&msg).await?;
        conn.read_exact(&mut back).await?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

/// Round-trip times of 64-byte messages through `addr` on a new connection, in microseconds.
pub async fn latency(addr: SocketAddr, samples: usize) -> anyhow::Result<Vec<f64>> {
    round_trips(&mut warmed_up(addr).await?, samples).await
}

/// New tunnels through one authenticated session: `workers` at a time, each a new local TCP
/// connection to the client's port (connect, one byte each way, close), for `secs`.
pub struct TunnelRate {
    /// Tunnels that carried their byte, per second.
    pub per_sec: f64,
    /// Local connections that were closed without their byte (the relay's per-connection
    /// budget refusing the stream, or any other failure).
    pub refused: u64,
}

/// See [`TunnelRate`].
pub async fn tunnels_per_sec(
    addr: SocketAddr,
    workers: usize,
    secs: f64,
) -> anyhow::Result<TunnelRate> {
    let done = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (done, refused) = (done.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            while started.elapsed().as_secs_f64() < secs {
                let one = async {
                    let mut c = open(addr, target::ECHO).await?;
                    c.write_all(b"x").await?;
                    let mut b = [0u8; 1];
                    c.read_exact(&mut b).await?;
                    Ok::<(), anyhow::Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(10), one).await {
                    Ok(Ok(())) => done.fetch_add(1, Ordering::Relaxed),
                    _ => refused.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(TunnelRate {
        per_sec: done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        refused: refused.load(Ordering::Relaxed),
    })
}

/// A new session including the password handshake (OPAQUE with Argon2id) up to the first
/// echoed byte through a new tunnel, in milliseconds.
pub async fn time_to_first_byte(chain: &Chain) -> anyhow::Result<f64> {
    session_to_first_byte(&bench_target(chain)?).await
}

/// As [`time_to_first_byte`], to any office PC of the bench's (its password, the target
/// service behind it).
pub async fn session_to_first_byte(target: &telework_client::Target) -> anyhow::Result<f64> {
    let password = BENCH_PASSWORD;
    let options = telework_client::LoginOptions::default();
    let started = Instant::now();
    let session =
        telework_client::Session::login_with(target, password.as_bytes(), &options).await?;
    let logged_in = started.elapsed();
    let tunnel = session.opener().open().await?;
    if std::env::var_os("TELEWORK_BENCH_VERBOSE").is_some() {
        eprintln!(
            "login {:.1} ms, first tunnel {:.1} ms",
            logged_in.as_secs_f64() * 1e3,
            (started.elapsed() - logged_in).as_secs_f64() * 1e3
        );
    }
    let (local, mut app) = tokio::io::duplex(1024);
    let pump = tokio::spawn(tunnel.pump(local));
    app.write_all(&[target::ECHO, b'!']).await?;
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(30), app.read_exact(&mut b)).await??;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    drop(app);
    pump.abort();
    Ok(ms)
}

/// One run of the key-stretching function the client's OPAQUE login uses (Argon2id in fresh
/// working memory, as in a new client process), in milliseconds.
pub fn argon2id_ms() -> f64 {
    let mut out = [0u8; 64];
    let started = Instant::now();
    let _ = telework_protocol::e2e::stretch::Stretch::default().hash_into(&[1u8; 64], &mut out);
    started.elapsed().as_secs_f64() * 1e3
}

/// What the client needs to log in to the chain's agent, on the chain's transport.
fn bench_target(chain: &Chain) -> anyhow::Result<telework_client::Target> {
    Ok(telework_client::Target {
        relay: chain.relay_addr.to_string().parse()?,
        trust: telework_net::tls::RelayTrust::Fingerprint(chain.fingerprint.parse()?),
        transport: chain.transport,
        id: BENCH_ID.parse()?,
    })
}

/// Waits until `proc`'s RSS stops growing (up to 10 s) and returns it in KiB.
async fn settled_rss(procs: &[&Proc]) -> u64 {
    let total = || procs.iter().map(|p| p.rss_kib()).sum::<u64>();
    let mut last = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = total();
        if now == last {
            break;
        }
        last = now;
    }
    total()
}

/// Logs in `n` sessions to the chain's agent from this process (each its own connection to
/// the relay, with its password login and its control tunnel) and holds them; returns the
/// relay's RSS growth per session in KiB.
pub async fn idle_sessions(
    chain: &Chain,
    n: usize,
) -> anyhow::Result<(f64, Vec<telework_client::Session>)> {
    let target = Arc::new(bench_target(chain)?);
    let before = settled_rss(&[&chain.relay]).await;
    // Two logins at a time (the client's Argon2id is most of a login and there are two cores).
    let limit = Arc::new(tokio::sync::Semaphore::new(2));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (target, limit) = (target.clone(), limit.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let options = telework_client::LoginOptions::default();
            telework_client::Session::login_with(&target, BENCH_PASSWORD.as_bytes(), &options)
                .await
                .map_err(anyhow::Error::from)
        }));
    }
    let mut sessions = Vec::with_capacity(n);
    for t in tasks {
        sessions.push(t.await?.context("idle session login")?);
    }
    let after = settled_rss(&[&chain.relay]).await;
    Ok((after.saturating_sub(before) as f64 / n as f64, sessions))
}

/// Opens `n` idle tunnels through the chain's one session (local connections to the client's
/// port that stay open, held idle by the target) and returns the agent's plus the client's
/// RSS growth per tunnel in KiB.
pub async fn idle_tunnels(chain: &Chain, n: usize) -> anyhow::Result<(f64, Vec<TcpStream>)> {
    let ends = [&chain.agent, &chain.client];
    let before = settled_rss(&ends).await;
    target::reset_idle_count();
    let mut conns = Vec::with_capacity(n);
    // In batches, each waited for at the target.
    const BATCH: usize = 50;
    while conns.len() < n {
        for _ in 0..BATCH.min(n - conns.len()) {
            conns.push(open(chain.client_addr, target::IDLE).await?);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while target::idle_count() < conns.len() as u64 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    anyhow::ensure!(
        target::idle_count() >= n as u64,
        "only {} of {n} idle tunnels reached the target",
        target::idle_count()
    );
    let after = settled_rss(&ends).await;
    Ok((after.saturating_sub(before) as f64 / n as f64, conns))
}

/// Writes as fast as possible for `secs` to a target that reads at 1 MB/s; returns the
/// largest RSS growth (KiB) seen in the relay and in the agent, and the bytes the writer got
/// rid of (about 1 MB/s plus the buffers on the way shows backpressure reached it).
pub async fn slow_reader(
    addr: SocketAddr,
    relay: &Proc,
    agent: &Proc,
    secs: f64,
) -> anyhow::Result<(u64, u64, u64)> {
    let (r0, a0) = (relay.rss_kib(), agent.rss_kib());
    let mut conn = open(addr, target::SLOW).await?;
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; 64 * 1024];
        let mut written = 0u64;
        while started.elapsed().as_secs_f64() < secs {
            // `write` (not `write_all`) so a blocked socket still lets us count and stop.
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(200), conn.write(&chunk)).await
            {
                written += n as u64;
            }
        }
        (conn, written)
    });
    let (mut rmax, mut amax) = (r0, a0);
    while started.elapsed().as_secs_f64() < secs {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rmax = rmax.max(relay.rss_kib());
        amax = amax.max(agent.rss_kib());
    }
    let (conn, written) = writer.await?;
    drop(conn);
    Ok((rmax.saturating_sub(r0), amax.saturating_sub(a0), written))
}
