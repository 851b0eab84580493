//! Velocity windows that many cards share: a cardholder's and a program's.
//!
//! An authorization decides against them under a shared (read) lock and takes the
//! exclusive lock only to record its effects. Every exclusive lock counts as a change; if
//! one happened between the decision and the recording, the decision is made again under
//! the exclusive lock, so a limit is never checked against sums another card has since
//! moved. Before, one mutex per program was held through all of `decide()` (scripts
//! included) by every authorization of the program, and the runtime's threads queued on it.

use parking_lot::{MappedRwLockReadGuard, MappedRwLockWriteGuard, RwLock};
use parking_lot::{RwLockReadGuard, RwLockWriteGuard};

use crate::velocity::VelocityState;

/// A shared scope's windows and how many times they were locked for a change.
#[derive(Debug, Default)]
pub struct SharedVelocity {
    inner: RwLock<Versioned>,
}

#[derive(Debug, Default)]
struct Versioned {
    changes: u64,
    state: VelocityState,
}

impl SharedVelocity {
    pub fn new(state: VelocityState) -> SharedVelocity {
        SharedVelocity {
            inner: RwLock::new(Versioned { changes: 0, state }),
        }
    }

    /// The windows for reading, with how many changes they have seen so far.
    pub fn read(&self) -> (MappedRwLockReadGuard<'_, VelocityState>, u64) {
        let g = self.inner.read();
        let changes = g.changes;
        (RwLockReadGuard::map(g, |v| &v.state), changes)
    }

    /// The windows for a change.
    pub fn write(&self) -> MappedRwLockWriteGuard<'_, VelocityState> {
        self.write_since(0).0
    }

    /// The windows for a change, and whether they changed after a read that saw `seen`.
    pub fn write_since(&self, seen: u64) -> (MappedRwLockWriteGuard<'_, VelocityState>, bool) {
        let mut g = self.inner.write();
        let changed = g.changes != seen;
        g.changes += 1;
        (RwLockWriteGuard::map(g, |v| &mut v.state), changed)
    }
}

/// Decides against `card` and the shared scopes under their read locks, then records with
/// `record` under their write locks; if a scope changed in between, decides again there
/// (deciding is pure, so only the second answer counts). The caller holds the card's lock.
pub fn decide_then_record<C, D, R>(
    card: &mut C,
    holder: Option<&SharedVelocity>,
    program: Option<&SharedVelocity>,
    decide: impl Fn(&C, Option<&VelocityState>, Option<&VelocityState>) -> D,
    record: impl FnOnce(&mut C, D, Option<&mut VelocityState>, Option<&mut VelocityState>) -> R,
) -> R {
    let first = decide_shared(card, holder, program, &decide);
    record_exclusive(card, first, holder, program, &decide, record)
}

/// A decision and the change counts of the scopes it read.
struct Tentative<D> {
    decision: D,
    seen: (u64, u64),
}

fn decide_shared<C, D>(
    card: &C,
    holder: Option<&SharedVelocity>,
    program: Option<&SharedVelocity>,
    decide: &impl Fn(&C, Option<&VelocityState>, Option<&VelocityState>) -> D,
) -> Tentative<D> {
    let h = holder.map(SharedVelocity::read);
    let p = program.map(SharedVelocity::read);
    let decision = decide(
        card,
        h.as_ref().map(|(g, _)| &**g),
        p.as_ref().map(|(g, _)| &**g),
    );
    Tentative {
        decision,
        seen: (h.map_or(0, |(_, n)| n), p.map_or(0, |(_, n)| n)),
    }
}

fn record_exclusive<C, D, R>(
    card: &mut C,
    first: Tentative<D>,
    holder: Option<&SharedVelocity>,
    program: Option<&SharedVelocity>,
    decide: &impl Fn(&C, Option<&VelocityState>, Option<&VelocityState>) -> D,
    record: impl FnOnce(&mut C, D, Option<&mut VelocityState>, Option<&mut VelocityState>) -> R,
) -> R {
    let mut h = holder.map(|s| s.write_since(first.seen.0));
    let mut p = program.map(|s| s.write_since(first.seen.1));
    let changed = h.as_ref().is_some_and(|(_, c)| *c) || p.as_ref().is_some_and(|(_, c)| *c);
    let d = if changed {
        decide(
            card,
            h.as_ref().map(|(g, _)| &**g),
            p.as_ref().map(|(g, _)| &**g),
        )
    } else {
        first.decision
    };
    record(
        card,
        d,
        h.as_mut().map(|(g, _)| &mut **g),
        p.as_mut().map(|(g, _)| &mut **g),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_after_a_read_is_seen_by_the_next_write() {
        let s = SharedVelocity::new(VelocityState::default());
        let seen = s.read().1;
        assert!(!s.write_since(seen).1, "nothing changed since the read");
        let seen = s.read().1;
        drop(s.write());
        assert!(s.write_since(seen).1, "another writer came in between");
    }

    #[test]
    fn decides_again_when_a_shared_scope_changed_and_only_then() {
        let holder = SharedVelocity::default();
        let program = SharedVelocity::default();
        let decisions = std::cell::Cell::new(0);
        let decide = |_: &u32, h: Option<&VelocityState>, p: Option<&VelocityState>| {
            assert!(h.is_some() && p.is_some());
            decisions.set(decisions.get() + 1);
            decisions.get()
        };
        let record =
            |_: &mut u32, d, h: Option<&mut VelocityState>, p: Option<&mut VelocityState>| {
                assert!(h.is_some() && p.is_some());
                d
            };
        let used = decide_then_record(&mut 0, Some(&holder), Some(&program), decide, record);
        assert_eq!(
            (used, decisions.get()),
            (1, 1),
            "quiet scopes: one decision"
        );

        // Another card records in the program between this one's decision and its
        // recording: the decision made against the old sums is not the one recorded.
        for changed in [&program, &holder] {
            decisions.set(0);
            let first = decide_shared(&0, Some(&holder), Some(&program), &decide);
            drop(changed.write());
            let used = record_exclusive(
                &mut 0,
                first,
                Some(&holder),
                Some(&program),
                &decide,
                record,
            );
            assert_eq!(
                (used, decisions.get()),
                (2, 2),
                "decided again under the write locks"
            );
        }
    }
}
