//! A SQLite store as a test sees it: how often all of a run's step records
//! were read, the largest save, a write limit of the test's choosing, and a
//! save that panics once (a bug in a pass).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;

use super::SqliteStore;
use crate::domain::{RunId, RunRecord, StepRecord, WorkspaceId};
use crate::ports::{IdempotencyClaim, PendingResult, RunStore, StoreResult, Waiter};

pub struct Observed {
    pub inner: Arc<SqliteStore>,
    /// How often all of a run's step records were read.
    pub whole_reads: AtomicUsize,
    /// The write limit it reports (DynamoDB's is 40 changed steps).
    pub max_steps: Option<usize>,
    /// The most changed steps one save held.
    pub largest_save: AtomicUsize,
    /// The next save panics (a bug in a pass).
    pub panic_on_save: AtomicBool,
}

impl Observed {
    pub fn new(inner: Arc<SqliteStore>) -> Self {
        Self {
            inner,
            whole_reads: AtomicUsize::new(0),
            max_steps: None,
            largest_save: AtomicUsize::new(0),
            panic_on_save: AtomicBool::new(false),
        }
    }

    fn count(&self) {
        self.whole_reads.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl RunStore for Observed {
    fn write_limits(&self) -> crate::ports::WriteLimits {
        crate::ports::WriteLimits {
            max_steps: self.max_steps,
        }
    }
    async fn put_waiter(&self, ws: &WorkspaceId, w: &Waiter) -> StoreResult<()> {
        self.inner.put_waiter(ws, w).await
    }

    async fn waiters(
        &self,
        ws: &WorkspaceId,
        event: &str,
        limit: usize,
    ) -> StoreResult<Vec<Waiter>> {
        self.inner.waiters(ws, event, limit).await
    }

    async fn delete_waiter(&self, ws: &WorkspaceId, w: &Waiter) -> StoreResult<()> {
        self.inner.delete_waiter(ws, w).await
    }

    async fn claim(&self, ws: &WorkspaceId, c: &IdempotencyClaim) -> StoreResult<Option<String>> {
        self.inner.claim(ws, c).await
    }

    async fn create_run(
        &self,
        r: &RunRecord,
        c: Option<&crate::ports::IdempotencyClaim>,
    ) -> crate::ports::StoreResult<crate::ports::CreateRun> {
        self.inner.create_run(r, c).await
    }
    async fn get_run(&self, ws: &WorkspaceId, id: &RunId) -> StoreResult<Option<RunRecord>> {
        self.inner.get_run(ws, id).await
    }
    async fn get_run_head(&self, ws: &WorkspaceId, id: &RunId) -> StoreResult<Option<RunRecord>> {
        self.inner.get_run_head(ws, id).await
    }
    async fn get_steps(&self, ws: &WorkspaceId, id: &RunId) -> StoreResult<Vec<StepRecord>> {
        self.count();
        self.inner.get_steps(ws, id).await
    }
    async fn get_step_heads(&self, ws: &WorkspaceId, id: &RunId) -> StoreResult<Vec<StepRecord>> {
        self.inner.get_step_heads(ws, id).await
    }
    async fn get_steps_by_keys(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        keys: &[String],
    ) -> StoreResult<Vec<StepRecord>> {
        self.inner.get_steps_by_keys(ws, id, keys).await
    }
    async fn get_step_head(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        key: &str,
    ) -> StoreResult<Option<StepRecord>> {
        self.inner.get_step_head(ws, id, key).await
    }
    async fn load_run(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
    ) -> StoreResult<Option<(RunRecord, Vec<StepRecord>)>> {
        self.count();
        self.inner.load_run(ws, id).await
    }
    async fn load_run_with_results(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
    ) -> StoreResult<Option<(RunRecord, Vec<StepRecord>, Vec<PendingResult>)>> {
        self.count();
        self.inner.load_run_with_results(ws, id).await
    }
    async fn load_run_at(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        keys: &[String],
    ) -> StoreResult<Option<(RunRecord, Vec<StepRecord>)>> {
        self.inner.load_run_at(ws, id, keys).await
    }
    async fn list_runs(
        &self,
        ws: &WorkspaceId,
        f: &crate::ports::RunFilter,
        p: &crate::ports::PageRequest,
    ) -> StoreResult<crate::ports::Page<RunRecord>> {
        self.inner.list_runs(ws, f, p).await
    }
    async fn save_run(&self, w: &crate::ports::RunWrite) -> StoreResult<()> {
        if self.panic_on_save.swap(false, Ordering::SeqCst) {
            panic!("a bug in a pass");
        }
        self.largest_save.fetch_max(w.steps.len(), Ordering::SeqCst);
        self.inner.save_run(w).await
    }
    async fn list_logs(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        p: &crate::ports::PageRequest,
    ) -> StoreResult<crate::ports::Page<crate::domain::LogEntry>> {
        self.inner.list_logs(ws, id, p).await
    }
    async fn put_result(&self, ws: &WorkspaceId, id: &RunId, r: &PendingResult) -> StoreResult<()> {
        self.inner.put_result(ws, id, r).await
    }
    async fn has_result(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        key: &str,
        attempt: u32,
    ) -> StoreResult<bool> {
        self.inner.has_result(ws, id, key, attempt).await
    }
    async fn pending_results(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
    ) -> StoreResult<Vec<PendingResult>> {
        self.inner.pending_results(ws, id).await
    }
    async fn clear_results(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        attempts: &[(String, u32)],
    ) -> StoreResult<()> {
        self.inner.clear_results(ws, id, attempts).await
    }
}
