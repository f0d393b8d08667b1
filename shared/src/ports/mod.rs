//! Ports: the narrow interfaces between the core and the world. Each has an
//! embedded adapter (SQLite, in-process) and, for the AWS deployment, an AWS
//! one; `contract` holds the tests every store adapter must pass.

mod conflict;
mod driver;
mod executor;
mod page;
mod set;
mod step_request;
mod store;
mod usage;

pub use conflict::{Tried, WRITE_TRIES, retry_conflicts};
pub use driver::{DriverError, RunDriver};
pub use executor::{StepCall, StepExecutor};
pub use page::{Cursor, DEFAULT_LIMIT, MAX_LIMIT, Page, PageRequest};
pub use set::StoreSet;
pub use step_request::{
    HttpRequest, LlmRequest, ModelChoice, PathSeg, SecretPart, SecretString, StepRequest,
};
pub use store::*;
pub use usage::{ResultCache, SettingsStore, UsageStore};

#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;
