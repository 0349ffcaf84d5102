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
/// another node, and an agent names the nodes it could not reach.
/// Relays refuse older versions so that old software is told to update instead of failing
/// mid-login.
pub const PROTOCOL_VERSION: u16 = 7;

/// Oldest minor version a relay accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 7;

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
        ];
        for m in msgs {
            let mut buf = BytesMut::new();
            encode_frame(&m, &mut buf).unwrap();
            assert_eq!(decode_frame::<AgentToRelay>(&mut buf).unwrap(), Some(m));
        }
    }

    #[test]
    fn unknown_variant_is_malformed() {
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 200][..]);
        assert!(decode_frame::<RelayToAgent>(&mut buf).is_err());
    }
}
