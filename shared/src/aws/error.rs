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

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;
    use crate::app::DefinitionError;

    #[test]
    fn store_trouble_under_other_errors_stays_retryable() {
        let throttled = || StoreError::Unavailable("DynamoDB: ThrottlingException".into());
        // As a pass or a step result meets it: reading the definition
        // through the cache, then context.
        let e = Err::<(), _>(DefinitionError::Store(throttled()))
            .context("loading the workflow")
            .unwrap_err();
        let f = FunctionError::from_core(e);
        assert_eq!(f.error_type(), "StoreUnavailable", "{f}");
        assert!(f.to_string().contains("ThrottlingException"), "{f}");
        let e = Err::<(), _>(throttled())
            .context("saving the run")
            .unwrap_err();
        assert_eq!(FunctionError::from_core(e).error_type(), "StoreUnavailable");
        // What is not store trouble is not retried.
        let e = Err::<(), _>(DefinitionError::Missing)
            .context("loading the workflow")
            .unwrap_err();
        assert_eq!(FunctionError::from_core(e).error_type(), "Internal");
    }
}
