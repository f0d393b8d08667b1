use chrono::Utc;
use serde_json::Value;

use super::{App, AppError, Principal};
use crate::domain::{Role, WorkflowId, WorkflowSummary, WorkflowVersion, WorkspaceId};
use crate::dsl::{Path, ValidationError, Workflow, parse_workflow};
use crate::ports::{Page, PageRequest, StoreError};

/// Editors may change only the workflows they made; Admins and Owners any.
fn may_change(who: &Principal, latest: &WorkflowVersion) -> Result<(), AppError> {
    if who.role >= Role::Admin || latest.created_by == Some(who.actor()) {
        return Ok(());
    }
    Err(AppError::Forbidden(format!(
        "an editor may change only the workflows it made; `{}` was made by another key",
        latest.id
    )))
}

fn validate(def: &Value) -> Result<Workflow, AppError> {
    parse_workflow(def).map_err(AppError::InvalidDefinition)
}

impl App {
    /// Creates a workflow made by no one in particular (an operator's or a
    /// test's).
    pub async fn create_workflow(
        &self,
        ws: &WorkspaceId,
        def: Value,
    ) -> Result<WorkflowVersion, AppError> {
        self.create_workflow_by(ws, None, def).await
    }

    /// Creates a workflow made by `who` (see `WorkflowVersion::created_by`).
    pub async fn create_workflow_as(
        &self,
        who: &Principal,
        def: Value,
    ) -> Result<WorkflowVersion, AppError> {
        self.create_workflow_by(&who.workspace_id, Some(who), def)
            .await
    }

    async fn create_workflow_by(
        &self,
        ws: &WorkspaceId,
        who: Option<&Principal>,
        def: Value,
    ) -> Result<WorkflowVersion, AppError> {
        let created_by = who.map(Principal::actor);
        let wf = validate(&def)?;
        let id = wf
            .id
            .as_deref()
            .map_or_else(WorkflowId::generate, WorkflowId::from_string);
        let v = WorkflowVersion {
            workspace_id: ws.clone(),
            id: id.clone(),
            version: 1,
            name: wf.name,
            definition: def,
            created_at: Utc::now(),
            archived_at: None,
            created_by,
        };
        match self.stores.workflows.create_workflow(&v).await {
            Ok(()) => Ok(v),
            Err(StoreError::Conflict(_)) => self.revive_workflow(who, v).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Creating a workflow whose id an archived one had stores the new
    /// definition as that workflow's next version (its runs stay readable).
    /// Its maker stays the archived workflow's: an editor may revive only
    /// its own.
    async fn revive_workflow(
        &self,
        who: Option<&Principal>,
        mut v: WorkflowVersion,
    ) -> Result<WorkflowVersion, AppError> {
        let id = v.id.clone();
        let exists = || {
            AppError::Conflict(format!(
                "workflow `{id}` already exists; PUT /v1/workflows/{id} stores a new version of it"
            ))
        };
        let Some(old) = self
            .stores
            .workflows
            .get_workflow(&v.workspace_id, &id, None)
            .await?
        else {
            return Err(exists());
        };
        if old.archived_at.is_none() {
            return Err(exists());
        }
        if let Some(who) = who {
            may_change(who, &old)?;
        }
        v.created_by = old.created_by;
        v.version = old.version + 1;
        match self.stores.workflows.add_version(&v, true).await {
            Ok(()) => Ok(v),
            Err(StoreError::Conflict(_)) => Err(exists()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn update_workflow(
        &self,
        who: &Principal,
        id: &WorkflowId,
        def: Value,
    ) -> Result<WorkflowVersion, AppError> {
        let ws = &who.workspace_id;
        let wf = validate(&def)?;
        if wf.id.as_deref().is_some_and(|d| d != id.as_str()) {
            return Err(AppError::InvalidDefinition(vec![ValidationError::new(
                &Path::root().key("id"),
                format!(
                    "the definition's id must match the workflow being updated (`{id}`), or be left out"
                ),
            )]));
        }
        let latest = self.live_workflow(ws, id).await?;
        may_change(who, &latest)?;
        let v = WorkflowVersion {
            workspace_id: ws.clone(),
            id: id.clone(),
            version: latest.version + 1,
            name: wf.name,
            definition: def,
            created_at: Utc::now(),
            archived_at: None,
            created_by: latest.created_by,
        };
        match self.stores.workflows.add_version(&v, false).await {
            Ok(()) => Ok(v),
            Err(StoreError::Conflict(_)) => Err(AppError::Conflict(format!(
                "workflow `{id}` changed while this version was being stored; fetch it and try again"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn live_workflow(
        &self,
        ws: &WorkspaceId,
        id: &WorkflowId,
    ) -> Result<WorkflowVersion, AppError> {
        match self.stores.workflows.get_workflow(ws, id, None).await? {
            Some(v) if v.archived_at.is_none() => Ok(v),
            _ => Err(AppError::NotFound(format!("workflow `{id}` not found"))),
        }
    }

    /// The latest version, or a given one; archived workflows are not found.
    pub async fn get_workflow(
        &self,
        ws: &WorkspaceId,
        id: &WorkflowId,
        version: Option<u32>,
    ) -> Result<WorkflowVersion, AppError> {
        let latest = self.live_workflow(ws, id).await?;
        match version {
            None => Ok(latest),
            Some(n) => self
                .stores
                .workflows
                .get_workflow(ws, id, Some(n))
                .await?
                .ok_or_else(|| {
                    AppError::NotFound(format!(
                        "workflow `{id}` has no version {n} (latest is {})",
                        latest.version
                    ))
                }),
        }
    }

    pub async fn list_workflows(
        &self,
        ws: &WorkspaceId,
        page: &PageRequest,
    ) -> Result<Page<WorkflowSummary>, AppError> {
        Ok(self.stores.workflows.list_workflows(ws, page).await?)
    }

    pub async fn archive_workflow(&self, who: &Principal, id: &WorkflowId) -> Result<(), AppError> {
        let ws = &who.workspace_id;
        if who.role < Role::Admin {
            may_change(who, &self.live_workflow(ws, id).await?)?;
        }
        if self
            .stores
            .workflows
            .archive_workflow(ws, id, Utc::now())
            .await?
        {
            Ok(())
        } else {
            Err(AppError::NotFound(format!("workflow `{id}` not found")))
        }
    }
}
