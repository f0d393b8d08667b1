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
    /// A run was ended from outside (a cancel) and that is stored: its
    /// attempts queued or executing stop now, before any other run's
    /// attempts can take their place. Drivers whose attempts are stopped
    /// by the run's next pass leave this as it is.
    fn ended(&self, ws: &WorkspaceId, run: &RunId) {
        let _ = (ws, run);
    }
}
