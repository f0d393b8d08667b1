//! The `llm` step: OpenAI-compatible chat completions, Anthropic Messages and
//! Google Gemini, with fallback chains and token/cost accounting.

mod executor;
pub mod prices;
mod providers;
mod spend;

pub use executor::{LlmConfig, LlmExecutor, Spending, key_secret_name};
