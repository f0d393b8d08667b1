//! The bounded operations rewritten templates call. Fuel bounds how many
//! instructions a template runs, not what one instruction costs (`'x' *
//! 10**8`, `([0] * 10**9) | join`, a string doubled in a chain of `~`, two
//! lists of shared lists compared), so each operation whose cost grows with
//! its operands charges that cost to the step's budget (`budget`) before it
//! does the work.

use std::fmt::Write as _;
use std::sync::OnceLock;

use minijinja::value::{Rest, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Expression, UndefinedBehavior, Value};

pub use super::budget::BUDGET_BYTES;
use super::budget::{charge, charge_deep, left as budget_left, too_large};

/// Largest value (as JSON) a template or expression may produce.
pub const MAX_VALUE_BYTES: usize = 8 * 1024 * 1024;
/// Most items one operation may build a list of.
pub const MAX_ITEMS: usize = 100_000;

/// The functions the rewritten operators and literals call (see `rewrite`).
pub const MUL_FN: &str = "__weft_mul";
pub const ADD_FN: &str = "__weft_add";
pub const CAT_FN: &str = "__weft_cat";
pub const CMP_FN: &str = "__weft_cmp";
pub const LIST_FN: &str = "__weft_list";
pub const MAP_FN: &str = "__weft_map";
pub const ITEM_FN: &str = "__weft_item";
pub const SLICE_FN: &str = "__weft_slice";

pub(super) const ITEM_BYTES: usize = 24;

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
pub(super) fn display(parts: &[&Value], what: &str) -> Result<String, Error> {
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
pub(super) fn items(v: &Value, what: &str) -> Result<Vec<Value>, Error> {
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

/// MiniJinja's own operators, each as an expression over `a` and `b`.
const NATIVE: &[(&str, &str)] = &[
    ("*", "a * b"),
    ("+", "a + b"),
    ("~", "a ~ b"),
    ("==", "a == b"),
    ("!=", "a != b"),
    ("<", "a < b"),
    ("<=", "a <= b"),
    (">", "a > b"),
    (">=", "a >= b"),
    ("in", "a in b"),
    ("not in", "a not in b"),
];

/// MiniJinja's own operator, for operands whose cost is already charged
/// (or cannot be large: numbers, booleans, and the errors other types give).
pub(super) fn native(op: &str, a: Value, b: Value) -> Result<Value, Error> {
    let src = NATIVE
        .iter()
        .find(|(o, _)| *o == op)
        .map(|(_, src)| *src)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("unknown operator `{op}`"),
            )
        })?;
    eval_native(src, minijinja::context! { a => a, b => b })
}

/// Subscripts, as MiniJinja's own expressions.
const SUBSCRIPTS: &[&str] = &["a[b]", "a[b:c:d]"];

/// One of `NATIVE`'s or `SUBSCRIPTS`' expressions, evaluated as the
/// templates' own environment would (strict: an undefined operand is an
/// error here as it is there).
fn eval_native(src: &str, ctx: Value) -> Result<Value, Error> {
    static EXPRS: OnceLock<Vec<(&'static str, Expression<'static, 'static>)>> = OnceLock::new();
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env
    });
    let exprs = EXPRS.get_or_init(|| {
        NATIVE
            .iter()
            .map(|(_, src)| *src)
            .chain(SUBSCRIPTS.iter().copied())
            .filter_map(|src| env.compile_expression(src).ok().map(|e| (src, e)))
            .collect()
    });
    let (_, expr) = exprs
        .iter()
        .find(|(s, _)| *s == src)
        .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "operator unavailable"))?;
    expr.eval(ctx)
}

/// `a[k]`: a list's or a map's item costs little, but a string's
/// character is found by walking the string up to it.
pub fn item(a: Value, k: Value) -> Result<Value, Error> {
    if let Some(s) = a.as_str() {
        let walked = match k.as_i64() {
            Some(i) if i >= 0 => usize::try_from(i)
                .unwrap_or(usize::MAX)
                .saturating_add(1)
                .saturating_mul(4)
                .min(s.len()),
            _ => s.len(),
        };
        charge(walked, "indexing a string")?;
    } else if !a.is_undefined()
        && let Ok(v) = a.get_item(&k)
        && !v.is_undefined()
    {
        return Ok(v);
    }
    eval_native(SUBSCRIPTS[0], minijinja::context! { a => a, b => k })
}

/// `a[start:stop:step]`: builds a copy of what it takes.
pub fn slice(a: Value, start: Value, stop: Value, step: Value) -> Result<Value, Error> {
    let what = "slicing";
    match a.as_str() {
        Some(s) => charge(s.len(), what)?,
        None => charge(a.len().unwrap_or(0).saturating_mul(ITEM_BYTES), what)?,
    }
    eval_native(
        SUBSCRIPTS[1],
        minijinja::context! { a => a, b => start, c => stop, d => step },
    )
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
        let mut out = Vec::with_capacity(one.len() * n);
        for _ in 0..n {
            out.extend(one.iter().cloned());
        }
        let out = Value::from(out);
        // What it holds, each time it holds it (a repeated list is walked
        // whole by whatever reads it).
        charge_deep(&out, "repeating a list")?;
        return Ok(out);
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
        let out = Value::from(out);
        charge_deep(&out, "joining lists")?;
        return Ok(out);
    }
    native("+", a, b)
}

/// `a ~ b`: both as text, joined, within bounds.
pub fn cat(a: Value, b: Value) -> Result<Value, Error> {
    if a.is_undefined() || b.is_undefined() {
        return native("~", a, b);
    }
    display(&[&a, &b], "joining text with `~`").map(Value::from)
}

/// `a == b`, `a < b`, `a in b`, …: comparing walks both operands, so what
/// they hold is charged first.
pub fn cmp(op: &str, a: Value, b: Value) -> Result<Value, Error> {
    let what = format!("comparing with `{op}`");
    for v in [&a, &b] {
        if !matches!(
            v.kind(),
            ValueKind::Number | ValueKind::Bool | ValueKind::None | ValueKind::Undefined
        ) {
            charge_deep(v, &what)?;
        }
    }
    native(op, a, b)
}

/// A list or tuple literal with values in it: what it holds is charged,
/// and it may not nest past the limit.
pub fn list(items: Rest<Value>) -> Result<Value, Error> {
    let v = Value::from(items.0);
    charge_deep(&v, "a list")?;
    Ok(v)
}

/// A map literal with values in it: `__weft_map(k1, v1, k2, v2, …)`.
pub fn map(kv: Rest<Value>) -> Result<Value, Error> {
    let mut pairs = kv.0.into_iter();
    let mut entries = Vec::new();
    while let (Some(k), Some(v)) = (pairs.next(), pairs.next()) {
        entries.push((k, v));
    }
    let v: Value = entries.into_iter().collect();
    charge_deep(&v, "a map")?;
    Ok(v)
}

/// Size (as JSON, roughly) and depth of a value a template produced,
/// walked without recursion and given up as soon as either passes its
/// limit.
pub fn check_value(v: &Value) -> Result<(), String> {
    super::budget::walk(v, MAX_VALUE_BYTES)
        .map(drop)
        .map_err(|e| e.describe(MAX_VALUE_BYTES))
}
