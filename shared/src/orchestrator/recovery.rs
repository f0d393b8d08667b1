//! Which resumed runs were being advanced when the process stopped, so a
//! run that takes the process down is not resumed into a crash loop.
//!
//! Nothing is written while the process runs normally. At start-up, the
//! runs resumed together are listed in a journal beside the database until
//! each has finished its first pass. If the process stops before that,
//! the next start cannot tell which of them was at fault: it resumes those
//! suspects one at a time, each named alone in the journal while it takes
//! its pass. A run named alone when the process stopped is the one that
//! stopped it: it is failed instead of resumed again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::domain::{RunId, WorkspaceId};

pub(super) type RunKey = (WorkspaceId, RunId);

/// How often the journal is rewritten as resumed runs finish their first
/// pass (a stale journal only makes the next start more careful).
const REWRITE_EVERY: Duration = Duration::from_millis(250);

#[derive(Default, Serialize, Deserialize)]
struct Journal {
    /// Resumed together; first pass not finished.
    #[serde(default)]
    together: Vec<RunKey>,
    /// Resumed alone; first pass not finished.
    #[serde(default)]
    alone: Option<RunKey>,
}

/// What the journal says about the last start.
pub(super) struct Prior {
    /// The run that stopped the process (it was advanced alone).
    pub culprit: Option<RunKey>,
    /// Runs advanced together when the process stopped.
    pub suspects: Vec<RunKey>,
}

pub(super) struct Recovery {
    path: PathBuf,
    state: Mutex<State>,
    /// Told when the run named alone has taken its pass.
    alone_done: tokio::sync::Notify,
}

struct State {
    journal: Journal,
    /// Resumed together, first pass not finished yet.
    pending: HashSet<RunKey>,
    written: Instant,
}

impl Recovery {
    /// The journal of the database at `db` (`<db>.recovering`).
    pub fn beside(db: &Path) -> Self {
        let mut name = db.as_os_str().to_owned();
        name.push(".recovering");
        Self {
            path: PathBuf::from(name),
            state: Mutex::new(State {
                journal: Journal::default(),
                pending: HashSet::new(),
                written: Instant::now(),
            }),
            alone_done: tokio::sync::Notify::new(),
        }
    }

    /// Reads what the last start left (nothing if it ended its recovery).
    pub fn prior(&self) -> Prior {
        let journal: Journal = std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Prior {
            suspects: journal
                .together
                .into_iter()
                .filter(|k| journal.alone.as_ref() != Some(k))
                .collect(),
            culprit: journal.alone,
        }
    }

    /// Names `run` alone (its pass is next), with the suspects still to go.
    pub fn alone(&self, run: &RunKey, remaining: &[RunKey]) {
        if let Ok(mut s) = self.state.lock() {
            s.journal.alone = Some(run.clone());
            s.journal.together = remaining.to_vec();
            self.write(&mut s);
        }
    }

    /// Lists the runs about to be resumed together.
    pub fn together(&self, runs: &[RunKey]) {
        if let Ok(mut s) = self.state.lock() {
            s.journal.alone = None;
            s.journal.together = runs.to_vec();
            s.pending = runs.iter().cloned().collect();
            self.write(&mut s);
        }
    }

    /// Waits until the run named alone has taken its pass.
    pub async fn alone_passed(&self) {
        self.alone_done.notified().await;
    }

    /// A run finished a pass: it is no longer a suspect.
    pub fn passed(&self, run: &RunKey) {
        let Ok(mut s) = self.state.lock() else { return };
        if s.journal.alone.as_ref() == Some(run) {
            s.journal.alone = None;
            self.write(&mut s);
            drop(s);
            self.alone_done.notify_one();
            return;
        }
        if !s.pending.remove(run) {
            return;
        }
        if s.pending.is_empty() || s.written.elapsed() >= REWRITE_EVERY {
            let left: Vec<RunKey> = s.pending.iter().cloned().collect();
            s.journal.together = left;
            self.write(&mut s);
        }
    }

    /// Writes the journal (or removes it when it names nothing): to a
    /// temporary file first, so a crash leaves the old one or the new one.
    fn write(&self, s: &mut State) {
        s.written = Instant::now();
        if s.journal.alone.is_none() && s.journal.together.is_empty() {
            let _ = std::fs::remove_file(&self.path);
            return;
        }
        let tmp = self.path.with_extension("recovering.tmp");
        let written = serde_json::to_vec(&s.journal)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::warn!(error = %e, "writing the recovery journal failed");
        }
    }
}
