//! Wake-on-LAN for neighbours: IT staff name, on an always-on office PC (the *waker*), the
//! sleeping PCs it may wake, with their MAC address and LAN broadcast address
//! (`telework-agent wake add`). The agent tells the relay only the computer IDs; when the
//! relay passes on a wake request, the agent sends the magic packet, but only to a PC on its
//! list, only to the address configured for it, and at most one burst per PC per
//! [`SELF_LIMIT`], whatever the relay asks.
//!
//! - [`packet`]: MAC addresses and the magic packet (pure).
//! - [`send`]: the UDP broadcast (the only IO).
//! - this file: the list on disk (`wake.toml`) and the agent's own rate limit.

pub mod packet;
pub mod send;
pub(crate) mod serve;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use telework_protocol::messages::MAX_WAKE_TARGETS;
use telework_protocol::ComputerId;

use crate::state::{DataDir, StateError};
use packet::Mac;

/// The list's file in the data dir.
pub const WAKE_FILE: &str = "wake.toml";

/// The broadcast address used when IT staff name none: the local network of the interface
/// the system routes it through.
pub const DEFAULT_BROADCAST: Ipv4Addr = Ipv4Addr::BROADCAST;

/// The UDP port used when IT staff name none (the "discard" port, which most cards and
/// tools use).
pub const DEFAULT_PORT: u16 = 9;

/// The agent sends at most one burst per PC in this time, however often the relay asks.
pub const SELF_LIMIT: Duration = Duration::from_secs(10);

/// How often the running agent looks at the list for changes (and tells the relay).
pub const LIST_CHECK: Duration = Duration::from_secs(2);

/// One PC this agent may wake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WakeTarget {
    /// Its computer ID (what employees type).
    pub id: ComputerId,
    /// Its network card's address.
    pub mac: Mac,
    /// Where the magic packet goes: the office LAN's broadcast address.
    pub broadcast: Ipv4Addr,
    /// The UDP port (9 unless the card wants another).
    pub port: u16,
}

/// Every PC this agent may wake.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WakeList {
    /// The PCs, one entry per computer ID.
    #[serde(default, rename = "target")]
    pub targets: Vec<WakeTarget>,
}

/// Why a change to the list was refused.
#[derive(Debug, thiserror::Error)]
pub enum WakeListError {
    /// The list is full.
    #[error("this PC already wakes {MAX_WAKE_TARGETS} PCs, the most it can; remove one first")]
    Full,
    /// Port 0 cannot be sent to.
    #[error("port 0 cannot be used; the usual port is 9 (or 7)")]
    BadPort,
    /// The address is not one a magic packet can go to.
    #[error(
        "{0} cannot be used as the broadcast address (give the office LAN's, e.g. 192.168.1.255)"
    )]
    BadBroadcast(Ipv4Addr),
    /// No such entry.
    #[error("{0} is not on this PC's wake list (see 'telework-agent wake list')")]
    NotFound(ComputerId),
    /// A PC cannot wake itself: it is awake when it could.
    #[error("{0} is this PC's own computer ID: an office PC cannot wake itself")]
    Itself(ComputerId),
    /// Reading or writing the file.
    #[error(transparent)]
    State(#[from] StateError),
}

impl WakeList {
    /// The entry for `id`, if any.
    pub fn find(&self, id: &ComputerId) -> Option<&WakeTarget> {
        self.targets.iter().find(|t| t.id == *id)
    }

    /// The computer IDs, as the relay is told them (at most [`MAX_WAKE_TARGETS`]).
    pub fn ids(&self) -> Vec<ComputerId> {
        self.targets
            .iter()
            .take(MAX_WAKE_TARGETS)
            .map(|t| t.id.clone())
            .collect()
    }

    /// Adds `target`, or replaces the entry with its ID. Returns whether it replaced one.
    ///
    /// # Errors
    /// [`WakeListError`] for port 0, an address no packet can go to, or a full list.
    pub fn add(&mut self, target: WakeTarget) -> Result<bool, WakeListError> {
        if target.port == 0 {
            return Err(WakeListError::BadPort);
        }
        let b = target.broadcast;
        if b.is_unspecified() || b.is_loopback() || b.is_multicast() {
            return Err(WakeListError::BadBroadcast(b));
        }
        if let Some(old) = self.targets.iter_mut().find(|t| t.id == target.id) {
            *old = target;
            return Ok(true);
        }
        if self.targets.len() >= MAX_WAKE_TARGETS {
            return Err(WakeListError::Full);
        }
        self.targets.push(target);
        Ok(false)
    }

    /// Removes the entry for `id`.
    ///
    /// # Errors
    /// [`WakeListError::NotFound`] when there is none.
    pub fn remove(&mut self, id: &ComputerId) -> Result<WakeTarget, WakeListError> {
        let at = self
            .targets
            .iter()
            .position(|t| t.id == *id)
            .ok_or_else(|| WakeListError::NotFound(id.clone()))?;
        Ok(self.targets.remove(at))
    }
}

impl DataDir {
    /// The wake list (empty when the file is missing).
    ///
    /// # Errors
    /// If the file is damaged (then the agent wakes nothing and advertises nothing).
    pub fn wake_list(&self) -> Result<WakeList, StateError> {
        let list: WakeList = self.read_toml(WAKE_FILE)?;
        if list.targets.len() > MAX_WAKE_TARGETS {
            return Err(StateError::Damaged {
                path: self.path(WAKE_FILE),
                detail: format!("more than {MAX_WAKE_TARGETS} entries"),
            });
        }
        Ok(list)
    }

    /// Saves the wake list; a running agent picks it up within [`LIST_CHECK`].
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn save_wake_list(&self, list: &WakeList) -> Result<(), StateError> {
        self.write_toml(WAKE_FILE, list)
    }
}

/// The agent's own limit: one burst per PC per [`SELF_LIMIT`]. Pure: the clock is passed in.
/// Only IDs on the list reach it, so it holds at most [`MAX_WAKE_TARGETS`] entries.
#[derive(Debug, Default)]
pub struct SelfLimit {
    last: HashMap<ComputerId, Instant>,
}

impl SelfLimit {
    /// Whether a burst for `id` may go now (and if so, counts it); otherwise how long until
    /// one may.
    ///
    /// # Errors
    /// The wait left, when a burst for `id` went less than [`SELF_LIMIT`] ago.
    pub fn take(&mut self, id: &ComputerId, now: Instant) -> Result<(), Duration> {
        self.last
            .retain(|_, at| now.saturating_duration_since(*at) < SELF_LIMIT);
        if let Some(at) = self.last.get(id) {
            return Err(SELF_LIMIT.saturating_sub(now.saturating_duration_since(*at)));
        }
        self.last.insert(id.clone(), now);
        Ok(())
    }
}

/// What the agent does with a relay's wake request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send a burst to this PC's configured address.
    Send(WakeTarget),
    /// The PC is not on this agent's list: ignore (whatever the relay says).
    NotListed,
    /// A burst for this PC went out less than [`SELF_LIMIT`] ago: ignore; the wait left.
    TooSoon(Duration),
}

/// Decides a wake request for `id`: only PCs on `list`, at most one burst per
/// [`SELF_LIMIT`] (counted in `limit`). Pure: the clock is passed in.
pub fn decide(list: &WakeList, limit: &mut SelfLimit, id: &ComputerId, now: Instant) -> Decision {
    let Some(target) = list.find(id) else {
        return Decision::NotListed;
    };
    match limit.take(id, now) {
        Ok(()) => Decision::Send(target.clone()),
        Err(left) => Decision::TooSoon(left),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: &str) -> WakeTarget {
        WakeTarget {
            id: id.parse().unwrap(),
            mac: "AA:BB:CC:DD:EE:F0".parse().unwrap(),
            broadcast: Ipv4Addr::new(192, 168, 1, 255),
            port: 9,
        }
    }

    #[test]
    fn the_self_limit_allows_one_burst_per_pc_per_window() {
        let mut limit = SelfLimit::default();
        let (a, b) = ("pc-a".parse().unwrap(), "pc-b".parse().unwrap());
        let t0 = Instant::now();
        assert_eq!(limit.take(&a, t0), Ok(()));
        assert_eq!(limit.take(&b, t0), Ok(()), "another PC has its own window");
        let left = limit.take(&a, t0 + Duration::from_secs(3)).unwrap_err();
        assert_eq!(left, Duration::from_secs(7));
        assert!(limit
            .take(&a, t0 + SELF_LIMIT - Duration::from_millis(1))
            .is_err());
        assert_eq!(limit.take(&a, t0 + SELF_LIMIT), Ok(()));
        assert!(limit.last.len() <= 2);
    }

    #[test]
    fn only_listed_pcs_are_woken_and_at_most_once_per_window() {
        let mut list = WakeList::default();
        list.add(target("pc-a")).unwrap();
        let mut limit = SelfLimit::default();
        let t0 = Instant::now();
        let unknown = "pc-stranger".parse().unwrap();
        assert_eq!(decide(&list, &mut limit, &unknown, t0), Decision::NotListed);
        let a = "pc-a".parse().unwrap();
        assert_eq!(
            decide(&list, &mut limit, &a, t0),
            Decision::Send(target("pc-a"))
        );
        assert_eq!(
            decide(&list, &mut limit, &a, t0 + Duration::from_secs(1)),
            Decision::TooSoon(Duration::from_secs(9))
        );
        assert_eq!(
            decide(&list, &mut limit, &unknown, t0 + SELF_LIMIT),
            Decision::NotListed,
            "an unlisted PC never reaches the limiter"
        );
        assert!(limit.last.len() <= 1);
        assert!(matches!(
            decide(&list, &mut limit, &a, t0 + SELF_LIMIT),
            Decision::Send(_)
        ));
    }

    #[test]
    fn the_list_round_trips_and_refuses_bad_entries() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        assert_eq!(data.wake_list().unwrap(), WakeList::default());
        let mut list = WakeList::default();
        assert!(!list.add(target("pc-a")).unwrap());
        let mut moved = target("pc-a");
        moved.port = 7;
        assert!(list.add(moved.clone()).unwrap(), "same ID replaces");
        data.save_wake_list(&list).unwrap();
        assert_eq!(data.wake_list().unwrap().find(&moved.id), Some(&moved));
        for bad in [
            WakeTarget {
                port: 0,
                ..target("pc-b")
            },
            WakeTarget {
                broadcast: Ipv4Addr::LOCALHOST,
                ..target("pc-b")
            },
            WakeTarget {
                broadcast: Ipv4Addr::UNSPECIFIED,
                ..target("pc-b")
            },
            WakeTarget {
                broadcast: Ipv4Addr::new(224, 0, 0, 1),
                ..target("pc-b")
            },
        ] {
            assert!(list.add(bad).is_err());
        }
        for i in 1..MAX_WAKE_TARGETS {
            list.add(target(&format!("pc-{i}"))).unwrap();
        }
        assert!(matches!(list.add(target("pc-x")), Err(WakeListError::Full)));
        assert_eq!(list.ids().len(), MAX_WAKE_TARGETS);
        assert!(list.remove(&"pc-1".parse().unwrap()).is_ok());
        assert!(matches!(
            list.remove(&"pc-1".parse().unwrap()),
            Err(WakeListError::NotFound(_))
        ));
    }

    #[test]
    fn a_damaged_list_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        std::fs::write(
            data.path(WAKE_FILE),
            "[[target]]\nid = \"pc-a\"\nmac = \"AA:BB\"\nbroadcast = \"192.168.1.255\"\nport = 9\n",
        )
        .unwrap();
        let e = data.wake_list().unwrap_err().to_string();
        assert!(e.contains("wake.toml") && e.contains("MAC"), "{e}");
    }
}
