//! Who may use the local port: only the OS user who started `telework` (DESIGN.md: "the
//! client's local port serves only the OS user who opened it"). Without this, every other
//! account on a shared home PC reaches the office desktop through the open session, with no
//! password.
//!
//! # How the owner is found
//! - **Linux:** the kernel is asked, over a `NETLINK_SOCK_DIAG` socket, for the one TCP socket
//!   whose source is the connection's peer address and whose destination is our local address
//!   (an exact lookup, not a dump: its cost does not grow with the number of sockets on the
//!   machine, which `/proc/net/tcp` does). Its owner's uid is compared with our effective uid.
//!   The request and the reply are built and read by pure functions ([`diag_request`],
//!   [`diag_reply_owner`]) tested on fixed bytes. Anything that keeps the owner from being
//!   known (no such socket, a socket in `TIME_WAIT`, an error or a reply that does not match)
//!   refuses the connection: the check fails closed.
//! - **Windows:** not in this build. The check to add there is `GetExtendedTcpTable` with
//!   `TCP_TABLE_OWNER_PID_CONNECTIONS` (the row whose local end is the peer address gives the
//!   owning PID), then `OpenProcess` + `OpenProcessToken` + `GetTokenInformation(TokenUser)`
//!   for that PID's user SID, compared with our own token's SID. See [`peer_owner`].
//! - **macOS and other systems:** no check. [`OWNER_CHECKED`] is false there and `telework`
//!   says so when it starts; the README says the same.
//!
//! `--listen` on a non-loopback address is refused unless `--allow-remote` is given
//! ([`listen_policy`]); with it, anyone who reaches the address is served.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpStream;

/// Whether this build checks which OS user opened a local connection.
pub const OWNER_CHECKED: bool = cfg!(target_os = "linux");

/// How long the kernel may take to answer an owner lookup before the connection is refused.
pub const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Who may use the local port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalAccess {
    /// Only connections opened by our own OS user (the default).
    SameUser,
    /// Anyone who can reach the listening address (`--allow-remote`).
    Anyone,
}

/// Why a local connection was turned away.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Another OS user of this computer opened it.
    #[error("refused a local connection from another user (uid {0}) of this computer")]
    OtherUser(u32),
    /// Its owner could not be found out, so it is refused (fail closed).
    #[error("refused a local connection whose user could not be determined: {0}")]
    Unknown(#[from] OwnerError),
}

/// Why the owner of a connection's other end is unknown.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// No live socket with those addresses (the peer already closed, or it is on another host).
    #[error("no socket on this computer has that connection")]
    NotFound,
    /// The kernel's answer was not one this client understands.
    #[error("the kernel's socket lookup answered in an unexpected form")]
    BadReply,
    /// The kernel's socket lookup failed.
    #[error("cannot ask the kernel who owns {0}: {1}")]
    Io(&'static str, std::io::Error),
    /// The addresses of the accepted connection are unknown.
    #[error("the connection's addresses are unknown: {0}")]
    Addresses(std::io::Error),
}

/// Why a `--listen` address is not used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "will not listen on {0}: other computers that reach it would get your office desktop without \
     a password. Use a loopback address such as 127.0.0.1:0, or add --allow-remote if that is \
     really what you want"
)]
pub struct RemoteListen(pub SocketAddr);

/// Who may use a listener on `addr`: loopback addresses serve only our own user; any other
/// address only with `allow_remote`, and then anyone who reaches it.
///
/// # Errors
/// [`RemoteListen`] for a non-loopback address without `allow_remote`.
///
/// ```
/// use telework_client::local_peer::{listen_policy, LocalAccess};
/// assert_eq!(listen_policy("127.0.0.1:0".parse().unwrap(), false), Ok(LocalAccess::SameUser));
/// assert!(listen_policy("0.0.0.0:3389".parse().unwrap(), false).is_err());
/// assert_eq!(listen_policy("0.0.0.0:3389".parse().unwrap(), true), Ok(LocalAccess::Anyone));
/// ```
pub fn listen_policy(addr: SocketAddr, allow_remote: bool) -> Result<LocalAccess, RemoteListen> {
    if addr.ip().to_canonical().is_loopback() {
        Ok(LocalAccess::SameUser)
    } else if allow_remote {
        Ok(LocalAccess::Anyone)
    } else {
        Err(RemoteListen(addr))
    }
}

impl LocalAccess {
    /// Decides whether `conn`, just accepted, may be served. Where this build has no owner
    /// check ([`OWNER_CHECKED`] is false), every connection is admitted.
    ///
    /// # Errors
    /// [`Refused`] for another user's connection or one whose owner is unknown.
    pub fn admit(self, conn: &TcpStream) -> Result<(), Refused> {
        if self == Self::Anyone || !OWNER_CHECKED {
            return Ok(());
        }
        let local = conn.local_addr().map_err(OwnerError::Addresses)?;
        let peer = conn.peer_addr().map_err(OwnerError::Addresses)?;
        // The kernel answers an exact sock_diag lookup within the request's own system call,
        // so this does not wait on anything and runs on the runtime thread.
        let owner = peer_owner(local, peer)?;
        let ours = own_uid();
        if owner == ours {
            Ok(())
        } else {
            Err(Refused::OtherUser(owner))
        }
    }
}

/// Our effective user id.
#[cfg(unix)]
fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(not(unix))]
fn own_uid() -> u32 {
    // Never compared: without an owner check `admit` returns before asking.
    u32::MAX
}

/// The uid owning the other end of the connection whose local end (ours) is `local` and
/// whose remote end is `peer`, asked of the kernel (`NETLINK_SOCK_DIAG`, an exact lookup).
///
/// # Errors
/// [`OwnerError`] whenever the owner is not known for sure.
#[cfg(target_os = "linux")]
pub fn peer_owner(local: SocketAddr, peer: SocketAddr) -> Result<u32, OwnerError> {
    use rustix::net::netlink::{SocketAddrNetlink, SOCK_DIAG};
    use rustix::net::sockopt::{set_socket_timeout, Timeout};
    use rustix::net::{
        recv, sendto, socket_with, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType,
    };
    let io = |e: rustix::io::Errno| OwnerError::Io("the connection", e.into());
    // The peer's socket sees the connection the other way round: its source is `peer`.
    let request = diag_request(peer, local).ok_or(OwnerError::NotFound)?;
    let fd = socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(SOCK_DIAG),
    )
    .map_err(io)?;
    set_socket_timeout(&fd, Timeout::Recv, Some(LOOKUP_TIMEOUT)).map_err(io)?;
    sendto(
        &fd,
        &request,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )
    .map_err(io)?;
    let mut reply = [0u8; 4096];
    let (n, _) = recv(&fd, &mut reply[..], RecvFlags::empty()).map_err(io)?;
    diag_reply_owner(reply.get(..n).ok_or(OwnerError::BadReply)?, peer, local)
}

/// Not implemented outside Linux. On Windows: `GetExtendedTcpTable(AF_INET/AF_INET6,
/// TCP_TABLE_OWNER_PID_CONNECTIONS)`, the row with local = `peer` and remote = `local` gives
/// the owning PID; `OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION)`, `OpenProcessToken` and
/// `GetTokenInformation(TokenUser)` give its SID, to compare with our own token's SID (a
/// failure at any step refuses). Needs a safe wrapper crate, as this workspace forbids
/// `unsafe`.
///
/// # Errors
/// Always [`OwnerError::NotFound`]; [`LocalAccess::admit`] does not call it here.
#[cfg(not(target_os = "linux"))]
pub fn peer_owner(_local: SocketAddr, _peer: SocketAddr) -> Result<u32, OwnerError> {
    Err(OwnerError::NotFound)
}

// Linux's sock_diag ABI (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h).
const NLMSG_HEADER: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const TCP_TIME_WAIT: u8 = 6;
/// `inet_diag_req_v2`: family, protocol, extensions, padding, states, then the socket id.
const REQUEST_BODY: usize = 8 + SOCKET_ID;
/// `inet_diag_sockid`: ports, two 16-byte addresses, interface, cookie.
const SOCKET_ID: usize = 4 + 16 + 16 + 4 + 8;
/// `inet_diag_msg`: family, state, timer, retransmits, the socket id, then expires, rqueue,
/// wqueue, uid, inode.
const REPLY_UID_AT: usize = 4 + SOCKET_ID + 12;

/// Both addresses in the family their sockets have: IPv4 (also for IPv4-mapped IPv6) or
/// IPv6, with the address bytes as the kernel's socket id holds them.
fn family_and_bytes(src: SocketAddr, dst: SocketAddr) -> Option<(u8, [u8; 16], [u8; 16])> {
    let bytes = |ip: IpAddr| -> ([u8; 16], bool) {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&v4.octets());
                (b, true)
            }
            IpAddr::V6(v6) => (v6.octets(), false),
        }
    };
    let ((s, s4), (d, d4)) = (bytes(src.ip()), bytes(dst.ip()));
    match (s4, d4) {
        (true, true) => Some((AF_INET, s, d)),
        (false, false) => Some((AF_INET6, s, d)),
        _ => None,
    }
}

/// The netlink request for the TCP socket whose source is `src` and destination `dst`
/// (`SOCK_DIAG_BY_FAMILY`, not a dump: the kernel looks that one socket up). `None` when the
/// two are of different families, which no single socket has.
pub fn diag_request(src: SocketAddr, dst: SocketAddr) -> Option<Vec<u8>> {
    let (family, src_ip, dst_ip) = family_and_bytes(src, dst)?;
    let len = NLMSG_HEADER + REQUEST_BODY;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    m.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(&src.port().to_be_bytes());
    m.extend_from_slice(&dst.port().to_be_bytes());
    m.extend_from_slice(&src_ip);
    m.extend_from_slice(&dst_ip);
    m.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    m.extend_from_slice(&[0xff; 8]); // no cookie
    Some(m)
}

/// The owner's uid from the kernel's reply to [`diag_request`] for `src` → `dst`.
///
/// # Errors
/// [`OwnerError::NotFound`] when there is no such socket (or only a `TIME_WAIT` one, which
/// always shows uid 0); [`OwnerError::BadReply`] for anything else unexpected, including a
/// reply about another socket.
pub fn diag_reply_owner(reply: &[u8], src: SocketAddr, dst: SocketAddr) -> Result<u32, OwnerError> {
    let u16_at = |i: usize| -> Option<u16> {
        Some(u16::from_ne_bytes(reply.get(i..i + 2)?.try_into().ok()?))
    };
    let u32_at = |i: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(reply.get(i..i + 4)?.try_into().ok()?))
    };
    let kind = u16_at(4).ok_or(OwnerError::BadReply)?;
    if kind == NLMSG_ERROR {
        // An errno (negated); ENOENT (2) is "no such socket".
        let errno = u32_at(NLMSG_HEADER).map(|e| (e as i32).unsigned_abs());
        return match errno {
            Some(2) => Err(OwnerError::NotFound),
            Some(e) => Err(OwnerError::Io(
                "the connection",
                std::io::Error::from_raw_os_error(e as i32),
            )),
            None => Err(OwnerError::BadReply),
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(OwnerError::BadReply);
    }
    let body = reply.get(NLMSG_HEADER..).ok_or(OwnerError::BadReply)?;
    let (family, src_ip, dst_ip) = family_and_bytes(src, dst).ok_or(OwnerError::BadReply)?;
    let id = body.get(4..4 + SOCKET_ID).ok_or(OwnerError::BadReply)?;
    let addr_len = if family == AF_INET { 4 } else { 16 };
    let same_socket = body.first() == Some(&family)
        && id.get(0..2) == Some(&src.port().to_be_bytes()[..])
        && id.get(2..4) == Some(&dst.port().to_be_bytes()[..])
        && id.get(4..4 + addr_len) == src_ip.get(..addr_len)
        && id.get(20..20 + addr_len) == dst_ip.get(..addr_len);
    if !same_socket {
        return Err(OwnerError::BadReply);
    }
    if body.get(1) == Some(&TCP_TIME_WAIT) {
        return Err(OwnerError::NotFound);
    }
    let uid = body
        .get(REPLY_UID_AT..REPLY_UID_AT + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or(OwnerError::BadReply)?;
    Ok(uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A reply as the kernel writes it for `src` → `dst`, in `state`, owned by `uid`.
    fn reply(src: SocketAddr, dst: SocketAddr, state: u8, uid: u32) -> Vec<u8> {
        let request = diag_request(src, dst).unwrap();
        let mut body = vec![request[NLMSG_HEADER], state, 0, 0];
        // The socket id as in the request (ports, addresses, interface, cookie).
        body.extend_from_slice(&request[NLMSG_HEADER + 8..]);
        body.extend_from_slice(&[0; 12]); // expires, rqueue, wqueue
        body.extend_from_slice(&uid.to_ne_bytes());
        body.extend_from_slice(&77u32.to_ne_bytes()); // inode
        let mut m = ((NLMSG_HEADER + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn requests_name_one_socket_by_its_exact_addresses() {
        let r = diag_request(a("127.0.0.1:53924"), a("127.0.0.1:35317")).unwrap();
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 20);
        assert_eq!(
            u16::from_ne_bytes(r[6..8].try_into().unwrap()),
            NLM_F_REQUEST
        );
        assert_eq!(&r[16..20], &[AF_INET, IPPROTO_TCP, 0, 0]);
        assert_eq!(&r[24..28], &[0xd2, 0xa4, 0x89, 0xf5]);
        assert_eq!(&r[28..32], &[127, 0, 0, 1]);
        assert_eq!(&r[44..48], &[127, 0, 0, 1]);
        assert_eq!(&r[64..72], &[0xff; 8]);
        // IPv4-mapped addresses are asked for as IPv4; IPv6 as IPv6.
        let mapped = diag_request(a("[::ffff:127.0.0.1]:53924"), a("127.0.0.1:35317")).unwrap();
        assert_eq!(mapped, r);
        let v6 = diag_request(a("[::1]:41245"), a("[::1]:40000")).unwrap();
        assert_eq!(v6[16], AF_INET6);
        assert_eq!(&v6[28..44], &Ipv6Addr::LOCALHOST.octets());
        assert!(diag_request(a("[::1]:1"), a("127.0.0.1:2")).is_none());
    }

    #[test]
    fn the_owner_comes_from_a_reply_about_that_socket_only() {
        let (src, dst) = (a("127.0.0.1:53924"), a("127.0.0.1:35317"));
        assert_eq!(
            diag_reply_owner(&reply(src, dst, 1, 1001), src, dst).unwrap(),
            1001
        );
        let (s6, d6) = (a("[::1]:41245"), a("[::1]:40000"));
        assert_eq!(
            diag_reply_owner(&reply(s6, d6, 1, 1002), s6, d6).unwrap(),
            1002
        );
        // A reply about another socket is not believed.
        let other = reply(a("127.0.0.1:53925"), dst, 1, 0);
        assert!(matches!(
            diag_reply_owner(&other, src, dst),
            Err(OwnerError::BadReply)
        ));
        // TIME_WAIT entries always say uid 0: they tell nothing about the owner.
        assert!(matches!(
            diag_reply_owner(&reply(src, dst, TCP_TIME_WAIT, 0), src, dst),
            Err(OwnerError::NotFound)
        ));
    }

    #[test]
    fn errors_and_junk_fail_closed() {
        let (src, dst) = (a("127.0.0.1:53924"), a("127.0.0.1:35317"));
        let mut enoent = 36u32.to_ne_bytes().to_vec();
        enoent.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        enoent.extend_from_slice(&[0; 10]);
        enoent.extend_from_slice(&(-2i32).to_ne_bytes());
        enoent.extend_from_slice(&[0; 16]);
        assert!(matches!(
            diag_reply_owner(&enoent, src, dst),
            Err(OwnerError::NotFound)
        ));
        let mut eperm = enoent.clone();
        eperm[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert!(matches!(
            diag_reply_owner(&eperm, src, dst),
            Err(OwnerError::Io(..))
        ));
        let good = reply(src, dst, 1, 1001);
        for cut in [0, 3, 16, 20, 60, NLMSG_HEADER + REPLY_UID_AT + 3] {
            assert!(diag_reply_owner(&good[..cut], src, dst).is_err(), "{cut}");
        }
    }

    #[test]
    fn only_loopback_listeners_without_allow_remote() {
        for ok in [
            "127.0.0.1:0",
            "127.0.0.2:3389",
            "[::1]:0",
            "[::ffff:127.0.0.1]:0",
        ] {
            assert_eq!(
                listen_policy(a(ok), false),
                Ok(LocalAccess::SameUser),
                "{ok}"
            );
            assert_eq!(
                listen_policy(a(ok), true),
                Ok(LocalAccess::SameUser),
                "{ok}"
            );
        }
        for remote in ["0.0.0.0:0", "[::]:0", "192.0.2.7:3389", "[2001:db8::1]:0"] {
            assert_eq!(
                listen_policy(a(remote), false),
                Err(RemoteListen(a(remote)))
            );
            assert_eq!(listen_policy(a(remote), true), Ok(LocalAccess::Anyone));
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn our_own_connection_is_admitted_on_both_families() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = tokio::net::TcpListener::bind(bind).await else {
                continue; // no IPv6 on this machine
            };
            let client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            LocalAccess::SameUser.admit(&accepted).unwrap();
            assert_eq!(
                peer_owner(accepted.local_addr().unwrap(), client.local_addr().unwrap()).unwrap(),
                own_uid()
            );
        }
    }
}
