//! Memory bounds for template evaluation. Fuel bounds how many instructions
//! a template runs, not how much one instruction builds (`'x' * 10**8`,
//! `([0] * 10**9) | join`, a string doubled in a chain of `~`), so every
//! operation that can build a larger value than it was given goes through
//! here: it checks what it is about to build against a per-evaluation
//! budget before building it.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::OnceLock;

use minijinja::value::{Rest, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Expression, State, Value};

/// Bytes (of strings, and about 24 per list item) one evaluation may build.
pub const BUDGET_BYTES: usize = 16 * 1024 * 1024;
/// Largest value (as JSON) a template or expression may produce.
pub const MAX_VALUE_BYTES: usize = 8 * 1024 * 1024;
/// Deepest nesting of lists and objects a value may have (what a run may
/// record).
pub use crate::domain::limits::MAX_VALUE_DEPTH;
/// Most items one operation may build a list of.
pub const MAX_ITEMS: usize = 100_000;

/// The functions the rewritten operators call (see `guard`).
pub const MUL_FN: &str = "__weft_mul";
pub const ADD_FN: &str = "__weft_add";
pub const CAT_FN: &str = "__weft_cat";

const ITEM_BYTES: usize = 24;

thread_local! {
    static BUDGET: Cell<usize> = const { Cell::new(BUDGET_BYTES) };
}

/// Gives the current thread a fresh budget for one evaluation.
pub(super) fn reset_budget() {
    BUDGET.with(|b| b.set(BUDGET_BYTES));
}

fn too_large(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "{what} would build more than the {} MiB a template may build",
            BUDGET_BYTES / (1024 * 1024)
        ),
    )
}

/// Takes `bytes` from the budget, or fails if it does not hold them.
fn charge(bytes: usize, what: &str) -> Result<(), Error> {
    BUDGET.with(|b| {
        let left = b.get();
        if bytes > left {
            b.set(0);
            Err(too_large(what))
        } else {
            b.set(left - bytes);
            Ok(())
        }
    })
}

fn budget_left() -> usize {
    BUDGET.with(Cell::get)
}

/// A string that refuses to grow past `cap` bytes.
pub(super) struct Capped {
    pub text: String,
    cap: usize,
}

impl Capped {
    pub fn new(cap: usize) -> Self {
        Self {
            text: String::new(),
            cap,
        }
    }
}

impl std::fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.text.len() + s.len() > self.cap {
            return Err(std::fmt::Error);
        }
        self.text.push_str(s);
        Ok(())
    }
}

/// An `io::Write` for rendered text that stops at `cap` bytes.
pub(super) struct CappedBytes {
    pub bytes: Vec<u8>,
    pub cap: usize,
    pub overflowed: bool,
}

impl std::io::Write for CappedBytes {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.cap {
            self.overflowed = true;
            return Err(std::io::Error::other("the rendered text is too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Displays a value within what the budget has left, and charges it.
fn display(parts: &[&Value], what: &str) -> Result<String, Error> {
    let cap = budget_left().min(MAX_VALUE_BYTES);
    let mut out = Capped::new(cap);
    for p in parts {
        if write!(out, "{p}").is_err() {
            charge(usize::MAX, what)?;
        }
    }
    charge(out.text.len(), what)?;
    Ok(out.text)
}

/// Items of a list-like value, at most `MAX_ITEMS` (counting the budget).
fn items(v: &Value, what: &str) -> Result<Vec<Value>, Error> {
    let mut out = Vec::new();
    for item in v.try_iter()? {
        if out.len() >= MAX_ITEMS {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("{what} would build a list of more than {MAX_ITEMS} items"),
            ));
        }
        out.push(item);
    }
    charge(out.len() * ITEM_BYTES, what)?;
    Ok(out)
}

fn is_listlike(v: &Value) -> bool {
    matches!(v.kind(), ValueKind::Seq | ValueKind::Iterable)
}

/// MiniJinja's own operator on operands that cannot build anything large
/// (numbers, booleans, and the errors other types give).
fn native(op: &str, a: Value, b: Value) -> Result<Value, Error> {
    static EXPRS: OnceLock<Vec<(&'static str, Expression<'static, 'static>)>> = OnceLock::new();
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    let env = ENV.get_or_init(Environment::new);
    let exprs = EXPRS.get_or_init(|| {
        ["a * b", "a + b", "a ~ b"]
            .into_iter()
            .filter_map(|src| env.compile_expression(src).ok().map(|e| (src, e)))
            .collect()
    });
    let src = match op {
        "*" => "a * b",
        "+" => "a + b",
        _ => "a ~ b",
    };
    let (_, expr) = exprs
        .iter()
        .find(|(s, _)| *s == src)
        .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "operator unavailable"))?;
    expr.eval(minijinja::context! { a => a, b => b })
}

/// `a * b`: numbers multiply; a string or a list repeats, within bounds.
pub fn mul(a: Value, b: Value) -> Result<Value, Error> {
    let (base, times) = if a.is_number() { (&b, &a) } else { (&a, &b) };
    if let Some(s) = base.as_str()
        && let Some(n) = times.as_usize()
    {
        let size = s.len().saturating_mul(n);
        if size > MAX_VALUE_BYTES {
            return Err(too_large("repeating a string"));
        }
        charge(size, "repeating a string")?;
        return Ok(Value::from(s.repeat(n)));
    }
    if is_listlike(base)
        && let Some(n) = times.as_usize()
    {
        let one = items(base, "repeating a list")?;
        if one.len().saturating_mul(n) > MAX_ITEMS {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("repeating a list would build more than {MAX_ITEMS} items"),
            ));
        }
        charge(one.len() * n * ITEM_BYTES, "repeating a list")?;
        let mut out = Vec::with_capacity(one.len() * n);
        for _ in 0..n {
            out.extend(one.iter().cloned());
        }
        return Ok(Value::from(out));
    }
    native("*", a, b)
}

/// `a + b`: numbers add; strings and lists join, within bounds.
pub fn add(a: Value, b: Value) -> Result<Value, Error> {
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        charge(x.len() + y.len(), "joining strings")?;
        return Ok(Value::from([x, y].concat()));
    }
    if is_listlike(&a) && is_listlike(&b) {
        let mut out = items(&a, "joining lists")?;
        out.extend(items(&b, "joining lists")?);
        if out.len() > MAX_ITEMS {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("joining lists would build more than {MAX_ITEMS} items"),
            ));
        }
        return Ok(Value::from(out));
    }
    native("+", a, b)
}

/// `a ~ b`: both as text, joined, within bounds.
pub fn cat(a: Value, b: Value) -> Result<Value, Error> {
    display(&[&a, &b], "joining text with `~`").map(Value::from)
}

/// Size (as JSON, roughly) and depth of a value, walked without recursion
/// and given up as soon as either passes its limit.
pub fn check_value(v: &Value) -> Result<(), String> {
    let mut stack: Vec<(Value, usize)> = vec![(v.clone(), 1)];
    let mut size = 0usize;
    while let Some((v, depth)) = stack.pop() {
        if depth > MAX_VALUE_DEPTH {
            return Err(format!(
                "produced a value nested more than {MAX_VALUE_DEPTH} levels deep"
            ));
        }
        match v.kind() {
            ValueKind::String => size += v.as_str().map_or(0, str::len) + 2,
            ValueKind::Seq | ValueKind::Iterable => {
                let iter = v.try_iter().map_err(|e| e.to_string())?;
                for item in iter {
                    size += 1;
                    stack.push((item, depth + 1));
                    if stack.len() > MAX_ITEMS * 2 {
                        return Err(format!("produced a list of more than {MAX_ITEMS} items"));
                    }
                }
                size += 2;
            }
            ValueKind::Map => {
                let iter = v.try_iter().map_err(|e| e.to_string())?;
                for key in iter {
                    size += key.as_str().map_or(8, str::len) + 4;
                    let item = v.get_item(&key).unwrap_or_default();
                    stack.push((item, depth + 1));
                    if stack.len() > MAX_ITEMS * 2 {
                        return Err(format!("produced a map of more than {MAX_ITEMS} entries"));
                    }
                }
                size += 2;
            }
            _ => size += 8,
        }
        if size > MAX_VALUE_BYTES {
            return Err(format!(
                "produced a value larger than {} MiB",
                MAX_VALUE_BYTES / (1024 * 1024)
            ));
        }
    }
    Ok(())
}

/// What a filter built, charged to the budget: string bytes, and list and
/// map entries (the values inside are shared, not copied).
fn charge_result(v: &Value, name: &str) -> Result<(), Error> {
    let bytes = match v.kind() {
        ValueKind::String => v.as_str().map_or(0, str::len),
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
            v.len().unwrap_or(0).saturating_mul(ITEM_BYTES)
        }
        _ => 0,
    };
    charge(bytes, &format!("the `{name}` filter"))
}

/// Input size of a filter's first argument (string bytes or items).
fn input_size(args: &[Value]) -> usize {
    args.first().map_or(0, |v| match v.as_str() {
        Some(s) => s.len(),
        None => v.len().unwrap_or(0),
    })
}

/// Refuses, before the filter runs, a call that could build more than the
/// budget holds; returns what the filter may build at most.
fn precheck(name: &str, args: &[Value]) -> Result<(), Error> {
    let what = format!("the `{name}` filter");
    let input = input_size(args);
    let arg = |i: usize| args.get(i);
    let worst = match name {
        "escape" | "e" => input.saturating_mul(6),
        "urlencode" => input.saturating_mul(3),
        "replace" => {
            let (Some(s), Some(old), Some(new)) = (
                arg(0).and_then(Value::as_str),
                arg(1).and_then(Value::as_str),
                arg(2).and_then(Value::as_str),
            ) else {
                return Ok(());
            };
            let count = if old.is_empty() {
                s.chars().count() + 1
            } else {
                s.matches(old).count()
            };
            s.len().saturating_add(count.saturating_mul(new.len()))
        }
        "indent" => {
            let lines = arg(0)
                .and_then(Value::as_str)
                .map_or(0, |s| s.lines().count() + 1);
            let width = arg(1).map_or(4, |w| match w.as_str() {
                Some(s) => s.len(),
                None => w.as_usize().unwrap_or(usize::MAX),
            });
            input.saturating_add(lines.saturating_mul(width))
        }
        "batch" | "slice" => {
            let n = arg(1).and_then(Value::as_usize).unwrap_or(usize::MAX);
            if n > MAX_ITEMS {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("{what} takes a size of at most {MAX_ITEMS}"),
                ));
            }
            input.saturating_add(n).saturating_mul(ITEM_BYTES)
        }
        "tojson" => {
            if let Some(v) = arg(0) {
                check_value(v)
                    .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("{what}: {e}")))?;
            }
            0
        }
        _ => 0,
    };
    if worst > budget_left() {
        return Err(too_large(&what));
    }
    Ok(())
}

/// Sets up an environment's filters and globals for bounded evaluation.
pub(super) fn install(env: &mut Environment<'static>) {
    for (name, inner) in stock_filters() {
        env.add_filter(name, move |state: &State, args: Rest<Value>| {
            precheck(name, &args)?;
            let out = inner.call(state, &args)?;
            charge_result(&out, name)?;
            Ok::<Value, Error>(out)
        });
    }
    for unused in ["chain", "zip", "format", "pprint"] {
        env.remove_filter(unused);
    }
    env.add_filter("sum", |state: &State, v: Value| {
        let all = items(&v, "the `sum` filter")?;
        if let Some(bad) = all.iter().find(|x| !x.is_number()) {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("`sum` adds numbers, found {}", bad.kind()),
            ));
        }
        let mut total = Value::from(0);
        for x in all {
            total = native("+", total, x)?;
        }
        let _ = state;
        Ok(total)
    });
    env.add_filter("join", |v: Value, sep: Option<String>| {
        let sep = sep.unwrap_or_default();
        let cap = budget_left().min(MAX_VALUE_BYTES);
        let mut out = Capped::new(cap);
        for (i, item) in items(&v, "the `join` filter")?.iter().enumerate() {
            let ok = (i == 0 || out.write_str(&sep).is_ok()) && write!(out, "{item}").is_ok();
            if !ok {
                return Err(too_large("the `join` filter"));
            }
        }
        charge(out.text.len(), "the `join` filter")?;
        Ok::<Value, Error>(Value::from(out.text))
    });
    env.add_filter("string", |v: Value| {
        if v.as_str().is_some() {
            return Ok(v);
        }
        display(&[&v], "the `string` filter").map(Value::from)
    });
    env.remove_global("namespace");
    env.remove_global("debug");
    env.add_function(MUL_FN, mul);
    env.add_function(ADD_FN, add);
    env.add_function(CAT_FN, cat);
}

/// The filters a template may use: MiniJinja's own, each checked and
/// charged by `install`. Left out: `format` and `pprint` (widths and debug
/// output unbounded), `chain` and `zip` (lazy sequences of unbounded
/// length); `join`, `string` and `sum` are bounded versions of their own.
fn stock_filters() -> Vec<(&'static str, Value)> {
    use minijinja::filters as f;
    vec![
        ("abs", Value::from_function(f::abs)),
        ("attr", Value::from_function(f::attr)),
        ("batch", Value::from_function(f::batch)),
        ("bool", Value::from_function(f::bool)),
        ("capitalize", Value::from_function(f::capitalize)),
        ("count", Value::from_function(f::length)),
        ("length", Value::from_function(f::length)),
        ("d", Value::from_function(f::default)),
        ("default", Value::from_function(f::default)),
        ("dictsort", Value::from_function(f::dictsort)),
        ("e", Value::from_function(f::escape)),
        ("escape", Value::from_function(f::escape)),
        ("first", Value::from_function(f::first)),
        ("float", Value::from_function(f::float)),
        ("groupby", Value::from_function(f::groupby)),
        ("indent", Value::from_function(f::indent)),
        ("int", Value::from_function(f::int)),
        ("items", Value::from_function(f::items)),
        ("last", Value::from_function(f::last)),
        ("lines", Value::from_function(f::lines)),
        ("list", Value::from_function(f::list)),
        ("lower", Value::from_function(f::lower)),
        ("map", Value::from_function(f::map)),
        ("max", Value::from_function(f::max)),
        ("min", Value::from_function(f::min)),
        ("reject", Value::from_function(f::reject)),
        ("rejectattr", Value::from_function(f::rejectattr)),
        ("replace", Value::from_function(f::replace)),
        ("reverse", Value::from_function(f::reverse)),
        ("round", Value::from_function(f::round)),
        ("safe", Value::from_function(f::safe)),
        ("select", Value::from_function(f::select)),
        ("selectattr", Value::from_function(f::selectattr)),
        ("slice", Value::from_function(f::slice)),
        ("sort", Value::from_function(f::sort)),
        ("split", Value::from_function(f::split)),
        ("title", Value::from_function(f::title)),
        ("tojson", Value::from_function(f::tojson)),
        ("trim", Value::from_function(f::trim)),
        ("unique", Value::from_function(f::unique)),
        ("upper", Value::from_function(f::upper)),
        ("urlencode", Value::from_function(f::urlencode)),
    ]
}
