//! The orchestrator port: how the API tells whatever drives runs (the
//! embedded loop, or Step Functions) that a run needs attention.

use async_trait::async_trait;

use chrono::{DateTime, Utc};

use crate::domain::{Lease, RunId, WorkspaceId};

#[derive(Debug, thiserror::Error)]
#[error("the orchestrator could not be reached: {0}")]
pub struct DriverError(pub String);

#[async_trait]
pub trait RunDriver: Send + Sync {
    /// The lease a new run is created with, where drivers can vanish (see
    /// `RunRecord::lease`); None where they cannot.
    fn initial_lease(&self, now: DateTime<Utc>) -> Option<Lease> {
        let _ = now;
        None
    }
    /// A run was created and stored: start driving it.
    async fn start(&self, ws: &WorkspaceId, run: &RunId) -> Result<(), DriverError>;
    /// A run changed from outside (an approval completed, a cancel): look at
    /// it again now.
    async fn poke(&self, ws: &WorkspaceId, run: &RunId) -> Result<(), DriverError>;
}
