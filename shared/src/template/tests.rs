use super::*;
use serde_json::json;

fn ctx() -> Context {
    context_from_json(&json!({
        "trigger": {"email_id": "e1", "n": 3, "tags": ["a", "b"]},
        "step_1": {"body": "hello", "score": 0.7}
    }))
}

#[test]
fn whole_value_keeps_json_type() {
    assert_eq!(render_string("{{trigger.n}}", &ctx()).unwrap(), json!(3));
    assert_eq!(
        render_string(" {{ trigger.tags }} ", &ctx()).unwrap(),
        json!(["a", "b"])
    );
    assert_eq!(
        render_string("Re: {{step_1.body}}", &ctx()).unwrap(),
        json!("Re: hello")
    );
}

#[test]
fn undefined_is_an_error() {
    let err = render_string("{{trigger.missing}}", &ctx()).unwrap_err();
    assert!(err.message.contains("trigger.missing"), "{}", err.message);
    assert!(render_string("x {{trigger.missing}}", &ctx()).is_err());
    assert_eq!(
        render_string("{{ trigger.missing | default('d') }}", &ctx()).unwrap(),
        json!("d")
    );
}

#[test]
fn references_are_root_names() {
    let refs = template_references("{{step_1.body}} and {{ trigger.x }}").unwrap();
    assert_eq!(
        refs.into_iter().collect::<Vec<_>>(),
        vec!["step_1", "trigger"]
    );
    let refs = expression_references("step_2.score > 0.5 and range(3)").unwrap();
    assert_eq!(refs.into_iter().collect::<Vec<_>>(), vec!["step_2"]);
}

#[test]
fn conditions() {
    assert!(eval_condition("step_1.score > 0.5", &ctx()).unwrap());
    assert!(!eval_condition("{{ step_1.score > 0.9 }}", &ctx()).unwrap());
}

#[test]
fn runaway_templates_are_stopped() {
    let err = render_string("{% for i in range(100000) %}{{ i }}{% endfor %}", &ctx()).unwrap_err();
    assert!(err.message.contains("too expensive"), "{}", err.message);
}

#[test]
fn syntax_errors_name_the_source() {
    let err = template_references("{{ step_1.body ").unwrap_err();
    assert!(err.message.contains("step_1.body"), "{}", err.message);
}

fn err(r: Result<Value, TemplateError>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {} bytes", v.to_string().len()),
        Err(e) => e.message,
    }
}

/// Inputs that used to overflow the stack (each test runs on a thread with
/// the 2 MiB stack a runtime worker has): refused before parsing, naming
/// the limit.
#[test]
fn deep_nesting_is_refused_before_parsing() {
    let deep = [
        format!("{}1", "-".repeat(10_000)),
        format!("{{{{ {} true }}}}", "not ".repeat(10_000)),
        format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000)),
        format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)),
        format!("1{}", " + 1".repeat(10_000)),
        format!("trigger{}", ".a".repeat(10_000)),
        format!("trigger{}", "[0]".repeat(10_000)),
        format!("trigger{}", "|first".repeat(10_000)),
        format!("{}1", "1 if true else ".repeat(10_000)),
    ];
    for src in &deep {
        let msg = expression_references(src).unwrap_err().message;
        assert!(msg.contains(&MAX_EXPR_DEPTH.to_string()), "{msg}");
        let msg = err(eval_expression(src, &ctx()));
        assert!(msg.contains("levels deep"), "{msg}");
        let in_template = format!("x {{{{ {src} }}}}");
        assert!(template_references(&in_template).is_err());
    }
    let blocks = format!(
        "{}x{}",
        "{% if true %}".repeat(1000),
        "{% endif %}".repeat(1000)
    );
    let msg = template_references(&blocks).unwrap_err().message;
    assert!(msg.contains("blocks more than"), "{msg}");
    // Within the limits, nesting works.
    let ok = format!("{}1{}", "(".repeat(30), ")".repeat(30));
    assert_eq!(eval_expression(&ok, &ctx()).unwrap(), json!(1));
    assert_eq!(
        eval_expression(&format!("1{}", " + 1".repeat(30)), &ctx()).unwrap(),
        json!(31)
    );
}

/// Fuel bounds instructions, not memory: operations that build large
/// values stop at the budget with a clear error.
#[test]
fn building_large_values_is_refused() {
    for src in [
        "'x' * 100000000",
        "([0] * 1000000000) | join",
        "[0] * 1000000000",
        "(trigger.tags * 100000) | list",
        "('x' * 4000000) ~ ('x' * 4000000) ~ ('x' * 4000000) ~ ('x' * 4000000) ~ ('x' * 4000000)",
        "('x' * 3000000) + ('x' * 3000000) + ('x' * 3000000) + ('x' * 3000000) + ('x' * 3000000) + ('x' * 3000000)",
        "('a' * 1000000) | replace('a', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb')",
        "('&' * 2000000) | e | e | e",
        "['x' * 1000000, 'x' * 1000000, 'x' * 1000000, 'x' * 1000000, 'x' * 1000000, 'x' * 1000000, 'x' * 1000000, 'x' * 1000000, 'x' * 1000000, 'x' * 1000000, 'x' * 1000000, 'x' * 1000000, 'x' * 1000000, 'x' * 1000000, 'x' * 1000000, 'x' * 1000000, 'x' * 1000000]",
        "[1] | batch(1000000000, 'x') | list",
        "('a\\n' * 100000) | indent(1000)",
    ] {
        let msg = err(eval_expression(src, &ctx()));
        assert!(
            msg.contains("MiB") || msg.contains("items") || msg.contains("at most"),
            "{src}: {msg}"
        );
    }
    // A loop may not make the text grow without bound either.
    let msg = err(render_string(
        "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
        &ctx(),
    ));
    assert!(
        msg.contains("bytes") || msg.contains("fuel") || msg.contains("MiB"),
        "{msg}"
    );
}

/// What could carry a value from one iteration or call to the next, and
/// so grow it, is not available.
#[test]
fn accumulating_constructs_are_refused() {
    for src in [
        "{% set ns = namespace(x=[]) %}{% for i in range(5000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}",
        "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('x') }}",
        "{% for x in trigger.tags recursive %}{{ loop(x) }}{% endfor %}",
        "{% filter upper %}x{% endfilter %}",
        "{% set x %}x{% endset %}",
        "{{ __weft_mul('x', 5) }}",
    ] {
        assert!(template_references(src).is_err(), "{src} was accepted");
        assert!(render_string(src, &ctx()).is_err(), "{src} rendered");
    }
}

/// The same value from both, or an error from both.
fn agree<T: PartialEq + std::fmt::Debug, E: std::fmt::Debug, F: std::fmt::Debug>(
    src: &str,
    ours: &Result<T, E>,
    theirs: &Result<T, F>,
) {
    match (ours, theirs) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{src}"),
        (Err(_), Err(_)) => {}
        _ => panic!("{src}: ours {ours:?}, MiniJinja {theirs:?}"),
    }
}

/// Operators behave as MiniJinja's own on everything that is not big.
#[test]
fn bounded_operators_agree_with_minijinja() {
    let stock = Environment::new();
    let c = json!({
        "s": "ab", "n": 3, "f": 1.5, "l": [1, 2], "m": {"k": "v"}, "b": true, "z": null,
        "big": 9007199254740993i64
    });
    for src in [
        "n * 2",
        "n * f",
        "s * 3",
        "3 * s",
        "l * 2",
        "2 * l",
        "n + 1",
        "f + n",
        "s + s",
        "l + l",
        "s ~ n",
        "n ~ l",
        "m ~ s",
        "s ~ z",
        "b ~ s",
        "1 + 2 * 3 ~ 'x'",
        "(l + [3]) * 2",
        "s * 0",
        "big * 3",
        "big + big",
        "b + 1",
        "n * b",
        "'%' ~ s ~ '%'",
        "range(3) + l",
        "l | join('-')",
        "l | sum",
        "s | replace('a', 'zz')",
        "s | upper ~ s | lower",
        "[s, n] | join",
        "l | map('string') | join(',')",
        "m | tojson",
        "s | string",
    ] {
        let ours = eval_expression(src, &context_from_json(&c));
        let theirs = stock
            .compile_expression(src)
            .and_then(|e| e.eval(minijinja::Value::from_serialize(&c)))
            .map(|v| serde_json::to_value(&v).unwrap());
        agree(src, &ours, &theirs);
    }
    for src in ["s * 'x'", "m + m", "l * s", "z + 1"] {
        assert!(
            eval_expression(src, &context_from_json(&c)).is_err(),
            "{src}"
        );
    }
}

#[test]
fn values_too_deep_to_store_are_refused() {
    let mut deep = json!(1);
    for _ in 0..60 {
        deep = json!([deep]);
    }
    let c = context_from_json(&json!({ "d": deep }));
    assert!(eval_expression("d", &c).is_ok());
    let msg = err(eval_expression("[[[[[d]]]]]", &c));
    assert!(msg.contains("nested more than"), "{msg}");
}

#[test]
fn secrets_are_only_inserted_whole() {
    assert_eq!(
        secret_parts("Bearer {{ secrets.API_KEY }}").unwrap(),
        Some(vec![
            Part::Text("Bearer ".into()),
            Part::Secret("API_KEY".into())
        ])
    );
    assert_eq!(
        secret_parts("{{ secrets['K'] }}").unwrap(),
        Some(vec![Part::Secret("K".into())])
    );
    assert_eq!(
        secret_parts("{{ trigger.a }}:{{secrets.K}}!").unwrap(),
        Some(vec![
            Part::Template("{{ trigger.a }}".into()),
            Part::Text(":".into()),
            Part::Secret("K".into()),
            Part::Text("!".into()),
        ])
    );
    assert_eq!(secret_parts("{{ trigger.a }}").unwrap(), None);
    for bad in [
        "{{ secrets.K[1:] }}",
        "{{ secrets.K | upper }}",
        "x {{ secrets.K ~ 'a' }}",
        "{{ secrets }}",
        "{{ secrets[trigger.name] }}",
        "{% if true %}{{ secrets.K }}{% endif %}",
        "{% set a = 1 %}{{ secrets.K }}",
        "x {{- secrets.K }}",
        "{{ secrets.K if true else 1 }}",
    ] {
        let e = secret_parts(bad).unwrap_err().message;
        assert!(
            e.contains("secret") || e.contains("statement"),
            "{bad}: {e}"
        );
    }
    assert!(expression_references("secrets.K").is_err());
    // Rendering never resolves a secret, whatever the text holds.
    assert!(render_string("{{ secrets.K }}", &ctx()).is_err());
    assert!(render_string("a {{ secrets.K }}", &ctx()).is_err());
}

/// What the limits let through fits in half a worker thread's stack, in
/// a debug build: the deepest shapes of each kind, parsed, compiled and run.
#[test]
fn the_deepest_accepted_shapes_fit_in_a_small_stack() {
    let n = MAX_EXPR_DEPTH;
    let shapes = [
        format!("{}1{}", "(".repeat(n / 2 - 1), ")".repeat(n / 2 - 1)),
        format!("{}1{}", "[".repeat(n / 2 - 1), "]".repeat(n / 2 - 1)),
        format!("{}true", "not ".repeat(n - 2)),
        format!("{}1", "-".repeat(n - 2)),
        format!("1{}", " ~ 1".repeat(n / 2 - 1)),
        format!("1{}", " * 1".repeat(n / 2 - 1)),
        format!("trigger{}", ".tags".repeat(n - 2)),
        format!("{}1{}", "(-".repeat(n / 3 - 1), ")".repeat(n / 3 - 1)),
    ];
    let worker = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(move || {
            for s in &shapes {
                assert!(
                    expression_references(s).is_ok(),
                    "{s} should be within the limit"
                );
                let _ = eval_expression(s, &ctx());
                let _ = render_string(
                    &format!("{{% if true %}}{{{{ {s} }}}}{{% endif %}}"),
                    &ctx(),
                );
            }
        })
        .expect("thread");
    worker.join().expect("no overflow");
}

/// What a hostile definition tried (each used to crash the process, hang it
/// or allocate without bound): every one now fails fast with an error.
#[test]
fn costly_operations_are_charged_before_they_run() {
    let big = context_from_json(&json!({
        "s": "ab".repeat(4_000_000),
        "t": "ab".repeat(4_000_000),
    }));
    for src in [
        // Pretty printing multiplies a value by its indentation.
        "[1] | tojson(indent=1000000000000000)",
        "[1,2,3,4,5] | tojson(indent=100000000)",
        // Comparing lists of shared lists walks every copy.
        "{% set a0 = [1] %}{% set a1 = [a0, a0] %}{% set a2 = [a1, a1] %}{% set a3 = [a2, a2] %}{% set a4 = [a3, a3] %}{% set a5 = [a4, a4] %}{% set a6 = [a5, a5] %}{% set a7 = [a6, a6] %}{% set a8 = [a7, a7] %}{% set a9 = [a8, a8] %}{% set a10 = [a9, a9] %}{% set a11 = [a10, a10] %}{% set a12 = [a11, a11] %}{% set a13 = [a12, a12] %}{% set a14 = [a13, a13] %}{% set a15 = [a14, a14] %}{% set a16 = [a15, a15] %}{% set a17 = [a16, a16] %}{% set a18 = [a17, a17] %}{% set a19 = [a18, a18] %}{% set a20 = [a19, a19] %}{% set a21 = [a20, a20] %}{% set a22 = [a21, a21] %}{{ a22 == a22 }}",
        // A filter over a large string, many times.
        "{% for i in range(8000) %}{{ s | max }}{% endfor %}",
        "s | map('upper') | list",
        "s | sort",
        "{% for i in range(1000) %}{% if -1 in range(100000) %}x{% endif %}{% endfor %}",
        "{% for i in range(10000) %}{% if s == t %}x{% endif %}{% endfor %}",
        // Slices copy what they take; a string's character is found by
        // walking to it.
        "{% for i in range(100) %}{% set c = s[1:] %}{% endfor %}ok",
        "{% set u = '\u{1F600}' * 2000000 %}{% for i in range(40) %}{% set c = u[i:] %}{% endfor %}ok",
        "{% for i in range(100) %}{{ s[7999999] }}{% endfor %}",
        "{% for i in range(100) %}{{ s[-1] }}{% endfor %}",
        "{% for i in range(100) %}{% set c = (s)[::2] %}{% endfor %}ok",
        // `replace` and `escape` work on their arguments as text.
        "{% set b = 'x' * 4000000 %}{{ ('1' * 3000) | replace(1, b) | length }}",
        "{% set b = 'x' * 4000000 %}{{ 1111111111 | replace(1, b) | length }}",
    ] {
        let r = if src.contains("{%") {
            render_string(src, &big)
        } else {
            eval_expression(src, &big)
        };
        let msg = err(r);
        assert!(
            msg.contains("MiB") || msg.contains("indents") || msg.contains("longer than"),
            "{}: {msg}",
            &src[..src.len().min(60)]
        );
    }
}

#[test]
fn values_cannot_be_built_deeper_than_they_are_stored() {
    // Each `set` nests what the last built; the chain is under every
    // per-expression limit.
    let mut src = String::from("{% set x0 = 0 %}");
    for i in 1..=67 {
        src.push_str(&format!(
            "{{% set x{i} = {}x{}{} %}}",
            "[".repeat(30),
            i - 1,
            "]".repeat(30)
        ));
    }
    src.push_str("{{ x67 }}");
    let msg = err(render_string(&src, &ctx()));
    assert!(msg.contains("nested more than"), "{msg}");
}

#[test]
fn elif_chains_count_as_nesting() {
    let src = format!(
        "{{% if false %}}{}{{% endif %}}",
        "{% elif false %}".repeat(1000)
    );
    let msg = template_references(&src).unwrap_err().message;
    assert!(msg.contains("elif"), "{msg}");
    let ok = format!(
        "{{% if false %}}{}x{{% endif %}}",
        "{% elif false %}".repeat(20)
    );
    assert!(template_references(&ok).is_ok());
}

#[test]
fn one_budget_serves_a_whole_value() {
    // Each string alone is within the budget; together they are not.
    let mut inputs = serde_json::Map::new();
    for i in 0..100 {
        inputs.insert(format!("k{i}"), json!("{{ 'a' * 8000000 }}"));
    }
    let msg = render_value(&Value::Object(inputs), &ctx())
        .unwrap_err()
        .message;
    assert!(msg.contains("MiB"), "{msg}");
}

#[test]
fn chained_comparisons_are_refused() {
    let msg = expression_references("1 < 2 < 3").unwrap_err().message;
    assert!(msg.contains("a < b and b < c"), "{msg}");
}

/// Subscripts, slices, unbracketed tuples and undefined operands behave as
/// MiniJinja's own (strict, as the engine's environment is).
#[test]
fn rewritten_subscripts_agree_with_minijinja() {
    let mut stock = Environment::new();
    stock.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let c = json!({
        "s": "héllo", "l": [1, [2, 3], 4, 5], "m": {"k": "v", "n": {"x": [7, 8]}},
        "user": {}, "i": 1
    });
    for src in [
        "l[0]",
        "l[-1]",
        "l[1][0]",
        "l[1:]",
        "l[:2]",
        "l[::2]",
        "l[1::]",
        "l[:-1:]",
        "l[::-1]",
        "l[i:i + 2]",
        "l[1:][0]",
        "(l)[0]",
        "(l[1])[1]",
        "s[1]",
        "s[-1]",
        "s[1:3]",
        "s[::-1]",
        "m['k']",
        "m['n']['x'][1]",
        "m.n['x'][0]",
        "m['missing'] is defined",
        "m['k'] ~ s[0] ~ l[0]",
        "l[0] * 2 + l[2]",
        "l[l[0]]",
        "[l[0], s[0]]",
        "{'a': l[0]}",
        "s[0] == 'h'",
        "'v' in m['k']",
        "l[10] is defined",
        "range(5)[1:3] | list",
        "l[1][5:]",
        "m['missing']",
        "m['missing'] ~ 'x'",
        "user.role != 'guest'",
        "user.role == 'guest'",
        "user.role ~ '!'",
        "user.role in ['a']",
        "user.role * 2",
        "user.role + 1",
        "user.x[0]",
        "user.x[1:]",
        "missing[0]",
    ] {
        let ours = eval_expression(src, &context_from_json(&c));
        let theirs = stock
            .compile_expression(src)
            .and_then(|e| e.eval(minijinja::Value::from_serialize(&c)))
            .and_then(|v| {
                if v.is_undefined() {
                    Err(minijinja::Error::from(minijinja::ErrorKind::UndefinedError))
                } else {
                    Ok(serde_json::to_value(&v).unwrap())
                }
            });
        agree(src, &ours, &theirs);
    }
    for src in [
        "{% set p, q = l[0], s[0] %}{{ p }}{{ q }}",
        "{% set p, q = 1, 2 %}{{ p + q }}",
        "{% for a, b in [[1, 2], [3, 4]] %}{{ a }}{{ b }}{% endfor %}",
        "{% if user.role != 'guest' %}ran{% endif %}",
        "{{ s[:2] }}-{{ l[1][1:] }}",
    ] {
        let ours = render_string(src, &context_from_json(&c)).map(|v| match v {
            Value::String(t) => t,
            other => other.to_string(),
        });
        let theirs = stock.render_str(src, minijinja::Value::from_serialize(&c));
        agree(src, &ours, &theirs);
    }
}

#[test]
fn copies_of_a_large_value_count_against_the_steps_budget() {
    // One copy of a dense value is fine; the step's templates cannot hand
    // out dozens (each copy is built anew, several MiB in memory each).
    let dense: Vec<serde_json::Value> = (0..20_000).map(|_| json!({"a": 0})).collect();
    let ctx = context_from_json(&json!({"trigger": {"x": dense}}));
    let one = render_value(&json!({"k": "{{ trigger.x }}"}), &ctx);
    assert!(one.is_ok(), "{one:?}");
    let keys: serde_json::Map<String, serde_json::Value> = (0..60)
        .map(|i| (format!("k{i}"), json!("{{ trigger.x }}")))
        .collect();
    let err = render_value(&serde_json::Value::Object(keys), &ctx).unwrap_err();
    assert!(err.message.contains("MiB of memory"), "{}", err.message);
}
