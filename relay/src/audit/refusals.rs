//! Refused lookups, summarised per address per minute: an address probing for computer IDs
//! makes one audit row a minute, not one per probe, and a flood from many addresses cannot
//! grow the table of counts without bound.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::Serialize;

use super::AuditEvent;

/// Most (address, minute) pairs counted separately; refusals from further addresses in the
/// same minute are summed in one row with no address.
pub const MAX_ADDRESSES: usize = 4096;

/// Why a client's lookup of a computer ID was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The machine is registered but its agent is not connected.
    Offline,
    /// No machine is registered under the ID.
    UnknownId,
    /// The address (or connection) ran out of lookups or failures.
    RateLimited,
}

/// Refusals counted by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RefusalCounts {
    /// [`Refusal::Offline`].
    pub offline: u64,
    /// [`Refusal::UnknownId`].
    pub unknown_id: u64,
    /// [`Refusal::RateLimited`].
    pub rate_limited: u64,
}

impl RefusalCounts {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.offline
            .saturating_add(self.unknown_id)
            .saturating_add(self.rate_limited)
    }

    fn add(&mut self, why: Refusal) {
        let n = match why {
            Refusal::Offline => &mut self.offline,
            Refusal::UnknownId => &mut self.unknown_id,
            Refusal::RateLimited => &mut self.rate_limited,
        };
        *n = n.saturating_add(1);
    }
}

/// Counts of refusals by (address, minute), waiting for their minute to end.
#[derive(Debug, Default)]
pub struct RefusalSummary {
    by_address: HashMap<(IpAddr, i64), RefusalCounts>,
    /// Refusals from addresses that found the table full, by minute.
    overflow: BTreeMap<i64, RefusalCounts>,
}

/// The start (Unix seconds) of the minute `unix` is in.
fn minute_of(unix: i64) -> i64 {
    unix - unix.rem_euclid(60)
}

impl RefusalSummary {
    /// Counts one refusal of `ip` at `now` (Unix seconds).
    pub fn add(&mut self, ip: IpAddr, why: Refusal, now: i64) {
        let key = (ip, minute_of(now));
        if let Some(counts) = self.by_address.get_mut(&key) {
            counts.add(why);
        } else if self.by_address.len() < MAX_ADDRESSES {
            self.by_address.entry(key).or_default().add(why);
        } else {
            self.overflow.entry(key.1).or_default().add(why);
        }
    }

    /// Takes the summaries of every minute that has ended by `now` (all of them with
    /// `i64::MAX`, at shutdown), oldest first.
    pub fn take_ended(&mut self, now: i64) -> Vec<AuditEvent> {
        let ended = |minute: i64| minute.saturating_add(60) <= now;
        let mut out = Vec::new();
        let keys: Vec<(IpAddr, i64)> = self
            .by_address
            .keys()
            .filter(|(_, minute)| ended(*minute))
            .copied()
            .collect();
        for key in keys {
            if let Some(kinds) = self.by_address.remove(&key) {
                out.push(event(Some(key.0), key.1, kinds));
            }
        }
        let minutes: Vec<i64> = self
            .overflow
            .keys()
            .copied()
            .filter(|m| ended(*m))
            .collect();
        for minute in minutes {
            if let Some(kinds) = self.overflow.remove(&minute) {
                out.push(event(None, minute, kinds));
            }
        }
        out.sort_by_key(|e| match e {
            AuditEvent::LookupsRefused { minute_start, .. } => *minute_start,
            _ => 0,
        });
        out
    }

    /// How many (address, minute) pairs are counted now.
    pub fn len(&self) -> usize {
        self.by_address.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty() && self.overflow.is_empty()
    }
}

fn event(address: Option<IpAddr>, minute_start: i64, kinds: RefusalCounts) -> AuditEvent {
    AuditEvent::LookupsRefused {
        address,
        minute_start,
        count: kinds.total(),
        kinds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_040; // a minute's start

    #[test]
    fn ten_thousand_refusals_in_a_minute_make_one_row() {
        let mut summary = RefusalSummary::default();
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        for i in 0..10_000 {
            let why = if i % 2 == 0 {
                Refusal::UnknownId
            } else {
                Refusal::RateLimited
            };
            summary.add(ip, why, T0 + (i % 60));
        }
        assert!(summary.take_ended(T0 + 59).is_empty(), "minute not over");
        let rows = summary.take_ended(T0 + 60);
        assert_eq!(rows.len(), 1);
        let AuditEvent::LookupsRefused {
            address,
            minute_start,
            count,
            kinds,
        } = &rows[0]
        else {
            panic!("{rows:?}")
        };
        assert_eq!(*address, Some(ip));
        assert_eq!(*minute_start, T0);
        assert_eq!(*count, 10_000);
        assert_eq!(kinds.unknown_id, 5_000);
        assert_eq!(kinds.rate_limited, 5_000);
        assert!(summary.is_empty());
    }

    #[test]
    fn each_address_and_minute_is_its_own_row() {
        let mut summary = RefusalSummary::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        summary.add(a, Refusal::Offline, T0);
        summary.add(b, Refusal::Offline, T0 + 1);
        summary.add(a, Refusal::Offline, T0 + 61);
        let rows = summary.take_ended(T0 + 60);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(summary.len(), 1, "the next minute waits");
        assert_eq!(summary.take_ended(i64::MAX).len(), 1);
    }

    #[test]
    fn a_flood_from_many_addresses_is_capped_and_summed() {
        let mut summary = RefusalSummary::default();
        for i in 0..(MAX_ADDRESSES as u32 + 1000) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            summary.add(ip, Refusal::UnknownId, T0);
        }
        assert_eq!(summary.len(), MAX_ADDRESSES);
        let rows = summary.take_ended(T0 + 60);
        assert_eq!(rows.len(), MAX_ADDRESSES + 1);
        let overflow: Vec<_> = rows
            .iter()
            .filter(|e| matches!(e, AuditEvent::LookupsRefused { address: None, .. }))
            .collect();
        assert!(
            matches!(
                overflow[..],
                [AuditEvent::LookupsRefused { count: 1000, .. }]
            ),
            "{overflow:?}"
        );
    }
}
