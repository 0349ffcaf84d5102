//! Relay nodes this agent could not reach lately: the node it was on when the connection
//! broke, or one it was sent to and could not dial. Each hello names them, so that the relay
//! places the agent elsewhere instead of sending it back to a dead node; a name is forgotten
//! after [`AVOID_FOR`], and the node can have its agents again.

use std::time::{Duration, Instant};

use telework_protocol::messages::MAX_UNREACHABLE;

/// How long a node is avoided after it failed.
pub const AVOID_FOR: Duration = Duration::from_secs(60);

/// The nodes avoided now, newest last, at most [`MAX_UNREACHABLE`].
#[derive(Debug, Default)]
pub struct AvoidedNodes {
    nodes: Vec<(String, Instant)>,
}

impl AvoidedNodes {
    /// Avoids `node` from `now` on.
    pub fn note(&mut self, node: String, now: Instant) {
        self.nodes.retain(|(n, _)| *n != node);
        self.nodes.push((node, now));
        if self.nodes.len() > MAX_UNREACHABLE {
            self.nodes.remove(0);
        }
    }

    /// The names still avoided at `now`.
    pub fn current(&mut self, now: Instant) -> Vec<String> {
        self.nodes
            .retain(|(_, since)| now.saturating_duration_since(*since) < AVOID_FOR);
        self.nodes.iter().map(|(n, _)| n.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_for_a_while_once_each_and_bounded() {
        let start = Instant::now();
        let mut avoided = AvoidedNodes::default();
        avoided.note("relay-2".into(), start);
        avoided.note("relay-2".into(), start);
        assert_eq!(avoided.current(start), ["relay-2"]);
        for i in 0..20 {
            avoided.note(format!("n{i}"), start + Duration::from_secs(1));
        }
        let now = avoided.current(start + Duration::from_secs(2));
        assert_eq!(now.len(), MAX_UNREACHABLE);
        assert_eq!(now.last().map(String::as_str), Some("n19"));
        assert!(avoided
            .current(start + AVOID_FOR + Duration::from_secs(2))
            .is_empty());
    }
}
