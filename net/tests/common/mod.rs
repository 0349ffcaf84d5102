//! What the HTTP/2 tests share: time bounds and test data.
#![allow(dead_code, clippy::panic)]

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest any test may run.
pub const LIMIT: Duration = Duration::from_secs(60);

/// How long a wait that must not end is given before we call it blocked.
pub const BLOCKED: Duration = Duration::from_millis(300);

/// The duplex "wire" between the two ends: large, so it is not what bounds a transfer.
pub const WIRE: usize = 1 << 20;

pub async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test timed out")
}

/// Byte `i` of every test transfer, so reordering or loss shows.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len + 251).map(|i| (i % 251) as u8).collect()
}

pub async fn read_to_end(s: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    if let Err(e) = s.read_to_end(&mut out).await {
        panic!("read_to_end: {e:?} after {} bytes", out.len());
    }
    out
}
