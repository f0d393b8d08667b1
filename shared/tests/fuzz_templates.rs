//! A bounded fuzz run of the entry points a definition's text reaches: the
//! workflow parser, templates and expressions, at validation and at run
//! time. Inputs are built from the language's own tokens so they reach deep
//! into the parser; whatever they are, each call must return (an error is
//! fine) — a panic fails the test, a stack overflow aborts it. Each test
//! runs on a thread with the 2 MiB stack a runtime worker has.
//!
//! `PROPTEST_CASES` sets how many inputs each property tries (CI uses the
//! default below).

use proptest::prelude::*;
use serde_json::{Value, json};
use weft::dsl::parse_workflow;
use weft::template::{self, context_from_json};

const TOKENS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "-",
    "+",
    "*",
    "**",
    "/",
    "//",
    "%",
    "~",
    "not ",
    " and ",
    " or ",
    " in ",
    " is ",
    " if ",
    " else ",
    ".",
    "|",
    ",",
    ":",
    "==",
    "<",
    ">=",
    "1",
    "0",
    "2.5",
    "'x'",
    "\"y\"",
    "true",
    "none",
    "trigger",
    "step_1",
    "item",
    "secrets",
    ".a",
    "[0]",
    "|upper",
    "|join",
    "|list",
    "|batch(2)",
    "|replace('a', 'bb')",
    "|tojson",
    "|e",
    "range(9)",
    "dict(a=1)",
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "if ",
    "endif",
    "for x in ",
    "endfor",
    "set y = ",
    "with ",
    "endwith",
    "loop.index",
    " ",
    "\n",
    "99999999",
    "'ab' * 9",
];

/// A string of up to `len` tokens, or a long run of one token (the shape
/// that used to overflow the parser).
fn source(len: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(proptest::sample::select(TOKENS), 0..len)
            .prop_map(|t| t.concat()),
        (
            proptest::sample::select(TOKENS),
            1usize..20_000,
            proptest::sample::select(TOKENS)
        )
            .prop_map(|(a, n, b)| format!("{}{}", a.repeat(n), b)),
    ]
}

fn ctx() -> template::Context {
    context_from_json(&json!({
        "trigger": {"a": "text", "n": 3, "list": [1, 2, 3]},
        "step_1": {"a": [1, {"b": "c"}]},
        "item": "x",
    }))
}

fn workflow_with(text: &str) -> Value {
    json!({"name": "fuzz", "steps": [
        {"id": "a", "type": "transform", "inputs": {"v": text}, "if": text},
        {"id": "b", "type": "transform", "expression": text},
        {"id": "c", "type": "http", "url": text, "headers": {"h": text}, "body": text},
        {"id": "d", "type": "map", "items": text, "step": {"id": "e", "type": "transform", "inputs": text}},
        {"id": "f", "type": "llm", "model": "m", "prompt": text},
        {"id": "g", "type": "condition", "expression": text, "then": ["a"]},
    ], "output": text})
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn definitions_never_crash(text in source(60)) {
        let _ = parse_workflow(&workflow_with(&text));
    }

    #[test]
    fn templates_never_crash(text in source(60)) {
        let _ = template::template_references(&text);
        let _ = template::secret_parts(&text);
        let _ = template::render_string(&text, &ctx());
        let _ = template::render_string(&format!("x {text} {{{{ {text} }}}}"), &ctx());
    }

    #[test]
    fn expressions_never_crash(text in source(60)) {
        let _ = template::expression_references(&text);
        let _ = template::eval_expression(&text, &ctx());
        let _ = template::eval_condition(&text, &ctx());
    }
}
