//! The records of big runs a plan function's process keeps between the
//! passes it makes (a warm Lambda makes many passes of a run in a row): a
//! pass of a kept run reads only the run item and the results left for it
//! when the stored revision is the one this process wrote, instead of every
//! step record. Small runs are not kept: one query reads them whole, which
//! costs less than reading the run item and its results apart.

use std::sync::Mutex;

use super::super::kept::KeptRuns;
use super::super::recovery::RunKey;
use super::super::tick::{Kept, RecordCache};
use crate::domain::{RunId, WorkspaceId};

/// Runs with fewer records are read whole on every pass.
pub const MIN_RECORDS: usize = 100;
/// What all kept runs may take in this process (the plan function has
/// 256 MB).
const BUDGET_BYTES: u64 = 64 << 20;

pub struct KeptRecords(Mutex<KeptRuns>);

impl Default for KeptRecords {
    fn default() -> Self {
        Self(Mutex::new(KeptRuns::new(BUDGET_BYTES)))
    }
}

impl KeptRecords {
    /// The cache of one run's passes.
    pub(super) fn of(&self, key: RunKey) -> KeptRun<'_> {
        KeptRun { all: self, key }
    }

    /// Whether this process holds the run's records.
    pub fn holds(&self, ws: &WorkspaceId, run: &RunId) -> bool {
        let key = (ws.clone(), run.clone());
        let Ok(mut runs) = self.0.lock() else {
            return false;
        };
        match runs.take(&key) {
            Some(kept) => {
                runs.keep(&key, kept);
                true
            }
            None => false,
        }
    }
}

pub(super) struct KeptRun<'a> {
    all: &'a KeptRecords,
    key: RunKey,
}

impl RecordCache for KeptRun<'_> {
    fn take(&self) -> Option<Kept> {
        self.all.0.lock().ok()?.take(&self.key)
    }

    fn keep(&self, kept: Kept) {
        if let Ok(mut runs) = self.all.0.lock() {
            match kept.records.len() >= MIN_RECORDS {
                true => runs.keep(&self.key, kept),
                false => runs.forget(&self.key),
            }
        }
    }
}
