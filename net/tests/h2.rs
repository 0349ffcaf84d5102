//! The HTTP/2 transport over an in-memory wire: streams both ways, half-closes, bounded
//! windows, resets, closes (`h2_tls.rs`: the same over real TLS on loopback). Every test is
//! bounded in time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{bounded, pattern, read_to_end, BLOCKED, WIRE};
use http::{Method, Request, Response, StatusCode};
use telework_net::transport::h2::{
    acceptor, acceptor_with_max_streams, opener, H2Connection, H2Stream, MAX_FRAME_SIZE,
    MAX_SEND_BUFFER, STREAM_WINDOW,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// An opener and an acceptor over an in-memory wire.
async fn pair() -> (H2Connection, H2Connection) {
    pair_with(tokio::io::duplex(WIRE), 256).await
}

async fn pair_with(
    (a, b): (DuplexStream, DuplexStream),
    max_streams: u32,
) -> (H2Connection, H2Connection) {
    let (o, acc) = tokio::join!(opener(a), acceptor_with_max_streams(b, max_streams));
    (o.unwrap(), acc.unwrap())
}

/// An opener and an acceptor joined through a forwarding task: aborting it cuts the wire.
async fn pair_with_cable() -> (H2Connection, H2Connection, tokio::task::JoinHandle<()>) {
    let (a, mut a2) = tokio::io::duplex(WIRE);
    let (b, mut b2) = tokio::io::duplex(WIRE);
    let cable = tokio::spawn(async move {
        let _ = tokio::io::copy_bidirectional(&mut a2, &mut b2).await;
    });
    let (o, acc) = tokio::join!(opener(a), acceptor(b));
    (o.unwrap(), acc.unwrap(), cable)
}

/// After EOF, reads keep returning 0.
async fn assert_eof_again(s: &mut H2Stream) {
    let mut buf = [0u8; 16];
    for _ in 0..3 {
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn many_streams_with_independent_half_closes() {
    bounded(async {
        let (op, acc) = pair().await;
        const STREAMS: usize = 64;
        let server = tokio::spawn(async move {
            let mut tasks = Vec::new();
            for _ in 0..STREAMS {
                let mut s = acc.accept().await.unwrap();
                tasks.push(tokio::spawn(async move {
                    let mut tag = [0u8; 1];
                    s.read_exact(&mut tag).await.unwrap();
                    if tag[0] == b'A' {
                        // The opener half-closes first; we answer after its EOF.
                        let got = read_to_end(&mut s).await;
                        assert_eof_again(&mut s).await;
                        s.write_all(&[b"echo:".as_slice(), &got].concat())
                            .await
                            .unwrap();
                        s.shutdown().await.unwrap();
                    } else {
                        // We half-close first; the opener still writes after our EOF.
                        s.write_all(b"first").await.unwrap();
                        s.shutdown().await.unwrap();
                        assert_eq!(read_to_end(&mut s).await, b"after your eof");
                        assert_eof_again(&mut s).await;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            acc
        });
        let mut clients = Vec::new();
        for i in 0..STREAMS {
            let op = op.clone();
            clients.push(tokio::spawn(async move {
                let mut s = op.open().await.unwrap();
                if i % 2 == 0 {
                    let body = vec![i as u8; 1000 * i];
                    s.write_all(b"A").await.unwrap();
                    s.write_all(&body).await.unwrap();
                    s.shutdown().await.unwrap();
                    assert!(s.write_all(b"late").await.is_err());
                    let back = read_to_end(&mut s).await;
                    assert_eq!(back, [b"echo:".as_slice(), &body].concat());
                } else {
                    s.write_all(b"B").await.unwrap();
                    assert_eq!(read_to_end(&mut s).await, b"first");
                    assert_eof_again(&mut s).await;
                    s.write_all(b"after your eof").await.unwrap();
                    s.shutdown().await.unwrap();
                }
                s
            }));
        }
        let mut open = Vec::new();
        for c in clients {
            open.push(c.await.unwrap());
        }
        server.await.unwrap();
    })
    .await;
}

/// Writes `total` pattern bytes on `writer` while `reader` reads the first window and stops:
/// the writer must stall with at most a window (plus the send buffer and the wire) in flight,
/// then finish once reading resumes.
async fn slow_reader_holds_back(mut writer: H2Stream, mut reader: H2Stream, wire: usize) {
    const TOTAL: usize = 32 << 20;
    const CHUNK: usize = 64 * 1024;
    let written = Arc::new(AtomicUsize::new(0));
    let progress = written.clone();
    let writing = tokio::spawn(async move {
        let data = pattern(CHUNK);
        let mut off = 0;
        while off < TOTAL {
            let len = CHUNK.min(TOTAL - off);
            let n = writer
                .write(&data[off % 251..off % 251 + len])
                .await
                .unwrap();
            off += n;
            progress.store(off, Ordering::SeqCst);
        }
        writer.shutdown().await.unwrap();
        writer
    });

    let expect = pattern(CHUNK);
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0;
    let read_some = |n: usize, read: &mut usize, buf: &[u8]| {
        assert_eq!(&buf[..n], &expect[*read % 251..*read % 251 + n]);
        *read += n;
    };
    while read < STREAM_WINDOW as usize {
        let n = reader.read(&mut buf).await.unwrap();
        assert!(n > 0);
        read_some(n, &mut read, &buf);
    }
    // Stop reading until the writer stalls.
    let mut last = written.load(Ordering::SeqCst);
    let mut still = 0;
    while still < 5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = written.load(Ordering::SeqCst);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    let in_flight = last - read;
    let most = STREAM_WINDOW as usize + MAX_SEND_BUFFER + wire + MAX_FRAME_SIZE as usize;
    assert!(
        in_flight <= most,
        "{in_flight} bytes in flight, more than {most}"
    );
    assert!(
        in_flight >= STREAM_WINDOW as usize / 2,
        "the writer stalled early: {in_flight} bytes in flight"
    );
    assert!(last < TOTAL);
    loop {
        let n = reader.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        read_some(n, &mut read, &buf);
    }
    assert_eq!(read, TOTAL);
    writing.await.unwrap();
}

#[tokio::test]
async fn slow_reader_holds_the_writer_back_both_ways() {
    bounded(async {
        const WIRE_HERE: usize = 64 * 1024;
        let (op, acc) = pair_with(tokio::io::duplex(WIRE_HERE), 256).await;
        let up = op.open().await.unwrap();
        let down = acc.accept().await.unwrap();
        slow_reader_holds_back(up, down, WIRE_HERE).await;
        let up = op.open().await.unwrap();
        let down = acc.accept().await.unwrap();
        slow_reader_holds_back(down, up, WIRE_HERE).await;
    })
    .await;
}

#[tokio::test]
async fn open_costs_no_round_trip() {
    bounded(async {
        // The far end never answers, not even the HTTP/2 settings.
        let (a, _silent) = tokio::io::duplex(WIRE);
        let op = opener(a).await.unwrap();
        let mut s = tokio::time::timeout(BLOCKED, op.open())
            .await
            .expect("open waited for the peer")
            .unwrap();
        s.write_all(b"early bytes").await.unwrap();
        let mut buf = [0u8; 8];
        assert!(tokio::time::timeout(BLOCKED, s.read(&mut buf))
            .await
            .is_err());
    })
    .await;
}

#[tokio::test]
async fn roles_are_enforced() {
    bounded(async {
        let (op, acc) = pair().await;
        assert_eq!(
            acc.open().await.unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
        assert_eq!(
            op.accept().await.unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
        // Both still work in their own role.
        let mut s = op.open().await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut t = acc.accept().await.unwrap();
        let mut b = [0u8; 1];
        t.read_exact(&mut b).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn stream_limit_makes_opens_wait() {
    bounded(async {
        const LIMIT_HERE: u32 = 8;
        let (op, acc) = pair_with(tokio::io::duplex(WIRE), LIMIT_HERE).await;
        // One round trip first, so the opener knows the acceptor's limit (until then h2
        // assumes 100 and the acceptor would refuse the streams beyond 8).
        let mut warm = op.open().await.unwrap();
        warm.shutdown().await.unwrap();
        let mut warm_peer = acc.accept().await.unwrap();
        warm_peer.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut warm).await, b"");
        drop((warm, warm_peer));

        let mut held = Vec::new();
        for _ in 0..LIMIT_HERE {
            let mut s = op.open().await.unwrap();
            s.write_all(b"x").await.unwrap();
            held.push(s);
        }
        // At the limit, the next open waits.
        let op2 = op.clone();
        let mut blocked = tokio::spawn(async move { op2.open().await });
        assert!(tokio::time::timeout(BLOCKED, &mut blocked).await.is_err());
        // Ending one stream at both ends lets the waiting open through.
        let mut first = acc.accept().await.unwrap();
        let mut b = [0u8; 1];
        first.read_exact(&mut b).await.unwrap();
        first.shutdown().await.unwrap();
        let mut mine = held.remove(0);
        mine.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut mine).await, b"");
        assert_eq!(read_to_end(&mut first).await, b"");
        let mut next = blocked.await.unwrap().unwrap();
        next.write_all(b"q").await.unwrap();
        let mut peer = acc.accept().await.unwrap();
        // Accepted in order: the seven still held, then the new one.
        for _ in 1..LIMIT_HERE {
            peer = acc.accept().await.unwrap();
        }
        peer.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"q");
    })
    .await;
}

#[tokio::test]
async fn thousand_sequential_streams_do_not_leak() {
    bounded(async {
        // A small limit: any stream that is not released would soon block the opens.
        let (op, acc) = pair_with(tokio::io::duplex(WIRE), 4).await;
        let server = tokio::spawn(async move {
            for _ in 0..1000 {
                let mut s = acc.accept().await.unwrap();
                let got = read_to_end(&mut s).await;
                assert_eq!(got.len(), 100);
                // The opener may have dropped its stream already: a write may fail.
                let _ = s.write_all(&got).await;
                let _ = s.shutdown().await;
            }
            acc
        });
        for i in 0..1000 {
            let mut s = op.open().await.unwrap();
            s.write_all(&[7u8; 100]).await.unwrap();
            if i % 2 == 0 {
                s.shutdown().await.unwrap();
                assert_eq!(read_to_end(&mut s).await, [7u8; 100]);
            }
            // Odd streams are dropped without shutdown: the drop ends them, and the peer
            // still reads all 100 bytes and then EOF.
        }
        let acc = server.await.unwrap();
        assert!(!acc.is_closed());
    })
    .await;
}

#[tokio::test]
async fn dropping_a_stream_sends_its_bytes_then_eof() {
    bounded(async {
        // More than one write's worth, so some is still queued when the stream is dropped.
        let data = pattern(3 << 20);
        let (op, acc) = pair().await;

        // The opener writes and drops at once, and its connection handle too.
        let send = data.clone();
        let writing = tokio::spawn(async move {
            let mut s = op.open().await.unwrap();
            s.write_all(&send).await.unwrap();
        });
        let mut t = acc.accept().await.unwrap();
        assert_eq!(read_to_end(&mut t).await, data);
        writing.await.unwrap();

        // The acceptor writes and drops at once, the opener not having shut down.
        let (op, acc) = pair().await;
        let mut s = op.open().await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut t = acc.accept().await.unwrap();
        let send = data.clone();
        let writing = tokio::spawn(async move { t.write_all(&send).await.unwrap() });
        assert_eq!(read_to_end(&mut s).await, data);
        writing.await.unwrap();
        // The acceptor reads no more: our writes end in an error, not a hang.
        let e = loop {
            if let Err(e) = s.write_all(b"more").await {
                break e;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    })
    .await;
}

#[tokio::test]
async fn peer_reset_is_an_error_both_ways() {
    bounded(async {
        // A raw HTTP/2 client resets a stream our acceptor is reading and writing.
        let (a, b) = tokio::io::duplex(WIRE);
        let (client, acc) = tokio::join!(::h2::client::handshake(a), acceptor(b));
        let (mut requests, conn) = client.unwrap();
        tokio::spawn(conn);
        let acc = acc.unwrap();
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = "https://relay.test/".parse().unwrap();
        let (_response, mut body) = requests.send_request(request, false).unwrap();
        body.send_data(Bytes::from_static(b"hello"), false).unwrap();
        let mut s = acc.accept().await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        body.send_reset(::h2::Reason::CANCEL);
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(
            s.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
        let e = s.write_all(b"anyone there?").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);

        // A raw HTTP/2 server resets one of our opener's streams and refuses another.
        let (a, b) = tokio::io::duplex(WIRE);
        let (op, server) = tokio::join!(opener(a), ::h2::server::handshake(b));
        let (op, mut server) = (op.unwrap(), server.unwrap());
        let mut s = op.open().await.unwrap();
        let mut refused = op.open().await.unwrap();
        let (_request, mut respond) = server.accept().await.unwrap().unwrap();
        let (_request2, mut respond2) = server.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while server.accept().await.is_some() {} });
        let mut answer = respond.send_response(Response::new(()), false).unwrap();
        answer.send_reset(::h2::Reason::INTERNAL_ERROR);
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        let e = s.write_all(b"anyone there?").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        let mut not_found = Response::new(());
        *not_found.status_mut() = StatusCode::NOT_FOUND;
        respond2.send_response(not_found, true).unwrap();
        let e = refused.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    })
    .await;
}

#[tokio::test]
async fn cut_wire_fails_streams_and_closes_both_ends() {
    bounded(async {
        let (op, acc, cable) = pair_with_cable().await;
        let mut s = op.open().await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut t = acc.accept().await.unwrap();
        let mut buf = [0u8; 4];
        t.read_exact(&mut buf).await.unwrap();
        cable.abort();
        assert_eq!(
            s.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
        assert_eq!(
            t.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
        assert!(s.write_all(b"x").await.is_err());
        assert!(t.write_all(b"x").await.is_err());
        op.closed().await;
        acc.closed().await;
        assert!(op.is_closed() && acc.is_closed());
        assert!(op.open().await.is_err());
        assert!(acc.accept().await.is_err());
    })
    .await;
}

#[tokio::test]
async fn close_ends_the_peer_and_its_streams() {
    bounded(async {
        // The acceptor closes (GOAWAY with a code).
        let (op, acc) = pair().await;
        let mut s = op.open().await.unwrap();
        s.write_all(b"x").await.unwrap();
        let _t = acc.accept().await.unwrap();
        acc.close(7);
        assert!(acc.is_closed());
        assert!(acc.accept().await.is_err());
        let mut buf = [0u8; 4];
        assert_eq!(
            s.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
        op.closed().await;
        acc.closed().await;
        assert!(op.open().await.is_err());

        // The opener closes (drops the connection).
        let (op, acc) = pair().await;
        let mut s = op.open().await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut t = acc.accept().await.unwrap();
        t.read_exact(&mut buf[..1]).await.unwrap();
        op.close(7);
        assert!(op.is_closed());
        assert!(op.open().await.is_err());
        assert_eq!(
            t.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
        acc.closed().await;
        op.closed().await;
    })
    .await;
}

#[tokio::test]
async fn closed_completes_when_the_peer_drops() {
    bounded(async {
        let (op, acc) = pair().await;
        drop(acc);
        op.closed().await;
        assert!(op.open().await.is_err());

        let (op, acc) = pair().await;
        drop(op);
        acc.closed().await;
        assert!(acc.accept().await.is_err());

        // A stream keeps its connection open after the handles are gone.
        let (op, acc) = pair().await;
        let mut s = op.open().await.unwrap();
        drop(op);
        let mut t = acc.accept().await.unwrap();
        s.write_all(b"still here").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut t).await, b"still here");
        t.write_all(b"me too").await.unwrap();
        t.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut s).await, b"me too");
        drop(s);
        acc.closed().await;
    })
    .await;
}

/// PINGs keep an idle connection whose peer answers, and give up on one whose peer went
/// silent (the wire still open, nothing crossing it) within 45 s, as QUIC's idle timeout.
#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_given_up_on_and_an_idle_one_is_kept() {
    let (a, mut a2) = tokio::io::duplex(WIRE);
    let (b, mut b2) = tokio::io::duplex(WIRE);
    let (stall, stalled) = tokio::sync::oneshot::channel::<()>();
    let cable = tokio::spawn(async move {
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut a2, &mut b2) => {}
            _ = stalled => {}
        }
        // Both ends stay open; nothing crosses any more.
        std::future::pending::<()>().await;
        drop((a2, b2));
    });
    let (o, acc) = tokio::join!(opener(a), acceptor(b));
    let (o, acc) = (o.unwrap(), acc.unwrap());
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(
        !o.is_closed() && !acc.is_closed(),
        "an idle, live connection is kept"
    );
    stall.send(()).unwrap();
    let silent_since = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), o.closed())
        .await
        .expect("the opener gives up on a silent peer");
    tokio::time::timeout(Duration::from_secs(60), acc.closed())
        .await
        .expect("the acceptor gives up on a silent peer");
    let took = silent_since.elapsed();
    assert!(took <= Duration::from_secs(46), "{took:?}");
    cable.abort();
}
