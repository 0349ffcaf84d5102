//! The encrypted tunnel between client and agent, and the pump that joins it to a plain local
//! socket (the RDP client's connection at home, the desktop service's at the office).

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Stream;
use telework_protocol::e2e::keys::TunnelKeys;
use telework_protocol::e2e::messages::{AgentNotice, EndReason};
use telework_protocol::e2e::record::{
    Opener, Record, RecordError, RecordKind, Sealer, BULK_RECORD_PLAINTEXT,
};
use telework_protocol::frame::decode_payload;

/// How much plaintext the pump reads from the local socket at once. Several records are sealed
/// into one write so that bulk transfers make few syscalls; four bulk records seal to exactly
/// 64 KiB, four full TLS records.
const LOCAL_READ_CHUNK: usize = 4 * BULK_RECORD_PLAINTEXT;

/// What the pump reads from a local socket at once until it sees bulk data: an idle desktop
/// connection (most of them, most of the time) then holds 2 KiB, not 64 KiB, in each of its
/// two pumps. A read that fills it switches that pump to [`LOCAL_READ_CHUNK`].
const IDLE_READ_CHUNK: usize = 2 * 1024;

/// Most already-received plaintext the pump gathers into one write to the local socket. One
/// write per record would cost a syscall (and a wake-up of the reader) per 16 KiB. A batch
/// holds what one read of the tunnel brought, so about 64 KiB in practice; this caps it
/// whatever the reads return. The copy into it costs far less than the syscalls it saves.
const LOCAL_WRITE_BATCH: usize = 256 * 1024;

/// How long to wait for the transport to close after the peer's end-of-stream record.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a tunnel ended other than by a clean end of stream from both sides.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// A socket failed.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// A record failed to open: the tunnel was tampered with.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The tunnel closed without an authenticated end of stream: someone cut it.
    #[error("the tunnel was cut off before the other side finished")]
    Truncated,
    /// The other side ended the tunnel (an authenticated end of stream) where a message was
    /// expected.
    #[error("the other side closed the tunnel")]
    Finished,
    /// The agent ended the session.
    #[error("the session ended: {0}")]
    Ended(EndReason),
    /// A record arrived that is not allowed at this point.
    #[error("unexpected message in the tunnel")]
    Unexpected,
}

/// Byte counts of a finished pump.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PumpStats {
    /// Plaintext bytes read from the local socket and sent.
    pub sent: u64,
    /// Plaintext bytes received and written to the local socket.
    pub received: u64,
}

/// An authenticated, encrypted tunnel over a byte stream.
pub struct SecureTunnel<S> {
    io: S,
    rbuf: BytesMut,
    sealer: Sealer,
    opener: Opener,
}

impl<S: Stream> SecureTunnel<S> {
    /// Starts the record layer on `io`; `leftover` holds bytes already read past the handshake.
    pub fn new(io: S, leftover: BytesMut, keys: TunnelKeys) -> Self {
        Self {
            io,
            rbuf: leftover,
            sealer: keys.sealer,
            opener: keys.opener,
        }
    }

    /// Sends an agent notice.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn send_notice(&mut self, notice: &AgentNotice) -> Result<(), TunnelError> {
        self.send_control(notice).await
    }

    /// Sends a control message (an [`AgentNotice`] or a client notice).
    ///
    /// # Errors
    /// Socket errors.
    pub async fn send_control<T: serde::Serialize>(&mut self, msg: &T) -> Result<(), TunnelError> {
        let payload = postcard::to_allocvec(msg).map_err(|_| TunnelError::Unexpected)?;
        let mut out = BytesMut::new();
        self.sealer.seal(RecordKind::Control, &payload, &mut out)?;
        self.io.write_all(&out).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Sends an authenticated end of stream and closes our sending side.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn finish(&mut self) -> Result<(), TunnelError> {
        let mut out = BytesMut::new();
        self.sealer.seal(RecordKind::Eof, &[], &mut out)?;
        self.io.write_all(&out).await?;
        self.io.shutdown().await?;
        Ok(())
    }

    /// Receives the next record.
    ///
    /// # Errors
    /// [`TunnelError::Truncated`] if the stream ends before an end-of-stream record; record
    /// errors for anything tampered with.
    pub async fn recv(&mut self) -> Result<Record, TunnelError> {
        read_record(&mut self.io, &mut self.rbuf, &mut self.opener).await
    }

    /// Receives the next notice, failing on anything else.
    ///
    /// # Errors
    /// As [`SecureTunnel::recv`], plus [`TunnelError::Unexpected`] for a non-notice record.
    pub async fn recv_notice(&mut self) -> Result<AgentNotice, TunnelError> {
        self.recv_control().await
    }

    /// Receives the next control message of type `T`, failing on anything else.
    ///
    /// # Errors
    /// As [`SecureTunnel::recv`], plus [`TunnelError::Unexpected`] for a data record or a
    /// control message that is not a `T`.
    pub async fn recv_control<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, TunnelError> {
        let record = self.recv().await?;
        parse_control(&record)
    }

    /// Moves bytes both ways between `local` and the tunnel until both directions have ended.
    ///
    /// End of stream on one side is passed on as a half-close: local EOF becomes an
    /// end-of-stream record, and an end-of-stream record shuts down `local`'s write side.
    ///
    /// # Errors
    /// Any [`TunnelError`]; both directions stop at the first.
    pub async fn pump<L: Stream>(self, local: L) -> Result<PumpStats, TunnelError> {
        let Self {
            io,
            mut rbuf,
            mut sealer,
            mut opener,
        } = self;
        let (mut tr, mut tw) = tokio::io::split(io);
        let (mut lr, mut lw) = tokio::io::split(local);

        let upstream = async move {
            let mut chunk = vec![0u8; IDLE_READ_CHUNK];
            // Grows to what the records of one read need, and stays.
            let mut out = BytesMut::new();
            let mut sent = 0u64;
            loop {
                let n = lr.read(&mut chunk).await?;
                out.clear();
                if n == 0 {
                    sealer.seal(RecordKind::Eof, &[], &mut out)?;
                    tw.write_all(&out).await?;
                    tw.shutdown().await?;
                    return Ok::<u64, TunnelError>(sent);
                }
                sealer.seal_data(&chunk[..n], &mut out)?;
                tw.write_all(&out).await?;
                // A TLS writer may accept bytes it cannot send yet; only a flush is sure to
                // send them before we wait for the next local bytes, however long that is.
                tw.flush().await?;
                sent += n as u64;
                if n == chunk.len() && chunk.len() < LOCAL_READ_CHUNK {
                    chunk = vec![0u8; LOCAL_READ_CHUNK];
                }
            }
        };

        let downstream = async move {
            let mut received = 0u64;
            let mut batch = BytesMut::new();
            loop {
                let first = read_record(&mut tr, &mut rbuf, &mut opener).await?;
                batch.clear();
                let other = gather_data(first, &mut rbuf, &mut opener, &mut batch);
                // The data before a non-data record, or before a record that fails to open,
                // is authentic and goes out first.
                if !batch.is_empty() {
                    lw.write_all(&batch).await?;
                    received += batch.len() as u64;
                }
                let record = match other {
                    None => continue,
                    Some(record) => record?,
                };
                if record.kind == RecordKind::Eof {
                    lw.shutdown().await?;
                    drain(&mut tr).await;
                    return Ok::<u64, TunnelError>(received);
                }
                // Otherwise a notice: `gather_data` batched every data record.
                return Err(match parse_control::<AgentNotice>(&record)? {
                    AgentNotice::SessionEnded(reason) => TunnelError::Ended(reason),
                    _ => TunnelError::Unexpected,
                });
            }
        };

        let (sent, received) = tokio::try_join!(upstream, downstream)?;
        Ok(PumpStats { sent, received })
    }
}

/// After the peer's end-of-stream record only its transport close can follow. Read until it
/// arrives (briefly) so that closing our socket does not find unread bytes in it: the kernel
/// would answer those with a reset, and a reset makes the relay drop data still in flight
/// the other way.
async fn drain<R: tokio::io::AsyncRead + Unpin>(io: &mut R) {
    let mut scratch = [0u8; 512];
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Ok(n) = io.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

fn parse_control<T: serde::de::DeserializeOwned>(record: &Record) -> Result<T, TunnelError> {
    match record.kind {
        RecordKind::Control => decode_payload(&record.payload).map_err(|_| TunnelError::Unexpected),
        RecordKind::Eof => Err(TunnelError::Finished),
        RecordKind::Data => Err(TunnelError::Unexpected),
    }
}

/// Appends the payload of `first`, and of the data records after it that have already arrived,
/// to `batch`, up to [`LOCAL_WRITE_BATCH`] bytes. Returns the first record that is not data, or
/// the error of one that failed to open, to be acted on once the data before it is written.
fn gather_data(
    first: Record,
    rbuf: &mut BytesMut,
    opener: &mut Opener,
    batch: &mut BytesMut,
) -> Option<Result<Record, RecordError>> {
    let mut record = first;
    loop {
        if record.kind != RecordKind::Data {
            return Some(Ok(record));
        }
        batch.extend_from_slice(&record.payload);
        if batch.len() >= LOCAL_WRITE_BATCH {
            return None;
        }
        match opener.open(rbuf) {
            Ok(Some(next)) => record = next,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        }
    }
}

async fn read_record<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    rbuf: &mut BytesMut,
    opener: &mut Opener,
) -> Result<Record, TunnelError> {
    loop {
        if let Some(record) = opener.open(rbuf)? {
            return Ok(record);
        }
        // Bounded: `open` rejects any header over MAX_RECORD_CIPHERTEXT, so the buffer never
        // holds more than one record plus one read.
        rbuf.reserve(LOCAL_READ_CHUNK);
        if io.read_buf(rbuf).await? == 0 {
            return Err(TunnelError::Truncated);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telework_protocol::e2e::keys::{after_login, Role};

    /// Reads exactly `N` bytes, failing the test with `held_back` if they take over 5 s.
    async fn read_within_5s<const N: usize>(
        from: &mut (impl tokio::io::AsyncRead + Unpin),
        held_back: &str,
    ) -> [u8; N] {
        let mut got = [0u8; N];
        tokio::time::timeout(std::time::Duration::from_secs(5), from.read_exact(&mut got))
            .await
            .expect(held_back)
            .unwrap();
        got
    }

    fn tunnels() -> (
        SecureTunnel<tokio::io::DuplexStream>,
        SecureTunnel<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(64);
        let (ck, _) = after_login(&[1; 64], Role::Client);
        let (ak, _) = after_login(&[1; 64], Role::Agent);
        (
            SecureTunnel::new(a, BytesMut::new(), ck),
            SecureTunnel::new(b, BytesMut::new(), ak),
        )
    }

    #[tokio::test]
    async fn pump_carries_bytes_both_ways_and_half_closes() {
        let (client, agent) = tunnels();
        let (client_local, mut app) = tokio::io::duplex(1024);
        let (agent_local, mut desktop) = tokio::io::duplex(1024);
        let c = tokio::spawn(client.pump(client_local));
        let a = tokio::spawn(agent.pump(agent_local));
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            app.write_all(&data).await.unwrap();
            app.shutdown().await.unwrap();
            let mut back = Vec::new();
            app.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        desktop.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, expected);
        desktop.write_all(b"bye").await.unwrap();
        desktop.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        let cs = c.await.unwrap().unwrap();
        let as_ = a.await.unwrap().unwrap();
        assert_eq!((cs.sent, cs.received), (200_000, 3));
        assert_eq!((as_.sent, as_.received), (3, 200_000));
    }

    #[tokio::test]
    async fn cut_tunnel_is_truncated_not_a_clean_end() {
        let (client, agent) = tunnels();
        drop(agent);
        let (client_local, _app) = tokio::io::duplex(1024);
        let err = client.pump(client_local).await.unwrap_err();
        assert!(
            matches!(err, TunnelError::Truncated | TunnelError::Io(_)),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn data_before_a_forged_record_is_delivered_then_the_tunnel_fails() {
        let (wire, agent_end) = tokio::io::duplex(1 << 20);
        let (ck, _) = after_login(&[1; 64], Role::Client);
        let (ak, _) = after_login(&[1; 64], Role::Agent);
        let mut sealer = ck.sealer;
        let agent = SecureTunnel::new(agent_end, BytesMut::new(), ak);
        let (agent_local, mut desktop) = tokio::io::duplex(1 << 20);
        let pump = tokio::spawn(agent.pump(agent_local));

        // Two data records and a forged one, arriving together so they land in one batch.
        let mut bytes = BytesMut::new();
        sealer.seal_data(b"first ", &mut bytes).unwrap();
        sealer.seal_data(b"second", &mut bytes).unwrap();
        let forged_at = bytes.len();
        sealer.seal_data(b"third", &mut bytes).unwrap();
        bytes[forged_at + 3] ^= 1;
        let (_wire_read, mut wire_write) = tokio::io::split(wire);
        wire_write.write_all(&bytes).await.unwrap();

        let got = read_within_5s::<12>(
            &mut desktop,
            "the data before the forged record was held back",
        )
        .await;
        assert_eq!(&got, b"first second");
        let err = pump.await.unwrap().unwrap_err();
        assert!(
            matches!(err, TunnelError::Record(RecordError::Forged)),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn notices_round_trip() {
        let (mut client, mut agent) = tunnels();
        agent
            .send_notice(&AgentNotice::TargetRefused)
            .await
            .unwrap();
        assert_eq!(
            client.recv_notice().await.unwrap(),
            AgentNotice::TargetRefused
        );
        // An authenticated end is told apart from a cut.
        agent.finish().await.unwrap();
        assert!(matches!(
            client.recv_notice().await,
            Err(TunnelError::Finished)
        ));
    }

    #[tokio::test]
    async fn local_bytes_are_sent_while_the_local_side_stays_open() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ck, _) = after_login(&[1; 64], Role::Client);
        let (ak, _) = after_login(&[1; 64], Role::Agent);
        let client = SecureTunnel::new(
            crate::holds_until_flush::HoldsUntilFlush::new(a),
            BytesMut::new(),
            ck,
        );
        let agent = SecureTunnel::new(b, BytesMut::new(), ak);
        let (client_local, mut app) = tokio::io::duplex(1024);
        let (agent_local, mut desktop) = tokio::io::duplex(1024);
        let _c = tokio::spawn(client.pump(client_local));
        let _a = tokio::spawn(agent.pump(agent_local));
        app.write_all(b"hello").await.unwrap();
        let got = read_within_5s::<5>(&mut desktop, "bytes held in the transport's writer").await;
        assert_eq!(&got, b"hello");
    }
}
