//! The `llm` step: OpenAI-compatible chat completions, Anthropic Messages and
//! Google Gemini, with fallback chains and token/cost accounting.

mod executor;
pub mod prices;
mod providers;

pub use executor::{LlmConfig, LlmExecutor, key_secret_name};
