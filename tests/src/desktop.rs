//! Stand-ins for a desktop service: an echo server and a sink that counts what it gets and
//! how many connections it accepted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Echoes every byte back, and half-closes when the peer does.
pub struct EchoServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl EchoServer {
    /// Starts the server on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads everything, then answers with the byte count and a SHA-256 of what it read.
pub struct SinkServer {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl SinkServer {
    /// Starts the server on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut total = 0u64;
                    loop {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                ctx.update(&buf[..n]);
                                total += n as u64;
                            }
                        }
                    }
                    let mut answer = total.to_be_bytes().to_vec();
                    answer.extend_from_slice(ctx.finish().as_ref());
                    let _ = conn.write_all(&answer).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for SinkServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One 64-byte round trip through the echo desktop, bounded at 10 s.
pub async fn echo_once(conn: &mut TcpStream) {
    let sent = [0x5au8; 64];
    let mut got = [0u8; 64];
    tokio::time::timeout(Duration::from_secs(10), async {
        conn.write_all(&sent).await.unwrap();
        conn.read_exact(&mut got).await.unwrap();
    })
    .await
    .expect("the echo came back");
    assert_eq!(got, sent);
}
