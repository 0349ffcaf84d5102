//! What the dialler does with a proxy's answer, from a loopback peer that answers exactly as
//! written here (tinyproxy cannot be made to send bytes after its header or a huge header):
//! bytes after the header reach the tunnel, and bad answers are precise errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use telework_net::connect::RelayAddr;
use telework_net::proxy::{tunnel, ProxyError, ProxyUrl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A one-connection proxy on loopback that reads the request head, sends `answer` in one
/// write, and returns the request it read.
async fn answering(answer: Vec<u8>) -> (ProxyUrl, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://u:p@{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let task = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") && request.len() < 4096 {
            conn.read_exact(&mut byte).await.unwrap();
            request.push(byte[0]);
        }
        conn.write_all(&answer).await.unwrap();
        // Hold the connection open until the dialler is done with it.
        let _ = conn.read(&mut byte).await;
        request
    });
    (url, task)
}

fn relay() -> RelayAddr {
    "relay.example:443".parse().unwrap()
}

#[tokio::test]
async fn bytes_after_the_header_are_handed_on() {
    let (proxy, peer) =
        answering(b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03first".to_vec()).await;
    let (tcp, rest) = tunnel::open(&proxy, &relay()).await.unwrap();
    assert_eq!(rest, b"\x16\x03\x03first");
    drop(tcp);
    let request = peer.await.unwrap();
    assert_eq!(
        request,
        b"CONNECT relay.example:443 HTTP/1.1\r\nHost: relay.example:443\r\n\
          Proxy-Authorization: Basic dTpw\r\n\r\n"
    );
}

#[tokio::test]
async fn bad_answers_are_precise_errors() {
    let (proxy, _peer) = answering(b"SSH-2.0-OpenSSH_9.2\r\n".to_vec()).await;
    let e = tunnel::open(&proxy, &relay()).await.unwrap_err();
    assert!(matches!(e, ProxyError::BadAnswer { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "the proxy at {proxy} did not answer as an HTTP proxy: its answer does not start \
             with an HTTP/1 status line"
        )
    );

    let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b"X-Pad: aaaaaaaaaaaaaaaa\r\n".as_slice(), 1000).flatten());
    let (proxy, _peer) = answering(huge).await;
    let e = tunnel::open(&proxy, &relay()).await.unwrap_err();
    assert!(
        e.to_string()
            .ends_with("its answer's header is longer than 8192 bytes"),
        "{e}"
    );

    let (proxy, _peer) = answering(b"HTTP/1.1 502 Bad Gateway\r\n\r\n".to_vec()).await;
    let e = tunnel::open(&proxy, &relay()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("the proxy at {proxy} could not connect to relay.example:443: it answered 502 Bad Gateway")
    );

    let (proxy, _peer) = answering(
        b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Negotiate\r\n\r\n"
            .to_vec(),
    )
    .await;
    let e = tunnel::open(&proxy, &relay()).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("a sign-in telework cannot do (Negotiate)"),
        "{e}"
    );

    // Half a header, then the proxy hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy: ProxyUrl = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        // Read the request first, so that closing sends FIN, not a reset.
        let mut request = [0u8; 1024];
        let _ = conn.read(&mut request).await.unwrap();
        conn.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
    });
    let e = tunnel::open(&proxy, &relay()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("the proxy at {proxy} closed the connection without answering")
    );
}
