use crate::dsl::ValidationError;
use crate::ports::StoreError;

/// What an operation can fail with; the API maps each to a problem+json
/// response.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    NotFound(String),
    #[error("the workflow definition is invalid")]
    InvalidDefinition(Vec<ValidationError>),
    #[error("the request is invalid")]
    InvalidRequest(Vec<ValidationError>),
    #[error("{0}")]
    Conflict(String),
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    #[error("{0}")]
    BadRequest(String),
    #[error("a valid API key is required: send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// The caller's role (or its key's limits) does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// A request to a hook whose signature does not check out (why).
    #[error("{0}")]
    SignatureInvalid(String),
    /// The message is logged, never shown to clients.
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => AppError::Conflict(m),
            StoreError::Unavailable(m) => AppError::Internal(m),
        }
    }
}
