//! Sharing the shards out among the live instances: each instance decides for itself,
//! from the same view of the lease table, which free shards to take and which of its own
//! to hand over, so no coordinator is needed and a dead instance's shards are taken by
//! the least loaded survivors once its leases expire.
//!
//! The rule: the target is ⌈shards / live instances⌉. An instance takes free shards
//! while it is below the target and among the least loaded (so a newcomer takes before
//! the others); it hands one over when it is above the target, or holds two more than
//! the least loaded instance, and nothing is free (a free shard goes to someone below
//! the target first). Counts therefore end within one of each other, and two
//! instances racing for a free shard are sorted out by the lease itself (one wins).

use std::collections::BTreeMap;

use super::Holder;

/// What one instance sees of the cluster.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Each shard's lease holder (`None`: never held).
    pub holders: Vec<Option<Holder>>,
    /// The live instances, by name.
    pub members: Vec<String>,
}

/// What an instance should do about its shards now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moves {
    /// Free shards to try to take (in this order).
    pub take: Vec<u32>,
    /// One of its own to hand over.
    pub give_up: Option<u32>,
}

/// The moves for instance `me` given `view`.
pub fn plan(me: &str, view: &View) -> Moves {
    let shards = view.holders.len() as u32;
    let mut count: BTreeMap<&str, u32> = view.members.iter().map(|m| (m.as_str(), 0)).collect();
    count.entry(me).or_insert(0);
    let mut free = Vec::new();
    let mut mine = Vec::new();
    for (shard, h) in view.holders.iter().enumerate() {
        match h.as_ref().filter(|h| h.live) {
            Some(h) => {
                *count.entry(h.owner.as_str()).or_insert(0) += 1;
                if h.owner == me {
                    mine.push(shard as u32);
                }
            }
            None => free.push(shard as u32),
        }
    }
    let target = shards.div_ceil(count.len() as u32);
    let least = count.values().copied().min().unwrap_or(0);
    let held = mine.len() as u32;
    let mut moves = Moves::default();
    if !free.is_empty() {
        if held < target && held <= least {
            // Start where this instance's name points, so racing instances try different
            // shards first.
            let start = name_hash(me) as usize % free.len();
            free.rotate_left(start);
            free.truncate((target - held) as usize);
            moves.take = free;
        }
    } else if held > target || held >= least + 2 {
        moves.give_up = mine.last().copied();
    }
    moves
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: only spreads the starting point; nothing depends on its value.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(owner: &str, live: bool) -> Option<Holder> {
        Some(Holder {
            owner: owner.into(),
            address: format!("http://{owner}"),
            epoch: 1,
            live,
        })
    }

    fn view(holders: Vec<Option<Holder>>, members: &[&str]) -> View {
        View {
            holders,
            members: members.iter().map(|m| m.to_string()).collect(),
        }
    }

    /// Runs every instance's plan in turn (taking and handing over at once) until nobody
    /// moves; the final counts per instance.
    fn settle(shards: usize, members: &[&str]) -> BTreeMap<String, u32> {
        let mut holders: Vec<Option<Holder>> = vec![None; shards];
        for _round in 0..100 {
            let mut moved = false;
            for me in members {
                let m = plan(me, &view(holders.clone(), members));
                for s in m.take {
                    if holders[s as usize].as_ref().is_none_or(|h| !h.live) {
                        holders[s as usize] = holder(me, true);
                        moved = true;
                    }
                }
                if let Some(s) = m.give_up {
                    holders[s as usize] = holder(me, false);
                    moved = true;
                }
            }
            if !moved {
                let mut out = BTreeMap::new();
                for h in holders.iter().flatten() {
                    assert!(h.live, "every shard held at rest");
                    *out.entry(h.owner.clone()).or_insert(0) += 1;
                }
                return out;
            }
        }
        panic!("the plan never settles for {shards} shards over {members:?}");
    }

    #[test]
    fn shards_end_evenly_spread_over_the_live_instances() {
        for (shards, members) in [
            (1, vec!["a", "b", "c"]),
            (4, vec!["a", "b", "c"]),
            (16, vec!["a", "b", "c"]),
            (7, vec!["a", "b"]),
            (8, vec!["a"]),
        ] {
            let counts = settle(shards, &members);
            assert_eq!(counts.values().sum::<u32>(), shards as u32);
            let (lo, hi) = (
                counts.values().min().copied().unwrap_or(0),
                counts.values().max().copied().unwrap_or(0),
            );
            let lo = if counts.len() < members.len() { 0 } else { lo };
            assert!(hi - lo <= 1, "{shards} over {members:?}: {counts:?}");
        }
    }

    #[test]
    fn a_newcomer_gets_shards_from_a_busy_instance() {
        // `a` holds all four; `b` just joined: `a` hands one over (nothing is free).
        let all_a = vec![holder("a", true); 4];
        let m = plan("a", &view(all_a.clone(), &["a", "b"]));
        assert_eq!(m.give_up, Some(3));
        assert!(m.take.is_empty());
        assert_eq!(plan("b", &view(all_a, &["a", "b"])), Moves::default());
        // Once one is free, `b` (below target, least loaded) takes it and `a` waits.
        let mut h = vec![holder("a", true); 4];
        h[3] = holder("a", false);
        assert_eq!(plan("b", &view(h.clone(), &["a", "b"])).take, vec![3]);
        assert_eq!(plan("a", &view(h, &["a", "b"])), Moves::default());
    }

    #[test]
    fn a_dead_instances_shards_go_to_the_survivors() {
        // `c` died: its leases expired and it no longer heartbeats.
        let h = vec![
            holder("a", true),
            holder("b", true),
            holder("c", false),
            holder("c", false),
        ];
        let a = plan("a", &view(h.clone(), &["a", "b"]));
        let b = plan("b", &view(h, &["a", "b"]));
        assert_eq!(a.take.len(), 1);
        assert_eq!(b.take.len(), 1);
        assert!(a.take.iter().chain(&b.take).all(|s| *s == 2 || *s == 3));
    }
}
