//! The rewrite that routes every operation whose cost grows with its
//! operands through a function that charges that cost (`bounded`):
//!
//! - `a * b`, `a + b`, `a ~ b` → `__weft_mul(a , b)`, …: they build values;
//! - `a == b`, `a < b`, `a in b`, `a not in b`, … → `__weft_cmp("==", a , b)`:
//!   comparing walks both operands;
//! - `[a, b]`, `(a, b)`, `{k: v}` (unless all constant) → `__weft_list(a, b)`,
//!   `__weft_map(k, v)`: a literal can nest or repeat what it holds.
//!
//! Each rewrite is text edits at positions the parser and the token scan
//! found, so what compiles is still the author's template.

use super::TemplateError;

/// A token the rewrite needs the position of.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Tok {
    Open,
    Close,
    Colon,
    Not,
    Op(BinKind),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum BinKind {
    Mul,
    Add,
    Cat,
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
}

impl BinKind {
    /// How its call opens (the functions are `bounded`'s).
    fn call(self) -> &'static str {
        match self {
            Self::Mul => "__weft_mul(",
            Self::Add => "__weft_add(",
            Self::Cat => "__weft_cat(",
            Self::Eq => "__weft_cmp(\"==\", ",
            Self::Ne => "__weft_cmp(\"!=\", ",
            Self::Lt => "__weft_cmp(\"<\", ",
            Self::Lte => "__weft_cmp(\"<=\", ",
            Self::Gt => "__weft_cmp(\">\", ",
            Self::Gte => "__weft_cmp(\">=\", ",
            Self::In => "__weft_cmp(\"in\", ",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Located {
    pub tok: Tok,
    pub start: u32,
    pub end: u32,
}

/// What to rewrite: found by walking the parsed template.
#[derive(Clone, Copy, Debug)]
pub(super) enum Node {
    /// A binary operation: its left operand starts at `start` (perhaps
    /// inside parentheses that hold only it) and its right one ends at
    /// `end`.
    Bin { start: u32, end: u32, kind: BinKind },
    /// A list or tuple literal, its brackets at `start` and `end - 1`.
    List { start: u32, end: u32 },
    /// A map literal, its braces at `start` and `end - 1`.
    Map { start: u32, end: u32 },
    /// `a[k]`: `a` starts at `start`, the closing bracket is at `end - 1`.
    Item { start: u32, end: u32 },
    /// `a[x:y:z]`, as `Item`; `parts` says which of x, y, z are written.
    Slice {
        start: u32,
        end: u32,
        parts: [bool; 3],
    },
}

/// Where edits at one position go: closings of what ends there, then
/// openings of what starts there (outer first), then replaced tokens.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Close,
    Open,
    Replace,
}

struct Edit {
    pos: u32,
    class: Class,
    /// Among closings: inner (later start) first; among openings: outer
    /// (later end) first.
    order: i64,
    replaced: u32,
    text: &'static str,
}

fn fail(source: &str) -> TemplateError {
    TemplateError {
        message: format!(
            "`{}` could not be prepared (an operator was not found)",
            super::shorten(source)
        ),
    }
}

/// The tokens at depth 0 of `start..end` (brackets inside are skipped).
fn top_level(tokens: &[Located], start: u32, end: u32) -> impl Iterator<Item = (usize, &Located)> {
    let first = tokens.partition_point(|t| t.start < start);
    let mut depth = 0i32;
    tokens[first..]
        .iter()
        .enumerate()
        .take_while(move |(_, t)| t.end <= end)
        .filter_map(move |(i, t)| {
            let at = depth;
            match t.tok {
                Tok::Open => depth += 1,
                Tok::Close => depth -= 1,
                _ => {}
            }
            (at == 0).then_some((first + i, t))
        })
}

/// The operator of a binary node ending at `end`: the first one of its
/// kind at depth 0 going back from the end (the right operand binds
/// tighter, so it holds none).
fn operator(tokens: &[Located], end: u32, kind: BinKind) -> Option<usize> {
    let last = tokens.partition_point(|t| t.end <= end);
    let mut depth = 0i32;
    for i in (0..last).rev() {
        match tokens[i].tok {
            Tok::Close => depth += 1,
            Tok::Open => depth -= 1,
            Tok::Op(k) if k == kind && depth == 0 => return Some(i),
            _ => {}
        }
        if depth < 0 {
            return None;
        }
    }
    None
}

/// The opening bracket of the one closing at `end - 1`.
fn opening(tokens: &[Located], end: u32) -> Option<usize> {
    let last = tokens.partition_point(|t| t.end <= end);
    let close = last.checked_sub(1)?;
    if tokens[close].tok != Tok::Close || tokens[close].end != end {
        return None;
    }
    let mut depth = 0i32;
    for i in (0..=close).rev() {
        match tokens[i].tok {
            Tok::Close => depth += 1,
            Tok::Open => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return Some(i);
        }
    }
    None
}

/// Moves a left operand's start back over parentheses that hold only it
/// (`(a) == b`: the parser keeps no node for them).
fn widen(source: &str, tokens: &[Located], mut start: u32, op: u32) -> u32 {
    loop {
        let before = tokens.partition_point(|t| t.end <= start);
        let Some(open) = before.checked_sub(1).map(|i| (i, &tokens[i])) else {
            return start;
        };
        let gap = source
            .get(open.1.end as usize..start as usize)
            .unwrap_or("x");
        if open.1.tok != Tok::Open || !gap.trim().is_empty() {
            return start;
        }
        // Its closing bracket must come before the operator.
        let mut depth = 0i32;
        let closes_before_op = tokens[open.0..].iter().any(|t| {
            match t.tok {
                Tok::Open => depth += 1,
                Tok::Close => depth -= 1,
                _ => {}
            }
            depth == 0 && t.start < op
        });
        if !closes_before_op {
            return start;
        }
        start = open.1.start;
    }
}

pub(super) fn rewrite(
    source: &str,
    nodes: &[Node],
    tokens: &[Located],
) -> Result<String, TemplateError> {
    if nodes.is_empty() {
        return Ok(source.to_owned());
    }
    let mut edits: Vec<Edit> = Vec::with_capacity(nodes.len() * 3);
    let open = |pos, end: u32, text| Edit {
        pos,
        class: Class::Open,
        order: -i64::from(end),
        replaced: 0,
        text,
    };
    let close = |pos, start: u32| Edit {
        pos,
        class: Class::Close,
        order: -i64::from(start),
        replaced: 0,
        text: ")",
    };
    let replace = |t: &Located, text| Edit {
        pos: t.start,
        class: Class::Replace,
        order: 0,
        replaced: t.end - t.start,
        text,
    };
    for node in nodes {
        match *node {
            Node::Bin { start, end, kind } => {
                let i = operator(tokens, end, kind).ok_or_else(|| fail(source))?;
                let op = &tokens[i];
                let start = widen(source, tokens, start, op.start);
                let negated = kind == BinKind::In
                    && i > 0
                    && tokens[i - 1].tok == Tok::Not
                    && tokens[i - 1].start >= start;
                if negated {
                    let not = tokens[i - 1];
                    edits.push(open(start, end, "__weft_cmp(\"not in\", "));
                    edits.push(Edit {
                        replaced: op.end - not.start,
                        ..replace(&not, ",")
                    });
                } else {
                    edits.push(open(start, end, kind.call()));
                    edits.push(replace(op, ","));
                }
                edits.push(close(end, start));
            }
            Node::Item { start, end } | Node::Slice { start, end, .. } => {
                let i = opening(tokens, end).ok_or_else(|| fail(source))?;
                let bracket = tokens[i];
                let closing = Located {
                    tok: Tok::Close,
                    start: end - 1,
                    end,
                };
                let start = widen(source, tokens, start, bracket.start);
                let Node::Slice { parts, .. } = *node else {
                    edits.push(open(start, end, "__weft_item("));
                    edits.push(replace(&bracket, ", "));
                    edits.push(replace(&closing, ")"));
                    continue;
                };
                // `a[x:y:z]` → `__weft_slice(a, x, y, z)`, `none` for what
                // is not written.
                let given = |n: usize| if parts[n] { ", " } else { ", none" };
                let colons: Vec<Located> = top_level(tokens, bracket.end, end - 1)
                    .filter(|(_, t)| t.tok == Tok::Colon)
                    .map(|(_, t)| *t)
                    .collect();
                edits.push(open(start, end, "__weft_slice("));
                edits.push(replace(&bracket, given(0)));
                match colons.as_slice() {
                    [one] => {
                        edits.push(replace(one, given(1)));
                        edits.push(replace(&closing, ", none)"));
                    }
                    [one, two] => {
                        edits.push(replace(one, given(1)));
                        edits.push(replace(two, given(2)));
                        edits.push(replace(&closing, ")"));
                    }
                    _ => return Err(fail(source)),
                }
            }
            Node::List { start, end } | Node::Map { start, end } => {
                let is_map = matches!(node, Node::Map { .. });
                let bracketed = source
                    .as_bytes()
                    .get(start as usize)
                    .is_some_and(|b| matches!(b, b'(' | b'[' | b'{'));
                if !bracketed && !is_map {
                    // A tuple without brackets (`{% set p, q = a, b %}`).
                    edits.push(open(start, end, "__weft_list("));
                    edits.push(close(end, start));
                    continue;
                }
                let bracket = |pos: u32| Located {
                    tok: Tok::Open,
                    start: pos,
                    end: pos + 1,
                };
                edits.push(replace(
                    &bracket(start),
                    if is_map {
                        "__weft_map("
                    } else {
                        "__weft_list("
                    },
                ));
                edits.push(replace(&bracket(end - 1), ")"));
                if is_map {
                    // Inside the braces: the key-value colons of this map.
                    for (_, t) in top_level(tokens, start + 1, end - 1) {
                        if t.tok == Tok::Colon {
                            edits.push(replace(t, ","));
                        }
                    }
                }
            }
        }
    }
    edits.sort_by_key(|e| (e.pos, e.class, e.order));
    let mut out = String::with_capacity(source.len() + edits.len() * 16);
    let mut at = 0usize;
    for e in edits {
        let pos = e.pos as usize;
        if pos < at {
            return Err(fail(source));
        }
        out.push_str(source.get(at..pos).unwrap_or_default());
        out.push_str(e.text);
        at = pos + e.replaced as usize;
    }
    out.push_str(source.get(at..).unwrap_or_default());
    Ok(out)
}
