//! Which node is an agent's home: rendezvous (highest-random-weight) hashing of its computer
//! ID over the live nodes. Every node computes the same answer from the same list of names,
//! with no coordinator; when a node joins or leaves, only the agents whose best node changed
//! move, about 1/N of them.

use telework_protocol::ComputerId;

/// A node's weight for `id`: the first 8 bytes of SHA-256(name, 0, id). SHA-256 because every
/// node, of every version, must compute the same weights.
fn weight(node: &str, id: &ComputerId) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(node.as_bytes());
    ctx.update(&[0]);
    ctx.update(id.as_str().as_bytes());
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// `nodes` (names) in `id`'s order of preference: its home first, then where it goes when
/// the home is gone. Ties (a hash collision) break by name, so the order is total.
pub fn ranked<'a>(id: &ComputerId, nodes: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut weighted: Vec<(u64, &str)> = nodes.into_iter().map(|n| (weight(n, id), n)).collect();
    weighted.sort_unstable_by(|a, b| b.cmp(a));
    weighted.dedup_by(|a, b| a.1 == b.1);
    weighted.into_iter().map(|(_, n)| n).collect()
}

/// `id`'s home among `nodes`, skipping those in `avoid`.
pub fn home<'a>(
    id: &ComputerId,
    nodes: impl IntoIterator<Item = &'a str>,
    avoid: &[String],
) -> Option<&'a str> {
    nodes
        .into_iter()
        .filter(|n| !avoid.iter().any(|a| a == n))
        .max_by_key(|n| (weight(n, id), *n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<ComputerId> {
        (0..n)
            .map(|i| format!("pc-{i:05}").parse().unwrap())
            .collect()
    }

    #[test]
    fn home_is_the_first_of_the_ranking() {
        let nodes = ["a", "b", "c"];
        for id in ids(200) {
            let ranked = ranked(&id, nodes);
            assert_eq!(ranked.len(), 3);
            assert_eq!(home(&id, nodes, &[]), Some(ranked[0]));
            assert_eq!(home(&id, nodes, &[ranked[0].to_owned()]), Some(ranked[1]));
        }
    }

    #[test]
    fn the_order_of_the_node_list_does_not_matter() {
        for id in ids(100) {
            assert_eq!(
                home(&id, ["a", "b", "c"], &[]),
                home(&id, ["c", "a", "b"], &[])
            );
        }
    }

    #[test]
    fn ten_thousand_agents_spread_within_five_percent_of_even() {
        let nodes = ["relay-1", "relay-2", "relay-3"];
        let mut counts = [0usize; 3];
        for id in ids(10_000) {
            let h = home(&id, nodes, &[]).unwrap();
            counts[nodes.iter().position(|n| *n == h).unwrap()] += 1;
        }
        for c in counts {
            assert!((3_167..=3_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn a_joining_node_takes_about_a_quarter_and_nobody_else_moves() {
        let before = ["relay-1", "relay-2", "relay-3"];
        let after = ["relay-1", "relay-2", "relay-3", "relay-4"];
        let (mut to_new, mut elsewhere) = (0, 0);
        for id in ids(10_000) {
            let (old, new) = (home(&id, before, &[]), home(&id, after, &[]));
            if old != new {
                if new == Some("relay-4") {
                    to_new += 1;
                } else {
                    elsewhere += 1;
                }
            }
        }
        assert_eq!(elsewhere, 0);
        assert!((2_250..=2_750).contains(&to_new), "{to_new}");
    }

    #[test]
    fn a_leaving_node_sends_only_its_own_agents_away() {
        let before = ["relay-1", "relay-2", "relay-3"];
        let after = ["relay-1", "relay-3"];
        for id in ids(3_000) {
            let old = home(&id, before, &[]).unwrap();
            if old != "relay-2" {
                assert_eq!(home(&id, after, &[]), Some(old));
            }
        }
    }

    #[test]
    fn no_nodes_or_all_avoided_is_none() {
        let id: ComputerId = "pc-1".parse().unwrap();
        assert_eq!(home(&id, [], &[]), None);
        assert_eq!(home(&id, ["a"], &["a".to_owned()]), None);
    }
}
