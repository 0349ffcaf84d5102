//! Who may use the local port: only the OS user who started `telework` (DESIGN.md: "the
//! client's local port serves only the OS user who opened it"). Without this, every other
//! account on a shared home PC reaches the office desktop through the open session, with no
//! password.
//!
//! # How the owner is found
//! - **Linux:** the connecting socket is looked up in `/proc/net/tcp` and `/proc/net/tcp6` (the
//!   entry whose local address is the connection's peer address and whose remote address is
//!   our local address), and its owner's uid is compared with our effective uid. The parsing
//!   is pure ([`parse_line`], [`owners`]) and tested on captured lines. Anything that keeps the
//!   owner from being known (no entry, two owners, a table over [`PROC_NET_CAP`], a read error)
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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpStream;

/// Whether this build checks which OS user opened a local connection.
pub const OWNER_CHECKED: bool = cfg!(target_os = "linux");

/// The most of `/proc/net/tcp` or `/proc/net/tcp6` read per connection (about 200,000
/// sockets); a bigger table refuses the connection rather than being half read.
pub const PROC_NET_CAP: u64 = 32 * 1024 * 1024;

/// One owner lookup at a time: each reads the whole socket table on a blocking thread, and a
/// local user opening many connections at once must not make the client read it hundreds of
/// times in parallel.
static LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

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
    /// Sockets of more than one user matched.
    #[error("sockets of several users match that connection")]
    Ambiguous,
    /// The socket table is larger than [`PROC_NET_CAP`].
    #[error("the socket table {0} is larger than {PROC_NET_CAP} bytes")]
    TooLarge(&'static str),
    /// The socket table could not be read.
    #[error("cannot read {0}: {1}")]
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
    pub async fn admit(self, conn: &TcpStream) -> Result<(), Refused> {
        if self == Self::Anyone || !OWNER_CHECKED {
            return Ok(());
        }
        let local = conn.local_addr().map_err(OwnerError::Addresses)?;
        let peer = conn.peer_addr().map_err(OwnerError::Addresses)?;
        let _turn = LOOKUPS
            .acquire()
            .await
            .map_err(|e| OwnerError::Io("the socket table", std::io::Error::other(e)))?;
        let owner = tokio::task::spawn_blocking(move || peer_owner(local, peer))
            .await
            .map_err(|e| OwnerError::Io("the socket table", std::io::Error::other(e)))??;
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
/// whose remote end is `peer`, from the kernel's socket tables.
///
/// # Errors
/// [`OwnerError`] whenever the owner is not known for sure.
#[cfg(target_os = "linux")]
pub fn peer_owner(local: SocketAddr, peer: SocketAddr) -> Result<u32, OwnerError> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Some(text) = read_table(table)? else {
            continue;
        };
        // The peer's socket sees the connection the other way round.
        found.extend(owners(&text, peer, local));
    }
    one_owner(found)
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

/// Reads one socket table, at most [`PROC_NET_CAP`] bytes; `None` when it does not exist
/// (`/proc/net/tcp6` without IPv6).
#[cfg(target_os = "linux")]
fn read_table(path: &'static str) -> Result<Option<String>, OwnerError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(OwnerError::Io(path, e)),
    };
    let mut bytes = Vec::new();
    file.take(PROC_NET_CAP + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| OwnerError::Io(path, e))?;
    if bytes.len() as u64 > PROC_NET_CAP {
        return Err(OwnerError::TooLarge(path));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The single owner among the matches, or why there is none.
fn one_owner(mut uids: Vec<u32>) -> Result<u32, OwnerError> {
    uids.sort_unstable();
    uids.dedup();
    match uids[..] {
        [uid] => Ok(uid),
        [] => Err(OwnerError::NotFound),
        _ => Err(OwnerError::Ambiguous),
    }
}

/// TCP state `TIME_WAIT` in the tables: such entries are not sockets any more and always show
/// uid 0, so they never say who owned the connection.
const TCP_TIME_WAIT: u8 = 0x06;

/// The owners of the live sockets in `table` (the text of `/proc/net/tcp` or `tcp6`) whose
/// local address is `local` and remote address is `remote`. IPv4-mapped IPv6 addresses match
/// their IPv4 form. Lines that do not parse are skipped.
pub fn owners(table: &str, local: SocketAddr, remote: SocketAddr) -> Vec<u32> {
    let same = |a: SocketAddr, b: SocketAddr| {
        a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
    };
    table
        .lines()
        .filter_map(parse_line)
        .filter(|e| e.state != TCP_TIME_WAIT && same(e.local, local) && same(e.remote, remote))
        .map(|e| e.uid)
        .collect()
}

/// One socket of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketEntry {
    /// The socket's own address.
    pub local: SocketAddr,
    /// The address it is connected to.
    pub remote: SocketAddr,
    /// The TCP state number (`01` established, `06` time-wait, `0A` listen, …).
    pub state: u8,
    /// The owner's user id.
    pub uid: u32,
}

/// Parses one line of `/proc/net/tcp` or `/proc/net/tcp6`; `None` for the header and for
/// anything malformed.
///
/// Addresses are hex, each 32-bit word in the machine's byte order; ports are hex in the
/// usual order.
pub fn parse_line(line: &str) -> Option<SocketEntry> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next().filter(|s| s.ends_with(':'))?;
    let local = parse_addr(fields.next()?)?;
    let remote = parse_addr(fields.next()?)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    // tx_queue:rx_queue, tr:tm->when, retrnsmt, then the uid.
    let uid = fields.nth(3)?.parse().ok()?;
    Some(SocketEntry {
        local,
        remote,
        state,
        uid,
    })
}

fn parse_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(ip.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as captured from /proc/net/tcp and /proc/net/tcp6 on x86-64 (each address word
    // little-endian), with ports and uids edited: a listener on 127.0.0.1:35317 with its
    // accepted socket (ours, uid 0) and the connecting one (uid 1001); the same on [::1]:41245
    // (uid 1002); an IPv6 socket connected to ::ffff:127.0.0.1:35317 (uid 1003).
    const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:89F5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 52117 1 0000000000000000 100 0 0 10 0
   1: 0100007F:89F5 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 52120 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D2A4 0100007F:89F5 01 00000000:00000000 00:00000000 00000000  1001        0 52119 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:D2A6 0100007F:89F5 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
";
    const TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:A11D 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 52200 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:A11D 00000000000000000000000001000000:C350 01 00000000:00000000 00:00000000 00000000     0        0 52205 1 0000000000000000 20 4 30 10 -1
   2: 00000000000000000000000001000000:C350 00000000000000000000000001000000:A11D 01 00000000:00000000 00:00000000 00000000  1002        0 52204 1 0000000000000000 20 4 30 10 -1
   3: 0000000000000000FFFF00000100007F:D2B0 0000000000000000FFFF00000100007F:89F5 01 00000000:00000000 00:00000000 00000000  1003        0 52210 1 0000000000000000 20 4 30 10 -1
";

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn parses_ipv4_and_ipv6_lines() {
        let mut v4 = TCP.lines().skip(1).filter_map(parse_line);
        let listen = v4.next().unwrap();
        assert_eq!(listen.local, a("127.0.0.1:35317"));
        assert_eq!(listen.remote, a("0.0.0.0:0"));
        assert_eq!((listen.state, listen.uid), (0x0A, 0));
        let peer = v4.nth(1).unwrap();
        assert_eq!(
            peer,
            SocketEntry {
                local: a("127.0.0.1:53924"),
                remote: a("127.0.0.1:35317"),
                state: 1,
                uid: 1001,
            }
        );
        let v6: Vec<_> = TCP6.lines().filter_map(parse_line).collect();
        assert_eq!(v6.len(), 4, "the header is skipped");
        assert_eq!(v6[2].local, a("[::1]:50000"));
        assert_eq!(v6[2].remote, a("[::1]:41245"));
        assert_eq!(v6[3].local, a("[::ffff:127.0.0.1]:53936"));
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn finds_the_owner_of_the_other_end_not_our_own_socket() {
        // Our side: local 127.0.0.1:35317, peer 127.0.0.1:53924. The entry we want is the
        // peer's (local = peer), owned by 1001, not ours (owned by 0).
        let (ours, peer) = (a("127.0.0.1:35317"), a("127.0.0.1:53924"));
        assert_eq!(owners(TCP, peer, ours), vec![1001]);
        assert_eq!(owners(TCP6, peer, ours), Vec::<u32>::new());
        assert_eq!(owners(TCP6, a("[::1]:50000"), a("[::1]:41245")), vec![1002]);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv4_mapped_addresses_match_their_ipv4_form() {
        // A listener on [::] sees an IPv4 peer as ::ffff:a.b.c.d; an IPv6 socket that
        // connected to ::ffff:127.0.0.1 is listed in tcp6 with mapped addresses.
        let ours = a("[::ffff:127.0.0.1]:35317");
        assert_eq!(owners(TCP, a("[::ffff:127.0.0.1]:53924"), ours), vec![1001]);
        assert_eq!(
            owners(TCP6, a("127.0.0.1:53936"), a("127.0.0.1:35317")),
            vec![1003]
        );
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn time_wait_entries_say_nothing_about_the_owner() {
        // TIME_WAIT shows uid 0 whoever owned it: a client running as root must not take it
        // for its own.
        assert_eq!(
            owners(TCP, a("127.0.0.1:53926"), a("127.0.0.1:35317")),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        for line in [
            "",
            "garbage",
            "   0: 0100007F:89F5",
            "   0: 0100007F 0100007F:D2A4 01 0:0 0:0 0 1001",
            "   0: 0100007:89F5 0100007F:D2A4 01 0:0 0:0 0 1001",
            "   0: 0100007F:89F5 0100007F:D2A4 01 0:0 0:0 0 -1",
            "   0: 0100007F:89F5 0100007F:D2A4 01 0:0 0:0 0 99999999999",
            "   0: 0100007F:GGGG 0100007F:D2A4 01 0:0 0:0 0 1001",
            "   0: 0000000000000000FFFF00000100007Z:D2B0 0100007F:D2A4 01 0:0 0:0 0 1",
            "   0: 0000000é00000000000000000000000:D2B0 0100007F:D2A4 01 0:0 0:0 0 1",
            "   0 0100007F:89F5 0100007F:D2A4 01 0:0 0:0 0 1001",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
        assert!(parse_line("   0: 0100007F:89F5 0100007F:D2A4 01 0:0 0:0 0 1001").is_some());
    }

    #[test]
    fn one_owner_fails_closed() {
        assert_eq!(one_owner(vec![1000]).unwrap(), 1000);
        assert_eq!(one_owner(vec![1000, 1000]).unwrap(), 1000);
        assert!(matches!(one_owner(vec![]), Err(OwnerError::NotFound)));
        assert!(matches!(
            one_owner(vec![1000, 0]),
            Err(OwnerError::Ambiguous)
        ));
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
            LocalAccess::SameUser.admit(&accepted).await.unwrap();
            assert_eq!(
                peer_owner(accepted.local_addr().unwrap(), client.local_addr().unwrap()).unwrap(),
                own_uid()
            );
        }
    }
}
