//! Default list prices, USD per million tokens (input, output), matched by
//! the longest model-name prefix. Prices change: these are defaults as
//! published by the providers; a workspace's own prices (its settings) take
//! precedence, and a model priced nowhere gets no cost.

use std::collections::BTreeMap;

use crate::domain::{ModelPrice, TokenPrice, Usd};

const PRICES: &[(&str, f64, f64)] = &[
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1", 2.00, 8.00),
    ("gpt-4-turbo", 10.00, 30.00),
    ("gpt-4", 30.00, 60.00),
    ("gpt-3.5-turbo", 0.50, 1.50),
    ("o3-mini", 1.10, 4.40),
    ("o4-mini", 1.10, 4.40),
    ("claude-3-haiku", 0.25, 1.25),
    ("claude-3-5-haiku", 0.80, 4.00),
    ("claude-3-5-sonnet", 3.00, 15.00),
    ("claude-3-7-sonnet", 3.00, 15.00),
    ("claude-sonnet-4", 3.00, 15.00),
    ("claude-3-opus", 15.00, 75.00),
    ("claude-opus-4", 15.00, 75.00),
    ("gemini-1.5-flash", 0.075, 0.30),
    ("gemini-1.5-pro", 1.25, 5.00),
    ("gemini-2.0-flash", 0.10, 0.40),
    ("gemini-2.5-flash", 0.30, 2.50),
    ("gemini-2.5-pro", 1.25, 10.00),
];

/// The default price of a model.
pub fn price(model: &str) -> Option<TokenPrice> {
    PRICES
        .iter()
        .filter(|(prefix, ..)| model.starts_with(prefix))
        .max_by_key(|(prefix, ..)| prefix.len())
        .and_then(|&(_, i, o)| TokenPrice::from_dollars(i, o))
}

/// The workspace's price for `model` if it set one (longest prefix), else
/// the default.
pub fn price_with(model: &str, own: &BTreeMap<String, ModelPrice>) -> Option<TokenPrice> {
    match own
        .iter()
        .filter(|(prefix, _)| model.starts_with(prefix.as_str()))
        .max_by_key(|(prefix, _)| prefix.len())
    {
        Some((_, p)) => TokenPrice::from_dollars(p.input_per_mtok, p.output_per_mtok),
        None => price(model),
    }
}

pub fn cost_usd(model: &str, input_tokens: u64, output_tokens: u64) -> Option<Usd> {
    cost_with(price(model), input_tokens, output_tokens)
}

pub fn cost_with(price: Option<TokenPrice>, input_tokens: u64, output_tokens: u64) -> Option<Usd> {
    Some(price?.cost(input_tokens, output_tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let p = |i, o| TokenPrice::from_dollars(i, o);
        assert_eq!(price("gpt-4o-mini-2024-07-18"), p(0.15, 0.60));
        assert_eq!(price("gpt-4o-2024-08-06"), p(2.50, 10.00));
        assert_eq!(price("gpt-4"), p(30.00, 60.00));
        assert_eq!(price("llama3"), None);
        assert_eq!(cost_usd("gpt-4", 1000, 500), Usd::from_dollars(0.06));
    }

    #[test]
    fn a_workspace_price_overrides_the_default() {
        let own = BTreeMap::from([
            (
                "gpt-4o".to_owned(),
                ModelPrice {
                    input_per_mtok: 1.0,
                    output_per_mtok: 2.0,
                },
            ),
            (
                "llama".to_owned(),
                ModelPrice {
                    input_per_mtok: 0.0,
                    output_per_mtok: 0.5,
                },
            ),
        ]);
        let p = |i, o| TokenPrice::from_dollars(i, o);
        assert_eq!(price_with("gpt-4o-mini", &own), p(1.0, 2.0));
        assert_eq!(price_with("llama3-70b", &own), p(0.0, 0.5));
        assert_eq!(price_with("gpt-4", &own), p(30.0, 60.0));
        assert_eq!(price_with("mistral", &own), None);
    }
}
