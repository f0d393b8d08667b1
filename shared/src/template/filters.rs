//! The filters, tests and globals templates may use: MiniJinja's own, each
//! charged to the step's budget (`budget`) for what it walks and builds;
//! a few replaced by bounded versions, a few left out.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Rest, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, Value};

use super::bounded::{
    ADD_FN, CAT_FN, CMP_FN, Capped, CappedBytes, ITEM_BYTES, ITEM_FN, LIST_FN, MAP_FN, MAX_ITEMS,
    MAX_VALUE_BYTES, MUL_FN, SLICE_FN, add, cat, check_value, cmp, display, item, items, list, map,
    mul, native, slice,
};
use super::budget::{charge, charge_deep, left as budget_left, too_large};

/// Filters that work on a string as text (the others iterate it as a
/// sequence of one-character values).
const TEXT_FILTERS: &[&str] = &[
    "upper",
    "lower",
    "title",
    "capitalize",
    "trim",
    "replace",
    "escape",
    "e",
    "urlencode",
    "indent",
    "safe",
    "split",
    "lines",
    "length",
    "count",
    "first",
    "last",
    "int",
    "float",
    "bool",
    "abs",
    "round",
    "default",
    "d",
    "attr",
];

/// Filters that compare their items with each other (n log n).
const SORTING_FILTERS: &[&str] = &["sort", "unique", "groupby", "dictsort"];

/// What reading a filter's input costs: a string's bytes (or, iterated as
/// characters, a value per byte), a list's or a map's items (a value each;
/// `charge_deep` of the result covers what they hold), times log n where
/// the filter sorts.
fn work(name: &str, args: &[Value]) -> usize {
    let Some(v) = args.first() else { return 0 };
    let n = match v.kind() {
        ValueKind::String => {
            let len = v.as_str().map_or(0, str::len);
            if TEXT_FILTERS.contains(&name) {
                return len;
            }
            len
        }
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => v.len().unwrap_or(0),
        _ => return 0,
    };
    let per = if SORTING_FILTERS.contains(&name) {
        ITEM_BYTES * (usize::BITS - n.leading_zeros()) as usize
    } else {
        ITEM_BYTES
    };
    n.saturating_mul(per)
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
        // One value per character or line.
        "list" | "lines" | "split" if arg(0).is_some_and(|v| v.as_str().is_some()) => {
            input.saturating_mul(ITEM_BYTES)
        }
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
        _ => 0,
    };
    if worst > budget_left() {
        return Err(too_large(&what));
    }
    Ok(())
}

/// The arguments `replace` and `escape` read as text (numbers, lists, …
/// are displayed first, as the filters themselves would): written here,
/// within the budget, so the estimate before the filter runs is of the
/// text it will work on.
fn as_text(name: &str, args: Vec<Value>) -> Result<Vec<Value>, Error> {
    let text_args = match name {
        "replace" => 3,
        "escape" | "e" => 1,
        _ => return Ok(args),
    };
    let what = format!("the `{name}` filter");
    args.into_iter()
        .enumerate()
        .map(|(i, v)| {
            let keep = i >= text_args
                || v.as_str().is_some()
                || v.is_undefined()
                || (name != "replace" && v.is_safe());
            if keep {
                Ok(v)
            } else {
                display(&[&v], &what).map(Value::from)
            }
        })
        .collect()
}

/// Most spaces `tojson` indents by.
const MAX_INDENT: usize = 16;

/// `tojson`, as MiniJinja's (HTML-safe JSON, optional `indent`), written
/// into a buffer that stops at what the budget holds: pretty printing can
/// multiply a value's size by its indentation.
fn tojson(value: Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(i) => Some(i),
        None => kwargs.get("indent")?,
    };
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) => match bool::try_from(v.clone()).ok() {
            Some(true) => Some(2),
            Some(false) => None,
            None => Some(usize::try_from(v)?),
        },
    };
    if indent.is_some_and(|n| n > MAX_INDENT) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("`tojson` indents by at most {MAX_INDENT} spaces"),
        ));
    }
    check_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("`tojson`: {e}")))?;
    let mut out = CappedBytes {
        bytes: Vec::new(),
        cap: budget_left().min(MAX_VALUE_BYTES),
        overflowed: false,
    };
    let written = match indent {
        Some(n) => {
            let spaces = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            serde::Serialize::serialize(&value, &mut ser)
        }
        None => serde_json::to_writer(&mut out, &value),
    };
    if written.is_err() {
        return Err(if out.overflowed {
            too_large("the `tojson` filter")
        } else {
            Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON")
        });
    }
    let text = String::from_utf8(out.bytes)
        .map_err(|_| Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON"))?;
    // Safe in HTML and in JSON, as MiniJinja's.
    let mut safe = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => safe.push_str("\\u003c"),
            '>' => safe.push_str("\\u003e"),
            '&' => safe.push_str("\\u0026"),
            '\'' => safe.push_str("\\u0027"),
            _ => safe.push(c),
        }
    }
    charge(safe.len(), "the `tojson` filter")?;
    Ok(Value::from_safe_string(safe))
}

/// Sets up an environment's filters and globals for bounded evaluation.
pub(super) fn install(env: &mut Environment<'static>) {
    for (name, inner) in stock_filters() {
        env.add_filter(name, move |state: &State, args: Rest<Value>| {
            let args = as_text(name, args.0)?;
            precheck(name, &args)?;
            let what = format!("the `{name}` filter");
            // What it reads (a filter walks its input) and what it built.
            charge(work(name, &args), &what)?;
            let out = inner.call(state, &args)?;
            charge_deep(&out, &what)?;
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
    env.add_filter("tojson", tojson);
    env.add_filter("string", |v: Value| {
        if v.as_str().is_some() {
            return Ok(v);
        }
        display(&[&v], "the `string` filter").map(Value::from)
    });
    for (name, inner) in stock_tests() {
        env.add_test(name, move |state: &State, args: Rest<Value>| {
            for v in args.iter() {
                charge_deep(v, &format!("the `{name}` test"))?;
            }
            Ok::<bool, Error>(inner.call(state, &args)?.is_true())
        });
    }
    let dict = Value::from_function(minijinja::functions::dict);
    env.add_function("dict", move |state: &State, args: Rest<Value>| {
        let out = dict.call(state, &args)?;
        charge_deep(&out, "`dict`")?;
        Ok::<Value, Error>(out)
    });
    env.remove_global("namespace");
    env.remove_global("debug");
    env.add_function(MUL_FN, mul);
    env.add_function(ADD_FN, add);
    env.add_function(CAT_FN, cat);
    env.add_function(CMP_FN, cmp);
    env.add_function(LIST_FN, list);
    env.add_function(MAP_FN, map);
    env.add_function(ITEM_FN, item);
    env.add_function(SLICE_FN, slice);
}

/// The tests that compare or scan what they are given (the others look at
/// a value's kind only).
fn stock_tests() -> Vec<(&'static str, Value)> {
    use minijinja::tests as t;
    vec![
        ("eq", Value::from_function(t::is_eq)),
        ("equalto", Value::from_function(t::is_eq)),
        ("==", Value::from_function(t::is_eq)),
        ("ne", Value::from_function(t::is_ne)),
        ("!=", Value::from_function(t::is_ne)),
        ("lt", Value::from_function(t::is_lt)),
        ("lessthan", Value::from_function(t::is_lt)),
        ("<", Value::from_function(t::is_lt)),
        ("le", Value::from_function(t::is_le)),
        ("<=", Value::from_function(t::is_le)),
        ("gt", Value::from_function(t::is_gt)),
        ("greaterthan", Value::from_function(t::is_gt)),
        (">", Value::from_function(t::is_gt)),
        ("ge", Value::from_function(t::is_ge)),
        (">=", Value::from_function(t::is_ge)),
        ("in", Value::from_function(t::is_in)),
        ("sameas", Value::from_function(t::is_sameas)),
        ("startingwith", Value::from_function(t::is_startingwith)),
        ("endingwith", Value::from_function(t::is_endingwith)),
        ("lower", Value::from_function(t::is_lower)),
        ("upper", Value::from_function(t::is_upper)),
    ]
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
        ("trim", Value::from_function(f::trim)),
        ("unique", Value::from_function(f::unique)),
        ("upper", Value::from_function(f::upper)),
        ("urlencode", Value::from_function(f::urlencode)),
    ]
}
