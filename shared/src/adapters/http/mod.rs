//! Outbound HTTP: the `http` step's executor and the egress guard every
//! outbound call goes through.

mod egress;
mod executor;

pub use egress::{EgressDenied, EgressPolicy};
pub use executor::{
    HttpExecutor, MAX_RESPONSE_BYTES, RESERVED_HEADERS, check_url, egress_cause, guarded_client,
    retry_after,
};
