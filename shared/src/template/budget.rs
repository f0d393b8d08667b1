//! The budget of one evaluation: what the operations it runs may build and
//! walk, and how long they may take. Fuel counts instructions, and one
//! instruction can cost anything (a comparison of two large values, a filter
//! over a long list), so every such operation charges what it costs here
//! first (`bounded`), and fails once the budget or the time is spent.
//!
//! One budget serves one step: the strings of a step's definition share it
//! (a scope opened by the engine; nested scopes use the outer one).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use minijinja::value::ValueKind;
use minijinja::{Error, ErrorKind, Value};

pub use crate::domain::limits::MAX_VALUE_DEPTH;

/// Units (bytes, roughly: of strings built or walked, and a few per list
/// item) one step's templates may spend.
pub const BUDGET_BYTES: usize = 16 * 1024 * 1024;
/// What the values one step's templates hand out may take in memory in all
/// (each is built anew: a large value copied many times is many values).
pub const HANDED_OUT_BYTES: usize = 64 * 1024 * 1024;
/// How long one step's templates may run.
pub const TIME_LIMIT: Duration = Duration::from_secs(2);

struct Budget {
    left: usize,
    /// Of `HANDED_OUT_BYTES`.
    handed_out: usize,
    deadline: Instant,
    /// Open scopes on this thread (only the outermost resets the budget).
    depth: usize,
}

thread_local! {
    static BUDGET: RefCell<Budget> = RefCell::new(Budget {
        left: BUDGET_BYTES,
        handed_out: 0,
        deadline: Instant::now() + TIME_LIMIT,
        depth: 0,
    });
}

/// One evaluation's budget, held while it is open.
pub struct Scope(());

/// Opens a scope: a fresh budget unless one is open on this thread already.
pub fn scope() -> Scope {
    scope_sized(BUDGET_BYTES, TIME_LIMIT)
}

/// `scope` with a smaller budget: `units` of `BUDGET_BYTES` and `time` of
/// `TIME_LIMIT` (for templates evaluated on a request's path).
pub fn scope_sized(units: usize, time: Duration) -> Scope {
    BUDGET.with(|b| {
        let mut b = b.borrow_mut();
        if b.depth == 0 {
            b.left = units.min(BUDGET_BYTES);
            b.handed_out = 0;
            b.deadline = Instant::now() + time.min(TIME_LIMIT);
        }
        b.depth += 1;
    });
    Scope(())
}

impl Drop for Scope {
    fn drop(&mut self) {
        BUDGET.with(|b| {
            let mut b = b.borrow_mut();
            b.depth = b.depth.saturating_sub(1);
        });
    }
}

pub fn too_large(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "{what} would go past the {} MiB a step's templates may build and walk",
            BUDGET_BYTES / (1024 * 1024)
        ),
    )
}

/// Takes `units` from the budget, or fails if it does not hold them (or
/// the time is up).
pub fn charge(units: usize, what: &str) -> Result<(), Error> {
    BUDGET.with(|b| {
        let mut b = b.borrow_mut();
        if Instant::now() > b.deadline {
            b.left = 0;
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "{what}: the step's templates ran longer than {} s",
                    TIME_LIMIT.as_secs()
                ),
            ));
        }
        if units > b.left {
            b.left = 0;
            Err(too_large(what))
        } else {
            b.left -= units;
            Ok(())
        }
    })
}

/// Counts a value handed out (`bytes` in memory) against
/// `HANDED_OUT_BYTES`, or fails past it.
pub fn hand_out(bytes: usize) -> Result<(), Error> {
    BUDGET.with(|b| {
        let mut b = b.borrow_mut();
        b.handed_out = b.handed_out.saturating_add(bytes);
        if b.handed_out > HANDED_OUT_BYTES {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "the values this step's templates build would take more than the {} MiB of memory they may",
                    HANDED_OUT_BYTES / (1024 * 1024)
                ),
            ));
        }
        Ok(())
    })
}

/// What the budget has left.
pub fn left() -> usize {
    BUDGET.with(|b| b.borrow().left)
}

/// Why `walk` stopped.
pub enum Over {
    Size,
    Depth,
    Other(String),
}

impl Over {
    pub fn describe(&self, max_units: usize) -> String {
        match self {
            Over::Size => format!(
                "produced a value larger than {} KiB",
                (max_units / 1024).max(1)
            ),
            Over::Depth => {
                format!("produced a value nested more than {MAX_VALUE_DEPTH} levels deep")
            }
            Over::Other(e) => e.clone(),
        }
    }
}

/// A value's size as it would be written out (strings' bytes, a few units
/// per item; shared parts counted each time they appear), walked without
/// recursion and given up once past `max_units` or `MAX_VALUE_DEPTH`.
pub fn walk(v: &Value, max_units: usize) -> Result<usize, Over> {
    let mut stack: Vec<(Value, usize)> = vec![(v.clone(), 1)];
    let mut units = 0usize;
    while let Some((v, depth)) = stack.pop() {
        match v.kind() {
            ValueKind::String => units += v.as_str().map_or(0, str::len) + 2,
            ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
                if depth > MAX_VALUE_DEPTH {
                    return Err(Over::Depth);
                }
                let is_map = v.kind() == ValueKind::Map;
                units += 2;
                for item in v.try_iter().map_err(|e| Over::Other(e.to_string()))? {
                    // About what a value in a list takes.
                    units += 16;
                    if is_map {
                        units += item.as_str().map_or(8, str::len);
                        let value = v.get_item(&item).unwrap_or_default();
                        stack.push((value, depth + 1));
                    } else {
                        stack.push((item, depth + 1));
                    }
                    if units > max_units {
                        return Err(Over::Size);
                    }
                }
            }
            _ => units += 8,
        }
        if units > max_units {
            return Err(Over::Size);
        }
    }
    Ok(units)
}

/// Charges what a value holds, all of it (what building it, or walking it
/// to compare, costs), and refuses one nested too deep.
pub fn charge_deep(v: &Value, what: &str) -> Result<(), Error> {
    let room = left();
    match walk(v, room) {
        Ok(units) => charge(units, what),
        Err(Over::Size) => {
            charge(usize::MAX, what)?;
            Err(too_large(what))
        }
        Err(e) => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("{what}: {}", e.describe(room)),
        )),
    }
}
