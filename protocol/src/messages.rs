//! Control messages between the programs and the relay, one enum per direction.
//!
//! A program keeps one connection to the relay (QUIC, or TLS over TCP with HTTP/2 streams);
//! its ALPN names the role and the protocol's major version (see `telework-net`). Messages
//! ride on streams inside it:
//!
//! - on an agent's connection the relay opens every stream and names it first
//!   ([`RelayOpens`]): the control stream ([`AgentToRelay`], [`RelayToAgent`]), then one
//!   stream per tunnel;
//! - on a client's connection the client opens one stream per tunnel and asks for a computer
//!   ID on it ([`ClientToRelay`], [`RelayToClient`]).
//!
//! The first message each way repeats the minor version, so that the relay can refuse old
//! software with a reason instead of a broken session.

use serde::{Deserialize, Serialize};

use crate::error_code::ErrorCode;
use crate::ids::{ComputerId, Ticket};

/// Minor protocol version spoken by this build, sent in every hello.
///
/// 2: the agent's login answer names its password-stretching parameters, which a version-1
/// client cannot read. 3: a login opens with the office PC's identity proof and the device's
/// proof, before the password step. 4: one connection per endpoint, tunnels as streams. 5: a session's
/// control tunnel can be re-attached after its connection broke. 6: a client proves its device
/// key to the relay (the operator's console names sessions by device), and an agent names its
/// software version. 7: several relay nodes: the relay can send an agent or a client to
/// another node, and an agent names the nodes it could not reach. 8: Wake-on-LAN: an agent
/// names the office PCs it can wake ([`AgentToRelay::CanWake`]), a client asks for a wake
/// ([`ClientToRelay::Wake`]) and the relay passes it on ([`RelayToAgent::Wake`]). Only
/// additions: version-7 peers never send or receive them, so they still work.
/// Relays refuse older versions so that old software is told to update instead of failing
/// mid-login.
pub const PROTOCOL_VERSION: u16 = 8;

/// Oldest minor version a relay accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 7;

/// First minor version that knows the Wake-on-LAN messages: an agent sends
/// [`AgentToRelay::CanWake`] only to a relay whose control stream names at least this.
pub const WAKE_PROTOCOL_VERSION: u16 = 8;

/// Most computer IDs of an [`AgentToRelay::CanWake`] the relay keeps (the frame cap bounds
/// what is decoded; the relay drops the rest).
pub const MAX_WAKE_TARGETS: usize = 256;

/// The first message on every stream the relay opens on an agent's connection: what the
/// stream is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayOpens {
    /// The control stream (always the first): registration or presence, keepalives.
    Control {
        /// The relay's minor protocol version.
        version: u16,
    },
    /// A tunnel: from the next byte on, a pipe to a client. `tunnel` names it in a
    /// [`AgentToRelay::PairingFailed`] report.
    Tunnel {
        /// Names this tunnel to its agent.
        tunnel: Ticket,
    },
}

/// Messages an agent sends on its control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentToRelay {
    /// Claim `id` for the machine key `public_key` (Ed25519, 32 bytes). `proof` signs the TLS
    /// session's exporter value, showing the sender holds the private key.
    Register {
        /// Sender's minor protocol version.
        version: u16,
        /// The computer ID asked for.
        id: ComputerId,
        /// Ed25519 public key of the machine.
        public_key: Vec<u8>,
        /// Enrolment token, required when the relay is not in open-registration mode.
        token: Option<String>,
        /// Signature over [`crate::proof::proof_message`].
        proof: Vec<u8>,
    },
    /// Come online as `id`, proving the machine key bound to this TLS session.
    Hello {
        /// Sender's minor protocol version.
        version: u16,
        /// The registered computer ID.
        id: ComputerId,
        /// Signature over [`crate::proof::proof_message`].
        proof: Vec<u8>,
        /// Nodes the agent was sent to lately and could not reach (names, at most
        /// [`MAX_UNREACHABLE`] are read): the relay does not send it there again.
        unreachable: Vec<String>,
    },
    /// Keepalive; the relay answers [`RelayToAgent::Pong`].
    Ping(u64),
    /// The client of tunnel `ticket` failed the end-to-end login (wrong password or
    /// code): the relay charges the client's address, so guessing also costs the guesser.
    PairingFailed(Ticket),
    /// After [`RelayToAgent::Welcome`]: the agent's software, as its operator reads it
    /// (`telework-agent 0.1.0`). The relay keeps at most [`MAX_SOFTWARE_LEN`] characters.
    About {
        /// Program name and version.
        software: String,
    },
    /// The office PCs this agent can wake (IT staff configured them on it; the MAC and LAN
    /// addresses stay on the agent). Sent after [`RelayToAgent::Welcome`] and whenever the
    /// list changes, only to a relay of [`WAKE_PROTOCOL_VERSION`] or later; each replaces the
    /// last. The relay keeps at most [`MAX_WAKE_TARGETS`].
    CanWake(Vec<ComputerId>),
}

/// Most characters of [`AgentToRelay::About`] the relay keeps.
pub const MAX_SOFTWARE_LEN: usize = 64;

/// Most entries of a hello's `unreachable` list the relay reads.
pub const MAX_UNREACHABLE: usize = 8;

/// Where a relay sends an agent or a client: another node of the same cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The node's name.
    pub node: String,
    /// Its public address, `host:port`.
    pub address: String,
}

/// Messages the relay sends on an agent's control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayToAgent {
    /// Registration accepted: the machine now owns `id`.
    Registered {
        /// The ID recorded.
        id: ComputerId,
    },
    /// Hello accepted: the agent is online, at the node so named.
    Welcome {
        /// The node's name (an agent that loses this node avoids it for a while).
        node: String,
    },
    /// Answer to a [`AgentToRelay::Ping`].
    Pong(u64),
    /// Come online at this other node instead (in place of [`RelayToAgent::Welcome`], or
    /// later when the cluster changes). Tunnels open here carry on until they end.
    MoveTo(NodeAddr),
    /// The request failed, or the relay is closing this connection.
    Error(ErrorCode),
    /// Send the magic packet for this office PC (one the agent named in
    /// [`AgentToRelay::CanWake`]; the agent ignores any other, and limits itself).
    Wake(ComputerId),
}

/// The one message a client sends on each stream it opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientToRelay {
    /// Connect me to the agent registered as `id` (versions before 6; refused now).
    Connect {
        /// Sender's minor protocol version.
        version: u16,
        /// The computer to reach.
        id: ComputerId,
    },
    /// Connect me to the agent registered as `id`, from the device whose Ed25519 key is
    /// `device_key`. `device_proof` signs [`crate::proof::device_proof_message`] of this
    /// connection's exporter value, so the relay can name the device in its audit log and
    /// console, and a captured proof is useless on another connection. The same proof is
    /// sent on every stream of a connection.
    ConnectAs {
        /// Sender's minor protocol version.
        version: u16,
        /// The computer to reach.
        id: ComputerId,
        /// The device's public key (32 bytes).
        device_key: Vec<u8>,
        /// The signature.
        device_proof: Vec<u8>,
    },
    /// Wake the office PC `id` (version 8 on): the relay asks the agents that can wake it,
    /// answers [`RelayToClient::Wake`], and then, on the same stream, sends
    /// [`RelayToClient::Online`] once the PC is online (or closes the stream after
    /// [`MAX_WAKE_WAIT_SECS`]).
    Wake {
        /// Sender's minor protocol version.
        version: u16,
        /// The office PC to wake.
        id: ComputerId,
    },
}

/// Longest a relay keeps a wake request's stream open waiting for the PC (seconds).
pub const MAX_WAKE_WAIT_SECS: u64 = 600;

/// What became of a wake request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WakeAnswer {
    /// An agent in the PC's office was asked to send the magic packet.
    Sent,
    /// The PC was woken lately (within the relay's per-PC window): not asked again; the
    /// request waits like a sent one. `retry_secs` says when another would be sent.
    AlreadyAsked {
        /// Seconds until the relay would ask again.
        retry_secs: u16,
    },
    /// No agent that can wake this PC is online (or the ID is unknown: the answer is the
    /// same, so it tells a stranger nothing).
    NoWaker,
    /// The PC is already online: connect as usual.
    AlreadyOnline,
}

/// The relay's answer to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayToClient {
    /// The agent's stream is open: from the next byte on this stream is a pipe to it.
    Paired,
    /// The office PC is online at this other node: ask there.
    MoveTo(NodeAddr),
    /// No tunnel: the reason says why.
    Error(ErrorCode),
    /// The answer to a [`ClientToRelay::Wake`].
    Wake(WakeAnswer),
    /// After [`RelayToClient::Wake`]: the office PC came online.
    Online,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_frame, encode_frame};
    use bytes::BytesMut;

    /// Golden bytes: the wire form of a client's connect request must not change by accident.
    #[test]
    fn client_connect_golden_bytes() {
        let msg = ClientToRelay::Connect {
            version: 1,
            id: "pc-01".parse().unwrap(),
        };
        let mut buf = BytesMut::new();
        encode_frame(&msg, &mut buf).unwrap();
        assert_eq!(
            &buf[..],
            &[0, 0, 0, 8, 0, 1, 5, b'p', b'c', b'-', b'0', b'1']
        );
        assert_eq!(decode_frame::<ClientToRelay>(&mut buf).unwrap(), Some(msg));
    }

    #[test]
    fn every_agent_message_round_trips() {
        let id: ComputerId = "pc".parse().unwrap();
        let msgs = [
            AgentToRelay::Register {
                version: 1,
                id: id.clone(),
                public_key: vec![1; 32],
                token: Some("t".into()),
                proof: vec![2; 64],
            },
            AgentToRelay::Hello {
                version: 1,
                id,
                proof: vec![3; 64],
                unreachable: vec!["node-b".into()],
            },
            AgentToRelay::Ping(9),
            AgentToRelay::About {
                software: "telework-agent 0.1.0".into(),
            },
            AgentToRelay::CanWake(vec!["pc-a".parse().unwrap(), "pc-b".parse().unwrap()]),
        ];
        for m in msgs {
            let mut buf = BytesMut::new();
            encode_frame(&m, &mut buf).unwrap();
            assert_eq!(decode_frame::<AgentToRelay>(&mut buf).unwrap(), Some(m));
        }
    }

    /// Golden bytes: version-7 peers must keep decoding what they knew; the wake messages
    /// are appended variants.
    #[test]
    fn wake_messages_golden_bytes_and_round_trips() {
        let id: ComputerId = "pc-1".parse().unwrap();
        let mut buf = BytesMut::new();
        let wake = ClientToRelay::Wake {
            version: 8,
            id: id.clone(),
        };
        encode_frame(&wake, &mut buf).unwrap();
        assert_eq!(&buf[..], &[0, 0, 0, 7, 2, 8, 4, b'p', b'c', b'-', b'1']);
        assert_eq!(decode_frame::<ClientToRelay>(&mut buf).unwrap(), Some(wake));
        let answers = [
            RelayToClient::Wake(WakeAnswer::Sent),
            RelayToClient::Wake(WakeAnswer::AlreadyAsked { retry_secs: 17 }),
            RelayToClient::Wake(WakeAnswer::NoWaker),
            RelayToClient::Wake(WakeAnswer::AlreadyOnline),
            RelayToClient::Online,
        ];
        for m in answers {
            encode_frame(&m, &mut buf).unwrap();
            assert_eq!(decode_frame::<RelayToClient>(&mut buf).unwrap(), Some(m));
        }
        encode_frame(&RelayToAgent::Wake(id.clone()), &mut buf).unwrap();
        assert_eq!(&buf[..], &[0, 0, 0, 6, 5, 4, b'p', b'c', b'-', b'1']);
        assert_eq!(
            decode_frame::<RelayToAgent>(&mut buf).unwrap(),
            Some(RelayToAgent::Wake(id))
        );
    }

    #[test]
    fn a_wake_list_with_a_bad_id_is_malformed() {
        // Variant 5 (CanWake), one entry, "A!" is not a computer ID.
        let mut buf = BytesMut::from(&[0, 0, 0, 5, 5, 1, 2, b'A', b'!'][..]);
        assert!(decode_frame::<AgentToRelay>(&mut buf).is_err());
    }

    #[test]
    fn unknown_variant_is_malformed() {
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 200][..]);
        assert!(decode_frame::<RelayToAgent>(&mut buf).is_err());
    }
}
