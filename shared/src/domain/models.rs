//! What names a model or a provider, and what a run may be allowed to
//! spend: rules shared by definitions, run starts and the model executor.

use serde_json::Value;

use super::Usd;

/// Providers an `llm` step can name.
pub const LLM_PROVIDERS: &[&str] = &["openai", "anthropic", "gemini"];

/// Largest per-run budget a workflow may set.
pub const MAX_BUDGET_USD: Usd = Usd::from_micros(1_000_000 * 1_000_000);

/// A run's spending cap, as a workflow or a run start gives it (dollars,
/// kept to the micro-dollar).
pub fn budget_usd(v: Option<&Value>) -> Result<Option<Usd>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .and_then(Usd::from_dollars)
            .filter(|b| b.is_positive() && *b <= MAX_BUDGET_USD)
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "expected an amount in USD of at least 0.000001 and at most {}",
                    MAX_BUDGET_USD.dollars()
                )
            }),
    }
}

/// What a model name may look like: what providers use (`gpt-4o-mini`,
/// `llama3.1:8b`, `meta-llama/llama-4-scout`), and nothing that could
/// change a URL it is put in.
pub fn is_model_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.contains("..")
        && !s.starts_with('/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@'))
}

/// What a provider name may look like: built-in providers and those an
/// operator adds (OpenAI-compatible endpoints named in `WEFT_LLM_PROVIDERS`)
/// share one name space.
pub fn is_provider_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}
