//! The HTTP/2 transport over real TLS on loopback, as a program reaches the relay, and a
//! throughput check to run by hand.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Instant;

use common::{bounded, pattern, read_to_end};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use telework_net::tls::{server_config, RelayTrust};
use telework_net::transport::h2::{
    acceptor, opener, H2Connection, MAX_FRAME_SIZE, MAX_SEND_BUFFER,
};
use telework_protocol::fingerprint::CertFingerprint;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A TLS server and client over loopback TCP, with the client trusting the server's pinned
/// certificate, as a program reaches the relay.
async fn tls_wires() -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    tokio_rustls::server::TlsStream<TcpStream>,
) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = certified.cert.der().clone();
    let pin = CertFingerprint::of_der(&der);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let server = server_config(vec![der], key).unwrap();
    let alpn = server.alpn_protocols[0].clone();
    let client = RelayTrust::Fingerprint(pin).client_config(&alpn).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepting = async {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        TlsAcceptor::from(server).accept(tcp).await.unwrap()
    };
    let dialling = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        TlsConnector::from(client).connect(name, tcp).await.unwrap()
    };
    let (s, c) = tokio::join!(accepting, dialling);
    (c, s)
}

async fn tls_pair() -> (H2Connection, H2Connection) {
    let (c, s) = tls_wires().await;
    let (op, acc) = tokio::join!(opener(c), acceptor(s));
    (op.unwrap(), acc.unwrap())
}

#[tokio::test]
async fn streams_over_tls_on_loopback() {
    bounded(async {
        let (op, acc) = tls_pair().await;
        let echo = tokio::spawn(async move {
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let mut s = acc.accept().await.unwrap();
                tasks.push(tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(&mut s);
                    tokio::io::copy(&mut r, &mut w).await.unwrap();
                    w.shutdown().await.unwrap();
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            acc
        });
        let mut tasks = Vec::new();
        for i in 0..16 {
            let op = op.clone();
            tasks.push(tokio::spawn(async move {
                let data = pattern(256 * 1024 + i);
                let s = op.open().await.unwrap();
                let (mut r, mut w) = tokio::io::split(s);
                let send = data.clone();
                let writing = tokio::spawn(async move {
                    w.write_all(&send).await.unwrap();
                    w.shutdown().await.unwrap();
                    w
                });
                assert_eq!(read_to_end(&mut r).await, data);
                writing.await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let acc = echo.await.unwrap();
        acc.close(0);
        op.closed().await;
    })
    .await;
}

/// Moves `total` bytes from `w` to `r` in 64 KiB writes; returns MB/s.
async fn throughput<W, R>(mut w: W, mut r: R, total: usize) -> f64
where
    W: AsyncWrite + Unpin + Send + 'static,
    R: AsyncRead + Unpin,
{
    let start = Instant::now();
    let writing = tokio::spawn(async move {
        let data = vec![0x5au8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            w.write_all(&data).await.unwrap();
            sent += data.len();
        }
        w.shutdown().await.unwrap();
        w
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    let secs = start.elapsed().as_secs_f64();
    writing.await.unwrap();
    assert_eq!(got, total);
    total as f64 / secs / 1e6
}

/// By hand, in release: `cargo test -p telework-net --release --test h2 -- --ignored
/// --nocapture`. Prints one HTTP/2 stream's throughput beside raw TLS; asserts nothing about
/// speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_one_stream_vs_raw_tls() {
    const TOTAL: usize = 1 << 30;
    let (c, s) = tls_wires().await;
    let (_, s_write) = tokio::io::split(s);
    let (c_read, _) = tokio::io::split(c);
    let raw = throughput(s_write, c_read, TOTAL).await;

    let (op, acc) = tls_pair().await;
    let up = op.open().await.unwrap();
    let down = acc.accept().await.unwrap();
    let h2_up = throughput(up, down, TOTAL).await;
    let up = op.open().await.unwrap();
    let down = acc.accept().await.unwrap();
    let h2_down = throughput(down, up, TOTAL).await;
    println!(
        "raw TLS {raw:.0} MB/s; one HTTP/2 stream opener->acceptor {h2_up:.0} MB/s, \
         acceptor->opener {h2_down:.0} MB/s (frame {MAX_FRAME_SIZE}, send buffer \
         {MAX_SEND_BUFFER})"
    );
}
