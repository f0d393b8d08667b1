//! Ports: the narrow interfaces between the core and the world. Each has an
//! embedded adapter (SQLite, in-process) and, for the AWS deployment, an AWS
//! one; `contract` holds the tests every store adapter must pass.

mod page;
mod store;

pub use page::{Cursor, Page, PageRequest, DEFAULT_LIMIT, MAX_LIMIT};
pub use store::*;

#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;
