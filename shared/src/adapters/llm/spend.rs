//! Spending control for model calls: the worst-case cost checked against
//! the caps before a call, the refusal a cap gives, and cache keys.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::domain::{CapHit, StepError, TokenPrice, Usd};
use crate::ports::LlmRequest;

/// About four characters make a token in English text; a budget check needs
/// an upper estimate before the provider has counted anything.
const CHARS_PER_TOKEN: usize = 4;
/// Tokens a chat format adds per message.
const TOKENS_PER_MESSAGE: u64 = 4;

/// An estimate of the input tokens of a prompt.
pub fn estimated_input_tokens(system: Option<&str>, messages: &[Value]) -> u64 {
    let chars = |v: &Value| match v {
        Value::String(s) => s.chars().count(),
        other => other.to_string().chars().count(),
    };
    let text: usize = system.map_or(0, |s| s.chars().count())
        + messages.iter().map(|m| chars(&m["content"])).sum::<usize>();
    text.div_ceil(CHARS_PER_TOKEN) as u64 + TOKENS_PER_MESSAGE * (messages.len() as u64 + 1)
}

/// The most a call can cost: the estimated input plus every output token
/// it may produce. Zero when the model has no price.
pub fn worst_case_usd(price: Option<TokenPrice>, input_tokens: u64, max_tokens: u32) -> Usd {
    price.map_or(Usd::ZERO, |p| p.cost(input_tokens, u64::from(max_tokens)))
}

/// The step error for a call a cap refused.
pub fn refusal(
    hit: &CapHit,
    worst: Usd,
    provider: &str,
    model: &str,
    max_tokens: u32,
) -> StepError {
    let (cap, spent, what) = match hit {
        CapHit::Run { cap_usd, spent_usd } => (*cap_usd, *spent_usd, "the run's budget"),
        CapHit::Month { cap_usd, spent_usd } => {
            (*cap_usd, *spent_usd, "the workspace's monthly budget")
        }
    };
    StepError::permanent(
        crate::domain::webhook::BUDGET_EXCEEDED,
        format!(
            "{what} of {} would be exceeded: {} is spent or reserved, and this call \
             ({provider}/{model}, up to {max_tokens} output tokens) could cost {}; \
             the call was not made",
            cap, spent, worst
        ),
    )
}

/// The cache key of a resolved request: everything sent to the model, not
/// the step's pass-through `inputs`.
pub fn cache_key(request: &LlmRequest) -> String {
    // The JSON of the request without those fields: the same text for the
    // same call.
    let mut r = serde_json::to_value(request).unwrap_or_default();
    if let Some(o) = r.as_object_mut() {
        o.remove("inputs");
        o.remove("cache_ttl_secs");
    }
    let mut h = Sha256::new();
    h.update(r.to_string().as_bytes());
    format!("{:x}", h.finalize())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_worst_case_counts_every_output_token() {
        let msgs = [json!({"role": "user", "content": "x".repeat(400)})];
        let input = estimated_input_tokens(Some("be brief"), &msgs);
        assert_eq!(input, 100 + 2 + 8);
        let worst = worst_case_usd(TokenPrice::from_dollars(2.5, 10.0), input, 1000);
        // (110 × 2.5 + 1000 × 10) micro-dollars, rounded up.
        assert_eq!(worst, Usd::from_micros(10_275));
        assert_eq!(worst_case_usd(None, input, 1000), Usd::ZERO);
    }

    #[test]
    fn a_refusal_names_the_cap() {
        let d = |x| Usd::from_dollars(x).unwrap();
        let e = refusal(
            &CapHit::Run {
                cap_usd: d(0.01),
                spent_usd: d(0.0095),
            },
            d(0.002),
            "openai",
            "gpt-4o",
            256,
        );
        assert_eq!(e.code, "budget_exceeded");
        assert!(!e.retryable);
        assert!(
            e.message.contains("the run's budget of $0.01 "),
            "{}",
            e.message
        );
        let e = refusal(
            &CapHit::Month {
                cap_usd: d(20.0),
                spent_usd: d(19.99),
            },
            d(0.5),
            "anthropic",
            "claude-3-5-haiku",
            1024,
        );
        assert!(
            e.message.contains("monthly budget of $20.00"),
            "{}",
            e.message
        );
    }

    #[test]
    fn cache_keys_ignore_pass_through_inputs() {
        let req = |model: &str, inputs: Value, ttl: Option<u64>| LlmRequest {
            provider: None,
            model: model.into(),
            messages: vec![json!({"role": "user", "content": "hi"})],
            system: None,
            temperature: None,
            max_tokens: 100,
            json: false,
            fallback: vec![],
            retry_model: None,
            inputs,
            cache_ttl_secs: ttl,
        };
        let a = req("m", json!({"id": 1}), Some(60));
        let b = req("m", json!({"id": 2}), None);
        let c = req("n", Value::Null, None);
        assert_eq!(cache_key(&a), cache_key(&b));
        assert_ne!(cache_key(&a), cache_key(&c));
    }
}
