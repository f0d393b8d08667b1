use serde_json::json;

use super::*;

fn errors(v: serde_json::Value) -> Vec<ValidationError> {
    parse_workflow(&v).expect_err("definition should be refused")
}

fn has(errs: &[ValidationError], path: &str, needle: &str) -> bool {
    errs.iter()
        .any(|e| e.path == path && e.message.contains(needle))
}

#[test]
fn the_original_example_parses_and_names_the_unknown_connector() {
    let errs = errors(
        json!({"id": "wf_email_draft", "name": "Draft Email Response", "version": "1.0",
     "steps": [
      {"id": "step_1", "type": "integration", "service": "gmail", "action": "read_email", "inputs": {"email_id": "{{trigger.email_id}}"}},
      {"id": "step_2", "type": "llm", "model": "gpt-4", "prompt": "Draft a response to this email:\n\n{{step_1.body}}", "inputs": {"context": {"company": "{{user.company}}"}}},
      {"id": "step_3", "type": "transformation", "action": "extract_json", "inputs": {"text": "{{step_2.response}}"}},
      {"id": "step_4", "type": "integration", "service": "gmail", "action": "save_draft", "inputs": {"to": "{{step_1.from}}", "subject": "Re: {{step_1.subject}}", "body": "{{step_3.draft}}"}}]}),
    );
    assert!(
        has(&errs, "$.steps[0].service", "unknown connector `gmail`"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "$.steps[3].service", "unknown connector `gmail`"),
        "{errs:#?}"
    );
    // The llm step itself is valid; its `{{user.company}}` names nothing.
    assert!(
        !errs.iter().any(|e| e.path == "$.steps[1].type"),
        "{errs:#?}"
    );
    assert!(
        has(
            &errs,
            "$.steps[1].inputs.context.company",
            "unknown step `user`"
        ),
        "{errs:#?}"
    );
}

#[test]
fn dependencies_follow_from_references() {
    let wf = parse_workflow(&json!({"name": "t", "steps": [
        {"id": "a", "type": "transform", "inputs": {"x": "{{ trigger.x }}"}},
        {"id": "b", "type": "transform", "inputs": {"y": "{{ a.x }}"}, "depends_on": []},
        {"id": "c", "type": "transform", "inputs": {}, "depends_on": ["a"], "if": "b.y > 1"}
    ]}))
    .unwrap();
    assert_eq!(wf.steps[0].depends_on, Vec::<String>::new());
    assert_eq!(wf.steps[1].depends_on, vec!["a"]);
    assert_eq!(wf.steps[2].depends_on, vec!["a", "b"]);
}

#[test]
fn cycles_are_named() {
    let errs = errors(json!({"name": "t", "steps": [
        {"id": "a", "type": "transform", "inputs": "{{ c }}"},
        {"id": "b", "type": "transform", "inputs": "{{ a }}"},
        {"id": "c", "type": "transform", "inputs": "{{ b }}"},
        {"id": "d", "type": "transform", "inputs": "{{ d }}"}
    ]}));
    assert!(
        errs.iter().any(|e| e.message.contains("dependency cycle")
            && e.message.contains("a")
            && e.message.contains("b")
            && e.message.contains("c")),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "$.steps[3].inputs", "depends on itself"),
        "{errs:#?}"
    );
}

#[test]
fn every_error_is_listed_with_its_path() {
    let errs = errors(json!({"name": "t", "colour": 1, "steps": [
        {"id": "a", "type": "transform"},
        {"id": "a", "type": "transform"},
        {"id": "b", "type": "teleport"},
        {"id": "c", "type": "transform", "depends_on": ["nope"], "retry": {"max_attempts": 0}},
        {"id": "d", "type": "delay", "duration": "forever"},
        {"id": "e", "type": "transform", "inputs": {"v": "{{ ghost.x }}"}, "tmeout": "1s"}
    ]}));
    assert!(has(&errs, "$.colour", "unknown field"), "{errs:#?}");
    assert!(
        has(&errs, "$.steps[1].id", "duplicate step id `a`"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "$.steps[2].type", "unknown step type `teleport`"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "$.steps[3].depends_on[0]", "unknown step `nope`"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "$.steps[3].retry.max_attempts", "1 to"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "$.steps[4].duration", "not a duration"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "$.steps[5].inputs.v", "unknown step `ghost`"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "$.steps[5].tmeout", "unknown field"),
        "{errs:#?}"
    );
    assert_eq!(
        errs.iter()
            .find(|e| e.path == "$.steps[5].tmeout")
            .unwrap()
            .pointer,
        "/steps/5/tmeout"
    );
}

#[test]
fn oversized_definitions_are_refused() {
    let big = "x".repeat(MAX_DEFINITION_BYTES);
    let errs =
        errors(json!({"name": "t", "steps": [{"id": "a", "type": "transform", "inputs": big}]}));
    assert!(errs[0].message.contains("limit"), "{errs:#?}");
}

#[test]
fn conditions_add_branch_dependencies() {
    let wf = parse_workflow(&json!({"name": "t", "steps": [
        {"id": "check", "type": "condition", "expression": "trigger.amount > 100", "then": ["big"], "else": ["small"]},
        {"id": "big", "type": "transform", "inputs": "big"},
        {"id": "small", "type": "transform", "inputs": "small"}
    ]}))
    .unwrap();
    assert_eq!(wf.steps[1].depends_on, vec!["check"]);
    assert_eq!(
        wf.steps[1].branch,
        Some(Branch {
            condition: "check".into(),
            when: true
        })
    );
    assert_eq!(
        wf.steps[2].branch,
        Some(Branch {
            condition: "check".into(),
            when: false
        })
    );
}

#[test]
fn map_scopes() {
    let wf = parse_workflow(&json!({"name": "t", "steps": [
        {"id": "src", "type": "transform", "inputs": [1, 2, 3]},
        {"id": "k", "type": "transform", "inputs": 10},
        {"id": "each", "type": "map", "items": "{{ src }}", "concurrency": 2, "steps": [
            {"id": "double", "type": "transform", "expression": "item * 2 + k"},
            {"id": "label", "type": "transform", "inputs": "{{ index }}: {{ double }}"}
        ]},
        {"id": "after", "type": "transform", "inputs": "{{ each }}"}
    ]}))
    .unwrap();
    assert_eq!(wf.steps[2].depends_on, vec!["k", "src"]);
    let StepKind::Map(m) = &wf.steps[2].kind else {
        panic!("map")
    };
    assert_eq!(m.steps[1].depends_on, vec!["double"]);
    assert!(wf.step_by_key("each.1.label").is_some());
    assert!(wf.step_by_key("each.x.label").is_none());

    let errs = errors(json!({"name": "t", "steps": [
        {"id": "each", "type": "map", "items": [1], "step": {"id": "inner", "type": "transform", "inputs": "{{ each }}"}},
        {"id": "out", "type": "transform", "inputs": "{{ inner }} {{ item }}"}
    ]}));
    assert!(
        has(&errs, "$.steps[0].step.inputs", "depends on itself"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "$.steps[1].inputs", "runs inside map `each`"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "$.steps[1].inputs", "only defined inside a map"),
        "{errs:#?}"
    );
}

#[test]
fn input_schema_must_be_valid() {
    let errs = errors(
        json!({"name": "t", "input_schema": {"type": "nonsense"}, "steps": [{"id": "a", "type": "transform"}]}),
    );
    assert!(has(&errs, "$.input_schema", "JSON Schema"), "{errs:#?}");
}

#[test]
fn a_step_of_unknown_type_still_takes_part_in_every_check() {
    let errs = errors(json!({"name": "t", "steps": [
        {"id": "a", "type": "teleport"},
        {"id": "a", "type": "transform"},
        {"id": "b", "type": "transform", "inputs": "{{ a.x }}"}
    ]}));
    assert!(
        has(&errs, "$.steps[0].type", "unknown step type"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "$.steps[1].id", "duplicate step id `a`"),
        "{errs:#?}"
    );
    assert!(
        !errs.iter().any(|e| e.message.contains("unknown step `a`")),
        "{errs:#?}"
    );
}

#[test]
fn a_step_sending_secrets_names_its_host() {
    let step = |url: &str| {
        json!({"name": "t", "steps": [
            {"id": "call", "type": "http", "url": url, "headers": {"authorization": "Bearer {{ secrets.K }}"}}
        ]})
    };
    for ok in [
        "https://api.example.com/v1/{{ trigger.id }}",
        "http://127.0.0.1:8080/x?a={{ trigger.a }}",
        "https://api.example.com",
        "https://api.example.com?q={{ trigger.q }}",
    ] {
        assert!(parse_workflow(&step(ok)).is_ok(), "{ok}");
    }
    for bad in [
        "{{ trigger.base }}/x",
        "https://{{ trigger.host }}/x",
        "https://api.example.com{{ trigger.path }}",
        "http://127.0.0.1:18081{{ trigger.p }}",
        "https://user@api.example.com/x",
    ] {
        let errs = errors(step(bad));
        assert!(
            has(&errs, "$.steps[0].url", "name where they go"),
            "{bad}: {errs:#?}"
        );
    }
    // Without secrets, run data may choose the URL (the egress policy
    // still applies).
    let free =
        json!({"name": "t", "steps": [{"id": "call", "type": "http", "url": "{{ trigger.url }}"}]});
    assert!(parse_workflow(&free).is_ok());
}

#[test]
fn io_steps_may_not_hold_a_connection_for_hours() {
    let e = errors(json!({"name": "t", "steps": [
        {"id": "h", "type": "http", "url": "https://example.com/", "timeout": "1h"},
        {"id": "l", "type": "llm", "model": "gpt-4o-mini", "prompt": "hi", "timeout": "20m"},
        {"id": "ok", "type": "http", "url": "https://example.com/", "timeout": "5m"},
        {"id": "a", "type": "approval", "timeout": "7d"}
    ]}));
    assert!(has(&e, "$.steps[0].timeout", "at most 300s"), "{e:?}");
    assert!(has(&e, "$.steps[1].timeout", "at most 840s"), "{e:?}");
    assert_eq!(e.len(), 2, "{e:?}");
}
