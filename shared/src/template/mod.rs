//! Templates (`{{ trigger.email_id }}`) and expressions (`step_2.score > 0.5`).
//!
//! Both are MiniJinja: one well-kept language for values and conditions, run in
//! strict mode (an undefined reference is an error, not an empty string). A
//! definition is hostile input, so every source is bounded before it is
//! compiled (`guard`: nesting depth, allowed statements, where `secrets` may
//! appear) and every evaluation is bounded while it runs (fuel for the
//! instructions it executes, `bounded` for the memory it builds, a cap on the
//! text it renders and on the value it produces).

mod bounded;
mod budget;
mod filters;
mod guard;
mod rewrite;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde_json::Value;

pub use bounded::{BUDGET_BYTES, MAX_VALUE_BYTES};
pub use budget::{MAX_VALUE_DEPTH, Scope, TIME_LIMIT, scope, scope_sized};
pub use guard::{MAX_BLOCK_DEPTH, MAX_EXPR_DEPTH, Part};

/// Instructions one render or evaluation may execute.
const FUEL: u64 = 50_000;
/// Largest text a template may render.
pub const MAX_RENDERED_BYTES: usize = 4 * 1024 * 1024;
/// Distinct sources whose checked form is kept.
const PREPARED_CACHE: usize = 4096;

/// Global functions MiniJinja provides; they are not references to steps.
const BUILTIN_GLOBALS: &[&str] = &["range", "dict", "loop", "super", "self"];

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

    fn at(source: &str, what: impl std::fmt::Display) -> Self {
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
        filters::install(&mut env);
        env
    })
}

/// True if the string contains template syntax.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// If the whole string is a single `{{ expr }}`, the expression inside.
fn whole_value_expression(s: &str) -> Option<&str> {
    let t = s.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") || inner.contains("{#")
    {
        return None;
    }
    Some(inner.trim())
}

/// Strips an optional `{{ }}` around an expression written as a template.
pub fn expression_source(s: &str) -> &str {
    whole_value_expression(s).unwrap_or(s.trim())
}

/// Runs template machinery, turning a panic inside it into an error: a
/// definition is hostile input, and a bug the engine has on some input must
/// fail that template, not the task (or process) evaluating it.
fn contained<T>(
    source: &str,
    f: impl FnOnce() -> Result<T, TemplateError>,
) -> Result<T, TemplateError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(TemplateError::at(
            source,
            "could not be evaluated (the template engine failed on it)",
        ))
    })
}

/// A source that passed `guard`, in the form that is compiled.
struct Prepared {
    rewritten: String,
    refs: BTreeSet<String>,
    secret_parts: Option<Vec<Part>>,
}

/// Checks a source once and keeps the result (sources are the strings of
/// stored definitions: few, and rendered many times).
fn prepare(source: &str, in_expr: bool) -> Result<Arc<Prepared>, TemplateError> {
    type Cache = Mutex<HashMap<(bool, String), Arc<Prepared>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    let key = (in_expr, source.to_owned());
    if let Some(p) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(p);
    }
    let (checked, names) = contained(source, || {
        let checked = guard::check(source, in_expr)?;
        let names = if in_expr {
            env()
                .compile_expression(&checked.rewritten)
                .map_err(|e| TemplateError::new(source, &e))?
                .undeclared_variables(false)
        } else {
            env()
                .template_from_str(&checked.rewritten)
                .map_err(|e| TemplateError::new(source, &e))?
                .undeclared_variables(false)
        };
        Ok((checked, names))
    })?;
    let prepared = Arc::new(Prepared {
        refs: guard::references(names),
        rewritten: checked.rewritten,
        secret_parts: checked.secret_parts,
    });
    if let Ok(mut c) = cache.lock() {
        if c.len() >= PREPARED_CACHE {
            c.clear();
        }
        c.insert(key, prepared.clone());
    }
    Ok(prepared)
}

/// The checked form of a template string (a whole `{{ expr }}` is an
/// expression).
fn prepare_template(source: &str) -> Result<Arc<Prepared>, TemplateError> {
    match whole_value_expression(source) {
        Some(expr) => prepare(expr, true),
        None => prepare(source, false),
    }
}

/// Top-level names a template string refers to (`{{step_1.body}}` → `step_1`).
/// A template that inserts secrets as `{{ secrets.NAME }}` refers to
/// `secrets`; any other use of `secrets` is an error.
pub fn template_references(source: &str) -> Result<BTreeSet<String>, TemplateError> {
    let p = prepare_template(source)?;
    let mut refs = p.refs.clone();
    if p.secret_parts.is_some() {
        refs.insert("secrets".to_owned());
    }
    Ok(refs)
}

/// Top-level names an expression refers to. Expressions cannot use secrets.
pub fn expression_references(source: &str) -> Result<BTreeSet<String>, TemplateError> {
    let p = prepare(expression_source(source), true)?;
    if p.secret_parts.is_some() {
        return Err(TemplateError::at(
            source,
            "uses a secret; secrets can only be inserted into http steps' url, query, headers and body",
        ));
    }
    Ok(p.refs.clone())
}

/// How a template string inserts secrets, split at each `{{ secrets.NAME }}`
/// (None: it inserts none).
pub fn secret_parts(source: &str) -> Result<Option<Vec<Part>>, TemplateError> {
    if !is_template(source) {
        return Ok(None);
    }
    Ok(prepare_template(source)?.secret_parts.clone())
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
        return Err(TemplateError::at(
            source,
            "refers to a value that is not defined",
        ));
    }
    contained(source, || {
        bounded::check_value(&v).map_err(|e| TemplateError::at(source, e))?;
        let json = serde_json::to_value(&v).map_err(|e| {
            TemplateError::at(source, format!("produced a value that is not JSON: {e}"))
        })?;
        // Each value a step's templates hand out is built anew (a whole
        // value copied many times is many values): it counts against the
        // step's budget as what it takes in memory.
        let held = usize::try_from(crate::memory::mem_size(&json)).unwrap_or(usize::MAX);
        budget::hand_out(held).map_err(|e| TemplateError::new(source, &e))?;
        Ok(json)
    })
}

fn secrets_here(source: &str) -> TemplateError {
    TemplateError::at(
        source,
        "inserts a secret here; secrets can only be inserted into http steps' url, query, headers and body",
    )
}

/// Evaluates a checked expression.
fn eval(source: &str, ctx: &Context) -> Result<minijinja::Value, TemplateError> {
    let p = prepare(expression_source(source), true)?;
    if p.secret_parts.is_some() {
        return Err(secrets_here(source));
    }
    contained(source, || {
        let expr = env()
            .compile_expression(&p.rewritten)
            .map_err(|e| TemplateError::new(source, &e))?;
        let _budget = budget::scope();
        expr.eval(ctx).map_err(|e| TemplateError::new(source, &e))
    })
}

/// Evaluates an expression to a JSON value.
pub fn eval_expression(source: &str, ctx: &Context) -> Result<Value, TemplateError> {
    let v = eval(source, ctx)?;
    to_json(source, v)
}

/// Evaluates a condition: the expression's truthiness.
pub fn eval_condition(source: &str, ctx: &Context) -> Result<bool, TemplateError> {
    let v = eval(source, ctx)?;
    if v.is_undefined() {
        return Err(TemplateError::at(
            source,
            "refers to a value that is not defined",
        ));
    }
    Ok(v.is_true())
}

/// Renders a template (never a whole-value expression) as text, within the
/// size limit.
fn render_checked(source: &str, p: &Prepared, ctx: &Context) -> Result<String, TemplateError> {
    contained(source, || render_unchecked(source, p, ctx))
}

fn render_unchecked(source: &str, p: &Prepared, ctx: &Context) -> Result<String, TemplateError> {
    let tmpl = env()
        .template_from_str(&p.rewritten)
        .map_err(|e| TemplateError::new(source, &e))?;
    let _budget = budget::scope();
    let mut out = bounded::CappedBytes {
        bytes: Vec::new(),
        cap: MAX_RENDERED_BYTES,
        overflowed: false,
    };
    if let Err(e) = tmpl.render_captured_to(ctx, &mut out) {
        if out.overflowed {
            return Err(TemplateError::at(
                source,
                format!("rendered more than {MAX_RENDERED_BYTES} bytes"),
            ));
        }
        return Err(TemplateError::new(source, &e));
    }
    String::from_utf8(out.bytes)
        .map_err(|_| TemplateError::at(source, "rendered text that is not UTF-8"))
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
    let p = prepare(source, false)?;
    if p.secret_parts.is_some() {
        return Err(secrets_here(source));
    }
    render_checked(source, &p, ctx).map(Value::String)
}

/// Renders a template string as text, whatever it produces (a number
/// becomes its digits). For the text around secrets.
pub fn render_text(source: &str, ctx: &Context) -> Result<String, TemplateError> {
    match render_string(source, ctx)? {
        Value::String(s) => Ok(s),
        other => Ok(other.to_string()),
    }
}

/// Renders every template string inside a JSON value (all of them on one
/// budget).
pub fn render_value(v: &Value, ctx: &Context) -> Result<Value, TemplateError> {
    let _budget = budget::scope();
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
mod tests;
