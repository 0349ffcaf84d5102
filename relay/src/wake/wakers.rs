//! Which online agents can wake which office PCs, as the agents said
//! ([`telework_protocol::messages::AgentToRelay::CanWake`]). Only computer IDs: the MAC and
//! LAN addresses stay on the agents.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use telework_protocol::messages::MAX_WAKE_TARGETS;
use telework_protocol::ComputerId;

#[derive(Default)]
struct Inner {
    /// Waker → (its connection, the PCs it can wake).
    by_waker: HashMap<ComputerId, (u64, Vec<ComputerId>)>,
    /// Sleeping PC → the wakers that can wake it.
    by_target: HashMap<ComputerId, HashSet<ComputerId>>,
}

/// The index; each online waker holds at most [`MAX_WAKE_TARGETS`] entries.
#[derive(Default)]
pub struct Wakers {
    inner: Mutex<Inner>,
}

impl Wakers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The agent `waker`, online through connection `conn_id`, can wake `targets` (replacing
    /// what it said before). Beyond [`MAX_WAKE_TARGETS`] entries are dropped, and the waker's
    /// own ID (a PC cannot wake itself).
    pub fn set(&self, waker: &ComputerId, conn_id: u64, mut targets: Vec<ComputerId>) {
        targets.truncate(MAX_WAKE_TARGETS);
        targets.retain(|t| t != waker);
        targets.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        targets.dedup();
        let mut inner = self.lock();
        unlink(&mut inner, waker);
        for t in &targets {
            inner
                .by_target
                .entry(t.clone())
                .or_default()
                .insert(waker.clone());
        }
        inner.by_waker.insert(waker.clone(), (conn_id, targets));
    }

    /// The agent `waker` went offline from `conn_id` (a newer connection's list stays).
    pub fn remove(&self, waker: &ComputerId, conn_id: u64) {
        let mut inner = self.lock();
        if inner
            .by_waker
            .get(waker)
            .is_some_and(|(c, _)| *c == conn_id)
        {
            unlink(&mut inner, waker);
        }
    }

    /// The online agents that can wake `target`, ordered by ID.
    pub fn of(&self, target: &ComputerId) -> Vec<ComputerId> {
        let mut out: Vec<ComputerId> = self
            .lock()
            .by_target
            .get(target)
            .map(|w| w.iter().cloned().collect())
            .unwrap_or_default();
        out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        out
    }
}

fn unlink(inner: &mut Inner, waker: &ComputerId) {
    let Some((_, old)) = inner.by_waker.remove(waker) else {
        return;
    };
    for t in old {
        if let Some(set) = inner.by_target.get_mut(&t) {
            set.remove(waker);
            if set.is_empty() {
                inner.by_target.remove(&t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ComputerId {
        s.parse().unwrap()
    }

    #[test]
    fn wakers_are_indexed_replaced_and_removed_per_connection() {
        let w = Wakers::default();
        w.set(&id("ws-1"), 1, vec![id("pc-a"), id("pc-b"), id("ws-1")]);
        w.set(&id("ws-2"), 2, vec![id("pc-a")]);
        assert_eq!(w.of(&id("pc-a")), vec![id("ws-1"), id("ws-2")]);
        assert_eq!(w.of(&id("ws-1")), Vec::<ComputerId>::new(), "not itself");
        w.set(&id("ws-1"), 1, vec![id("pc-b")]);
        assert_eq!(
            w.of(&id("pc-a")),
            vec![id("ws-2")],
            "a new list replaces the old"
        );
        w.set(&id("ws-2"), 3, vec![id("pc-a")]);
        w.remove(&id("ws-2"), 2);
        assert_eq!(
            w.of(&id("pc-a")),
            vec![id("ws-2")],
            "the old connection's end"
        );
        w.remove(&id("ws-2"), 3);
        assert!(w.of(&id("pc-a")).is_empty());
        assert!(
            !w.lock().by_target.contains_key(&id("pc-a")),
            "no empty entries left"
        );
    }

    #[test]
    fn a_list_is_bounded() {
        let w = Wakers::default();
        let many: Vec<ComputerId> = (0..1000).map(|i| id(&format!("pc-{i}"))).collect();
        w.set(&id("ws-1"), 1, many);
        assert_eq!(w.lock().by_target.len(), MAX_WAKE_TARGETS);
    }
}
