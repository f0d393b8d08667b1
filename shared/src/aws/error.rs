//! What a function answers when it fails. The variant's name is the
//! Lambda `errorType` the state machine's Retry and Catch match on.

use crate::ports::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// DynamoDB or another dependency could not be reached: worth retrying.
    #[error("{0}")]
    StoreUnavailable(String),
    /// The payload is not what this function takes: a bug or a hand-made
    /// event; retrying cannot help.
    #[error("{0}")]
    BadRequest(String),
    /// Anything else (the run's data is inconsistent, a bug).
    #[error("{0}")]
    Internal(String),
}

impl FunctionError {
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::StoreUnavailable(_) => "StoreUnavailable",
            Self::BadRequest(_) => "BadRequest",
            Self::Internal(_) => "Internal",
        }
    }

    /// Classifies an error from the core: store trouble anywhere in the
    /// chain is `StoreUnavailable`.
    pub fn from_core(e: anyhow::Error) -> Self {
        let text = format!("{e:#}");
        if e.chain().any(|c| {
            matches!(
                c.downcast_ref::<StoreError>(),
                Some(StoreError::Unavailable(_))
            )
        }) {
            Self::StoreUnavailable(text)
        } else {
            Self::Internal(text)
        }
    }
}

impl From<StoreError> for FunctionError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => Self::StoreUnavailable(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<FunctionError> for lambda_runtime::Diagnostic {
    fn from(e: FunctionError) -> Self {
        tracing::error!(error_type = e.error_type(), error = %e, "the function failed");
        lambda_runtime::Diagnostic {
            error_type: e.error_type().to_owned(),
            error_message: e.to_string(),
        }
    }
}
