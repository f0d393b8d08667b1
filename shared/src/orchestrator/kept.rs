//! The runs' records the embedded orchestrator keeps between passes
//! (`tick::RecordCache`), within a memory budget: a run that would take the
//! total past it is not kept (its next pass reads the store, as without a
//! cache), so many tenants' large runs cannot make the process grow
//! without bound.

use std::collections::HashMap;

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
    runs: HashMap<RunKey, (Kept, u64)>,
    bytes: u64,
    budget: u64,
}

impl KeptRuns {
    pub fn new(budget: u64) -> Self {
        Self {
            runs: HashMap::new(),
            bytes: 0,
            budget,
        }
    }

    pub fn take(&mut self, run: &RunKey) -> Option<Kept> {
        let (kept, bytes) = self.runs.remove(run)?;
        self.bytes -= bytes;
        Some(kept)
    }

    /// Keeps `kept` for `run` if the budget holds it (else forgets the run).
    pub fn keep(&mut self, run: &RunKey, kept: Kept) {
        self.take(run);
        let bytes = estimate(&kept);
        if self.bytes.saturating_add(bytes) <= self.budget {
            self.bytes += bytes;
            self.runs.insert(run.clone(), (kept, bytes));
        }
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
    fn runs_past_the_budget_are_not_kept() {
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
        kept_runs.keep(&c, kept(10, 1000));
        assert!(kept_runs.take(&c).is_none(), "over the budget: not kept");
        assert!(kept_runs.take(&a).is_some());
        // Taking gave the room back.
        kept_runs.keep(&c, kept(10, 1000));
        assert!(kept_runs.take(&c).is_some());
        // Keeping a run again replaces its entry, not adds to it.
        kept_runs.keep(&b, kept(10, 1000));
        kept_runs.keep(&b, kept(10, 1000));
        assert_eq!(kept_runs.bytes, one);
        kept_runs.forget(&b);
        assert_eq!(kept_runs.bytes, 0);
    }
}
