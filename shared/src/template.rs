//! Templates (`{{ trigger.email_id }}`) and expressions (`step_2.score > 0.5`).
//!
//! Both are MiniJinja: one well-kept language for values and conditions, run in
//! strict mode (an undefined reference is an error, not an empty string) with a
//! fuel limit so no definition can make the engine loop for long.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde_json::Value;

/// Instructions one render or evaluation may execute.
const FUEL: u64 = 50_000;
/// Largest string a template may produce.
pub const MAX_RENDERED_BYTES: usize = 1024 * 1024;

/// Global functions MiniJinja provides; they are not references to steps.
const BUILTIN_GLOBALS: &[&str] = &[
    "range",
    "dict",
    "namespace",
    "debug",
    "loop",
    "super",
    "self",
];

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    pub message: String,
}

impl TemplateError {
    fn new(source: &str, err: &minijinja::Error) -> Self {
        let what = match err.kind() {
            ErrorKind::UndefinedError => "refers to a value that is not defined".to_owned(),
            ErrorKind::OutOfFuel => "is too expensive to evaluate (fuel limit reached)".to_owned(),
            _ => {
                let mut detail = err.kind().to_string();
                if let Some(d) = err.detail() {
                    detail = format!("{detail}: {d}");
                }
                format!("failed: {detail}")
            }
        };
        Self {
            message: format!("`{}` {what}", shorten(source)),
        }
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= 120 {
        s.to_owned()
    } else {
        let head: String = s.chars().take(117).collect();
        format!("{head}...")
    }
}

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        env
    })
}

/// True if the string contains template syntax.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// If the whole string is a single `{{ expr }}`, the expression inside.
fn whole_value_expression(s: &str) -> Option<&str> {
    let t = s.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some(inner.trim())
}

/// Strips an optional `{{ }}` around an expression written as a template.
pub fn expression_source(s: &str) -> &str {
    whole_value_expression(s).unwrap_or(s.trim())
}

fn roots(names: std::collections::HashSet<String>) -> BTreeSet<String> {
    names
        .into_iter()
        .filter(|n| !BUILTIN_GLOBALS.contains(&n.as_str()))
        .collect()
}

/// Top-level names a template string refers to (`{{step_1.body}}` → `step_1`).
pub fn template_references(source: &str) -> Result<BTreeSet<String>, TemplateError> {
    if let Some(expr) = whole_value_expression(source) {
        return expression_references(expr);
    }
    let tmpl = env()
        .template_from_str(source)
        .map_err(|e| TemplateError::new(source, &e))?;
    Ok(roots(tmpl.undeclared_variables(false)))
}

/// Top-level names an expression refers to.
pub fn expression_references(source: &str) -> Result<BTreeSet<String>, TemplateError> {
    let expr = env()
        .compile_expression(expression_source(source))
        .map_err(|e| TemplateError::new(source, &e))?;
    Ok(roots(expr.undeclared_variables(false)))
}

/// Every template reference inside a JSON value (strings, nested).
pub fn value_references(v: &Value, out: &mut BTreeSet<String>) -> Result<(), TemplateError> {
    match v {
        Value::String(s) if is_template(s) => out.extend(template_references(s)?),
        Value::Array(items) => {
            for i in items {
                value_references(i, out)?;
            }
        }
        Value::Object(map) => {
            for i in map.values() {
                value_references(i, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A render context: the names a template may use, as MiniJinja values.
pub type Context = minijinja::Value;

pub fn context_from_json(v: &Value) -> Context {
    minijinja::Value::from_serialize(v)
}

fn to_json(source: &str, v: minijinja::Value) -> Result<Value, TemplateError> {
    if v.is_undefined() {
        return Err(TemplateError {
            message: format!(
                "`{}` refers to a value that is not defined",
                shorten(source)
            ),
        });
    }
    serde_json::to_value(&v).map_err(|e| TemplateError {
        message: format!(
            "`{}` produced a value that is not JSON: {e}",
            shorten(source)
        ),
    })
}

/// Evaluates an expression to a JSON value.
pub fn eval_expression(source: &str, ctx: &Context) -> Result<Value, TemplateError> {
    let expr = env()
        .compile_expression(expression_source(source))
        .map_err(|e| TemplateError::new(source, &e))?;
    let v = expr.eval(ctx).map_err(|e| TemplateError::new(source, &e))?;
    to_json(source, v)
}

/// Evaluates a condition: the expression's truthiness.
pub fn eval_condition(source: &str, ctx: &Context) -> Result<bool, TemplateError> {
    let expr = env()
        .compile_expression(expression_source(source))
        .map_err(|e| TemplateError::new(source, &e))?;
    let v = expr.eval(ctx).map_err(|e| TemplateError::new(source, &e))?;
    if v.is_undefined() {
        return Err(TemplateError {
            message: format!(
                "`{}` refers to a value that is not defined",
                shorten(source)
            ),
        });
    }
    Ok(v.is_true())
}

/// Renders a template string. A string that is one whole `{{ expr }}` keeps
/// the expression's JSON type; anything else renders to a string.
pub fn render_string(source: &str, ctx: &Context) -> Result<Value, TemplateError> {
    if !is_template(source) {
        return Ok(Value::String(source.to_owned()));
    }
    if let Some(expr) = whole_value_expression(source) {
        return eval_expression(expr, ctx);
    }
    let out = env()
        .render_str(source, ctx)
        .map_err(|e| TemplateError::new(source, &e))?;
    if out.len() > MAX_RENDERED_BYTES {
        return Err(TemplateError {
            message: format!(
                "`{}` rendered {} bytes; the limit is {MAX_RENDERED_BYTES}",
                shorten(source),
                out.len()
            ),
        });
    }
    Ok(Value::String(out))
}

/// Renders every template string inside a JSON value.
pub fn render_value(v: &Value, ctx: &Context) -> Result<Value, TemplateError> {
    Ok(match v {
        Value::String(s) => render_string(s, ctx)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| render_value(i, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, i)| Ok((k.clone(), render_value(i, ctx)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
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
        let err =
            render_string("{% for i in range(100000) %}{{ i }}{% endfor %}", &ctx()).unwrap_err();
        assert!(err.message.contains("too expensive"), "{}", err.message);
    }

    #[test]
    fn syntax_errors_name_the_source() {
        let err = template_references("{{ step_1.body ").unwrap_err();
        assert!(err.message.contains("step_1.body"), "{}", err.message);
    }
}
