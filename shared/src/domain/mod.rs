//! Domain types shared by every part of Weft.

pub mod audit;
pub mod hook;
pub mod ids;
pub mod limits;
pub mod models;
pub mod money;
pub mod rate;
pub mod run;
pub mod schedule;
pub mod usage;
pub mod webhook;
pub mod workflow;
pub mod workspace;

pub use audit::{AUDIT_RETENTION_DAYS, AuditEntry, AuditFilter};
pub use hook::{Encoding, Hook, HookId, Receipt, Verification};
pub use ids::{ApiKeyId, AuditId, EndpointId, RunId, ScheduleId, WorkflowId, WorkspaceId};
pub use money::{TokenPrice, Usd};
pub use rate::{Rate, RateLimits, Verdict, gcra};
pub use run::{
    Attempt, Lease, LogEntry, LogLevel, RunHead, RunRecord, RunStatus, StepError, StepHead,
    StepRecord, StepStatus,
};
pub use schedule::{CatchUp, Overlap, Schedule};
pub use usage::{CapHit, Caps, Charge, ModelPrice, Usage, UsageRow, WorkspaceSettings};
pub use webhook::{
    Delivery, DeliveryAttempt, DeliveryRef, DeliveryStatus, Endpoint, EventType, OutboxEntry,
    RunEvent, SigningKey, StepSummary,
};
pub use workflow::{WorkflowSummary, WorkflowVersion};
pub use workspace::{ApiKeyRecord, Role, Workspace};
