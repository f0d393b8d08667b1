//! The orchestrator port: how the API tells whatever drives runs (the
//! embedded loop, or Step Functions) that a run needs attention.

use async_trait::async_trait;

use crate::domain::{RunId, WorkspaceId};

#[derive(Debug, thiserror::Error)]
#[error("the orchestrator could not be reached: {0}")]
pub struct DriverError(pub String);

#[async_trait]
pub trait RunDriver: Send + Sync {
    /// A run was created and stored: start driving it.
    async fn start(&self, ws: &WorkspaceId, run: &RunId) -> Result<(), DriverError>;
    /// A run changed from outside (an approval completed, a cancel): look at
    /// it again now.
    async fn poke(&self, ws: &WorkspaceId, run: &RunId) -> Result<(), DriverError>;
}
