//! The desktop stand-in the benchmarks forward to. The first byte a connection sends picks
//! what it does, so one listener serves every scenario.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

static IDLE_CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// Idle-mode connections the target has accepted so far.
pub fn idle_count() -> u64 {
    IDLE_CONNECTIONS.load(Ordering::Relaxed)
}

/// Starts counting idle connections from zero.
pub fn reset_idle_count() {
    IDLE_CONNECTIONS.store(0, Ordering::Relaxed);
}
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Read everything, then answer with the byte count (8 bytes, big-endian).
pub const SINK: u8 = b'U';
/// Send for the number of milliseconds in the next 4 bytes, then close.
pub const SOURCE: u8 = b'D';
/// Echo every byte.
pub const ECHO: u8 = b'E';
/// Read at 1 MB/s until end of stream.
pub const SLOW: u8 = b'S';
/// Hold the connection, doing nothing, until the peer closes.
pub const IDLE: u8 = b'I';

/// Starts the target on 127.0.0.1 and returns its address.
pub async fn start() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let _ = conn.set_nodelay(true);
            tokio::spawn(serve(conn));
        }
    });
    Ok(addr)
}

async fn serve(mut conn: TcpStream) -> std::io::Result<()> {
    let mut mode = [0u8; 1];
    conn.read_exact(&mut mode).await?;
    let mut buf = vec![0u8; 256 * 1024];
    match mode[0] {
        SINK => {
            let mut total = 0u64;
            loop {
                let n = conn.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            conn.write_all(&total.to_be_bytes()).await?;
            conn.shutdown().await?;
        }
        SOURCE => {
            let mut ms = [0u8; 4];
            conn.read_exact(&mut ms).await?;
            let until = Instant::now() + Duration::from_millis(u64::from(u32::from_be_bytes(ms)));
            while Instant::now() < until {
                conn.write_all(&buf).await?;
            }
            conn.shutdown().await?;
        }
        ECHO => {
            let (mut r, mut w) = conn.split();
            tokio::io::copy(&mut r, &mut w).await?;
        }
        SLOW => {
            // 1 MB/s: 100 kB every 100 ms.
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let mut left = 100_000usize;
                while left > 0 {
                    let n = conn.read(&mut buf[..left.min(64 * 1024)]).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    left -= n;
                }
            }
        }
        IDLE => {
            IDLE_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
            let _ = conn.read(&mut buf).await;
        }
        _ => {}
    }
    Ok(())
}
