//! The runs' records an orchestrator keeps between passes
//! (`tick::RecordCache`), within a memory budget: a run that would take the
//! total past it makes room by forgetting the runs kept longest ago (their
//! next pass reads the store, as without a cache), and one bigger than the
//! whole budget is not kept, so many tenants' large runs cannot make the
//! process grow without bound, and runs that ended or moved to another
//! process do not hold the room for good.

use std::collections::{BTreeMap, HashMap};

use super::recovery::RunKey;
use super::tick::Kept;

/// What all kept runs may take, by the estimate below.
pub const BUDGET_BYTES: u64 = 1 << 30;

/// About what a record takes in memory: its output and items as counted
/// for the run's state (`memory::mem_size`, an upper bound), plus the
/// record itself, its key (twice: the map's and its own) and attempts.
fn estimate(kept: &Kept) -> u64 {
    let fixed = (std::mem::size_of::<crate::domain::StepRecord>() + 128) as u64;
    let attempt = (std::mem::size_of::<crate::domain::Attempt>() + 64) as u64;
    kept.records
        .values()
        .map(|r| {
            r.size
                .saturating_add(fixed)
                .saturating_add(2 * r.key.len() as u64)
                .saturating_add(attempt.saturating_mul(r.attempts.len() as u64))
        })
        .fold(0, u64::saturating_add)
}

pub struct KeptRuns {
    /// Each run's records, their estimate and when they were kept.
    runs: HashMap<RunKey, (Kept, u64, u64)>,
    /// The kept runs by when they were kept, oldest first.
    order: BTreeMap<u64, RunKey>,
    next: u64,
    bytes: u64,
    budget: u64,
}

impl KeptRuns {
    pub fn new(budget: u64) -> Self {
        Self {
            runs: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
            bytes: 0,
            budget,
        }
    }

    pub fn take(&mut self, run: &RunKey) -> Option<Kept> {
        let (kept, bytes, at) = self.runs.remove(run)?;
        self.order.remove(&at);
        self.bytes -= bytes;
        Some(kept)
    }

    /// Keeps `kept` for `run`, forgetting the runs kept longest ago as far
    /// as it needs room; a run bigger than the whole budget is forgotten.
    pub fn keep(&mut self, run: &RunKey, kept: Kept) {
        self.take(run);
        let bytes = estimate(&kept);
        if bytes > self.budget {
            return;
        }
        while self.bytes.saturating_add(bytes) > self.budget {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, b, _)) = self.runs.remove(&oldest) {
                self.bytes -= b;
            }
        }
        let at = self.next;
        self.next += 1;
        self.bytes += bytes;
        self.order.insert(at, run.clone());
        self.runs.insert(run.clone(), (kept, bytes, at));
    }

    pub fn forget(&mut self, run: &RunKey) {
        self.take(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::{Cursors, Records};
    use crate::domain::{RunId, StepRecord, WorkspaceId};

    fn kept(records: usize, size: u64) -> Kept {
        let mut recs = Records::new();
        for i in 0..records {
            let mut r = StepRecord::new(format!("s{i}"), "transform");
            r.size = size;
            recs.insert(r.key.clone(), r);
        }
        Kept {
            revision: 1,
            records: recs,
            cursors: Cursors::default(),
        }
    }

    #[test]
    fn runs_past_the_budget_forget_those_kept_longest_ago() {
        let key = |n: u8| {
            (
                WorkspaceId::generate(),
                RunId::from_string(format!("run_{n}")),
            )
        };
        let (a, b, c) = (key(1), key(2), key(3));
        // The budget holds two.
        let one = estimate(&kept(10, 1000));
        assert!(one > 10 * 1000, "{one}");
        let mut kept_runs = KeptRuns::new(2 * one);
        kept_runs.keep(&a, kept(10, 1000));
        kept_runs.keep(&b, kept(10, 1000));
        // b is kept again (a pass of it): a is now the one kept longest ago.
        let again = kept_runs.take(&b).unwrap();
        kept_runs.keep(&b, again);
        kept_runs.keep(&c, kept(10, 1000));
        assert!(kept_runs.take(&a).is_none(), "forgotten to make room");
        assert!(kept_runs.take(&c).is_some());
        assert!(kept_runs.take(&b).is_some());
        // Taking gave the room back.
        kept_runs.keep(&c, kept(10, 1000));
        assert!(kept_runs.take(&c).is_some());
        // A run bigger than the whole budget is not kept, and forgets none.
        kept_runs.keep(&a, kept(10, 1000));
        kept_runs.keep(&b, kept(30, 1000));
        assert!(kept_runs.take(&b).is_none());
        assert!(kept_runs.take(&a).is_some());
        // Keeping a run again replaces its entry, not adds to it.
        kept_runs.keep(&b, kept(10, 1000));
        kept_runs.keep(&b, kept(10, 1000));
        assert_eq!(kept_runs.bytes, one);
        kept_runs.forget(&b);
        assert_eq!(kept_runs.bytes, 0);
    }
}
