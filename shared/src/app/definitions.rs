//! Parsed workflow versions, cached: versions never change once stored, so a
//! cached parse is never stale.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::domain::{WorkflowId, WorkspaceId};
use crate::dsl::{Workflow, parse_workflow};
use crate::ports::{StoreError, WorkflowStore};

const CAPACITY: usize = 4096;

type Key = (WorkspaceId, WorkflowId, u32);

#[derive(Default)]
pub struct DefinitionCache {
    entries: Mutex<HashMap<Key, Arc<Workflow>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("workflow version not found")]
    Missing,
    #[error("stored definition no longer parses: {0}")]
    Invalid(String),
    /// Kept as the source (not `transparent`), so whoever classifies the
    /// error finds the `StoreError` in its chain (a throttle stays
    /// retryable).
    #[error("the workflow could not be read")]
    Store(#[from] StoreError),
}

impl DefinitionCache {
    /// The definition of the version a run is pinned to.
    pub async fn for_run(
        &self,
        store: &dyn WorkflowStore,
        run: &crate::domain::RunRecord,
    ) -> Result<Arc<Workflow>, DefinitionError> {
        self.get(
            store,
            &run.workspace_id,
            &run.workflow_id,
            run.workflow_version,
        )
        .await
    }

    pub async fn get(
        &self,
        store: &dyn WorkflowStore,
        ws: &WorkspaceId,
        id: &WorkflowId,
        version: u32,
    ) -> Result<Arc<Workflow>, DefinitionError> {
        let key = (ws.clone(), id.clone(), version);
        if let Some(w) = self.entries.lock().ok().and_then(|e| e.get(&key).cloned()) {
            return Ok(w);
        }
        let stored = store
            .get_workflow(ws, id, Some(version))
            .await?
            .ok_or(DefinitionError::Missing)?;
        let wf = Arc::new(parse_workflow(&stored.definition).map_err(|errs| {
            DefinitionError::Invalid(
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?);
        if let Ok(mut e) = self.entries.lock() {
            if e.len() >= CAPACITY {
                e.clear();
            }
            e.insert(key, Arc::clone(&wf));
        }
        Ok(wf)
    }
}
