//! Adapters behind the ports.

#[cfg(feature = "aws")]
pub mod dynamo;
pub mod http;
pub mod llm;
pub mod rates;
#[cfg(feature = "aws")]
pub mod secretsmanager;
pub mod sqlite;
#[cfg(feature = "aws")]
pub mod sqs;
