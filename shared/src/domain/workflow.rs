//! Stored workflows: a workflow is a name plus immutable numbered versions.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ids::{WorkflowId, WorkspaceId};

/// One immutable version of a workflow, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowVersion {
    pub workspace_id: WorkspaceId,
    pub id: WorkflowId,
    pub version: u32,
    pub name: String,
    /// The definition exactly as validated (JSON).
    pub definition: Value,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub archived_at: Option<DateTime<Utc>>,
    /// Who made the workflow (`key:<id>` of the first key of a rotation
    /// chain); kept by later versions. Editors may change only their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

impl WorkflowVersion {
    /// The listing entry of a workflow whose latest version this is.
    pub fn summary(&self, created_at: DateTime<Utc>) -> WorkflowSummary {
        WorkflowSummary {
            workspace_id: self.workspace_id.clone(),
            id: self.id.clone(),
            name: self.name.clone(),
            latest_version: self.version,
            created_at,
            updated_at: self.created_at,
            events: self.trigger_events(),
        }
    }

    /// The names of the events its triggers listen for (the definition is
    /// validated, so each trigger's `event` is a name).
    pub fn trigger_events(&self) -> Vec<String> {
        let mut names: Vec<String> = self.definition["triggers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["event"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// A workflow's latest state, for listings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowSummary {
    pub workspace_id: WorkspaceId,
    pub id: WorkflowId,
    pub name: String,
    pub latest_version: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The events its latest version's triggers listen for (events are
    /// matched from these without reading every definition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}
