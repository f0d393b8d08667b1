//! Checks made on a template's source before anything compiles it.
//!
//! MiniJinja's parser recurses without a bound on chains of unary operators
//! and of `elif`s, and its code generator and the AST's destructor recurse
//! once per nesting level of any kind, so the nesting is bounded from the
//! token stream (which is produced without recursion) before the parser
//! runs. Then the parsed template is checked (allowed statements, where
//! `secrets` may appear) and what costs more than an instruction is
//! rewritten into bounded calls (`rewrite`).

use std::collections::BTreeSet;

use minijinja::machinery::{self, Token, ast};

use super::TemplateError;
use super::rewrite::{BinKind, Located, Node, Tok, rewrite};

/// How deeply an expression may nest: brackets, plus operators chained at
/// one level (each adds a level to the parsed tree).
pub const MAX_EXPR_DEPTH: usize = 64;
/// How deeply `{% if %}`, `{% for %}` and `{% with %}` blocks may nest,
/// each `{% elif %}` counting as one more level (the parser nests them).
pub const MAX_BLOCK_DEPTH: usize = 32;

/// One piece of a template that inserts secrets: text to render, or the
/// value of the named secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Literal text.
    Text(String),
    /// A `{{ ... }}` that does not involve secrets, rendered as text.
    Template(String),
    /// `{{ secrets.NAME }}`.
    Secret(String),
}

/// What a template's source was found to be.
pub(super) struct Checked {
    /// The source with bounded operators, ready to compile.
    pub rewritten: String,
    /// Set when the template inserts secrets (and does so only as plain
    /// `{{ secrets.NAME }}`).
    pub secret_parts: Option<Vec<Part>>,
}

fn fail(source: &str, what: impl std::fmt::Display) -> TemplateError {
    TemplateError {
        message: format!("`{}` {what}", super::shorten(source)),
    }
}

/// What the token scan keeps: positions the rewrite needs, and where each
/// `{{ ... }}` tag starts and ends.
struct Scanned {
    ops: Vec<Located>,
    tags: Vec<(u32, u32)>,
}

/// The rewritten binary operator a token is, if it is one.
fn bin_kind(tok: &Token<'_>) -> Option<BinKind> {
    Some(match tok {
        Token::Mul => BinKind::Mul,
        Token::Plus => BinKind::Add,
        Token::Tilde => BinKind::Cat,
        Token::Eq => BinKind::Eq,
        Token::Ne => BinKind::Ne,
        Token::Lt => BinKind::Lt,
        Token::Lte => BinKind::Lte,
        Token::Gt => BinKind::Gt,
        Token::Gte => BinKind::Gte,
        Token::Ident("in") => BinKind::In,
        _ => return None,
    })
}

/// Scans the tokens: refuses nesting past the limits and keeps the
/// positions of brackets and of the operators that get rewritten.
fn scan(source: &str, in_expr: bool) -> Result<Scanned, TemplateError> {
    let mut ops = Vec::new();
    let mut tags = Vec::new();
    let mut tag_start = 0u32;
    // Operators chained at each open bracket level of the current tag.
    let mut levels: Vec<usize> = if in_expr { vec![0] } else { Vec::new() };
    // Open blocks, each with its `elif`s (one level each).
    let mut blocks: Vec<usize> = Vec::new();
    let mut statement_start = false;
    let tokens = machinery::tokenize(source, in_expr, Default::default(), Default::default());
    for item in tokens {
        let (tok, span) = item.map_err(|e| fail(source, format!("is not valid: {e}")))?;
        // An expression ends at its first tag delimiter (the tokenizer
        // cannot go on past it).
        if in_expr
            && matches!(
                tok,
                Token::VariableStart | Token::VariableEnd | Token::BlockStart | Token::BlockEnd
            )
        {
            return Err(fail(
                source,
                "is not valid: unexpected tag delimiter in an expression",
            ));
        }
        let at = |tok| Located {
            tok,
            start: span.start_offset,
            end: span.end_offset,
        };
        let keyword = if statement_start {
            statement_start = false;
            let grew = match tok {
                Token::Ident("if" | "for" | "with") => {
                    blocks.push(1);
                    true
                }
                Token::Ident("elif") => {
                    if let Some(top) = blocks.last_mut() {
                        *top += 1;
                    }
                    true
                }
                Token::Ident("endif" | "endfor" | "endwith") => {
                    blocks.pop();
                    false
                }
                _ => false,
            };
            if grew && blocks.iter().sum::<usize>() > MAX_BLOCK_DEPTH {
                return Err(fail(
                    source,
                    format!(
                        "nests blocks more than {MAX_BLOCK_DEPTH} deep (each elif counts as one)"
                    ),
                ));
            }
            matches!(
                tok,
                Token::Ident("if" | "for" | "with" | "elif" | "endif" | "endfor" | "endwith")
            )
        } else {
            false
        };
        match tok {
            Token::VariableStart => {
                levels = vec![0];
                tag_start = span.start_offset;
            }
            Token::VariableEnd => {
                levels.clear();
                tags.push((tag_start, span.end_offset));
            }
            Token::BlockStart => {
                levels = vec![0];
                statement_start = true;
            }
            Token::BlockEnd => levels.clear(),
            Token::ParenOpen | Token::BracketOpen | Token::BraceOpen => {
                // A subscript or call chains onto what precedes it, like
                // `.name` does (for a grouping bracket this over-counts one).
                if let Some(top) = levels.last_mut() {
                    *top += 1;
                }
                levels.push(0);
                ops.push(at(Tok::Open));
            }
            Token::ParenClose | Token::BracketClose | Token::BraceClose => {
                levels.pop();
                ops.push(at(Tok::Close));
            }
            Token::Comma | Token::Colon => {
                if let Some(top) = levels.last_mut() {
                    *top = 0;
                }
                if matches!(tok, Token::Colon) {
                    ops.push(at(Tok::Colon));
                }
            }
            _ => {
                let kind = bin_kind(&tok);
                if let Some(kind) = kind {
                    ops.push(at(Tok::Op(kind)));
                } else if matches!(tok, Token::Ident("not")) {
                    ops.push(at(Tok::Not));
                }
                let chains = kind.is_some()
                    || !keyword
                        && matches!(
                            tok,
                            Token::Minus
                                | Token::Div
                                | Token::FloorDiv
                                | Token::Pow
                                | Token::Mod
                                | Token::Dot
                                | Token::Pipe
                                | Token::Eq
                                | Token::Ne
                                | Token::Gt
                                | Token::Gte
                                | Token::Lt
                                | Token::Lte
                                | Token::Ident("and" | "or" | "not" | "is" | "in" | "if" | "else")
                        );
                // A rewritten operator becomes a call: a bracket level.
                if chains && let Some(top) = levels.last_mut() {
                    *top += if kind.is_some() { 2 } else { 1 };
                }
            }
        }
        let depth: usize = levels.iter().map(|n| n + 1).sum();
        if depth > MAX_EXPR_DEPTH {
            return Err(fail(
                source,
                format!(
                    "nests more than {MAX_EXPR_DEPTH} levels deep (brackets and chained operators); split it into steps"
                ),
            ));
        }
    }
    Ok(Scanned { ops, tags })
}

/// Checks a template (or, with `in_expr`, a bare expression) and rewrites
/// its size-changing operators.
pub(super) fn check(source: &str, in_expr: bool) -> Result<Checked, TemplateError> {
    let scanned = scan(source, in_expr)?;
    let mut walk = Walk {
        source,
        nodes: Vec::new(),
        secrets: Vec::new(),
        problem: None,
    };
    let secret_parts = if in_expr {
        let expr = machinery::parse_expr(source)
            .map_err(|e| fail(source, format!("is not valid: {e}")))?;
        let whole = secret_name(&expr).map(|name| vec![Part::Secret(name)]);
        if whole.is_none() {
            walk.expr(&expr);
        }
        whole
    } else {
        let stmt = machinery::parse(source, "<template>", Default::default(), Default::default())
            .map_err(|e| fail(source, format!("is not valid: {e}")))?;
        walk.stmt(&stmt);
        if walk.problem.is_none() && !walk.secrets.is_empty() {
            Some(walk.secret_parts(&stmt, &scanned.tags)?)
        } else {
            None
        }
    };
    if let Some(p) = walk.problem {
        return Err(fail(source, p));
    }
    let rewritten = rewrite(source, &walk.nodes, &scanned.ops)?;
    Ok(Checked {
        rewritten,
        secret_parts,
    })
}

/// Where an expression's text starts: at its leftmost token. (Not every
/// node's span says: comparisons and conditionals start theirs at the
/// token before, filters theirs at the filter's name.)
fn left_start(e: &ast::Expr<'_>) -> u32 {
    match e {
        ast::Expr::BinOp(b) => left_start(&b.left),
        ast::Expr::Compare(c) => left_start(&c.expr),
        ast::Expr::IfExpr(i) => left_start(&i.true_expr),
        ast::Expr::Filter(f) => match &f.expr {
            Some(inner) => left_start(inner),
            None => f.span().start_offset,
        },
        ast::Expr::Test(t) => left_start(&t.expr),
        ast::Expr::GetAttr(g) => left_start(&g.expr),
        ast::Expr::GetItem(g) => left_start(&g.expr),
        ast::Expr::Slice(s) => left_start(&s.expr),
        ast::Expr::Call(c) => left_start(&c.expr),
        other => other.span().start_offset,
    }
}

/// `secrets.NAME` or `secrets["NAME"]`: the secret's name.
fn secret_name(e: &ast::Expr<'_>) -> Option<String> {
    match e {
        ast::Expr::GetAttr(g) => match &g.expr {
            ast::Expr::Var(v) if v.id == "secrets" => Some(g.name.to_owned()),
            _ => None,
        },
        ast::Expr::GetItem(g) => match (&g.expr, &g.subscript_expr) {
            (ast::Expr::Var(v), ast::Expr::Const(c)) if v.id == "secrets" => {
                c.value.as_str().map(str::to_owned)
            }
            _ => None,
        },
        _ => None,
    }
}

struct Walk<'s> {
    source: &'s str,
    /// What the rewrite bounds.
    nodes: Vec<Node>,
    /// Spans of `{{ secrets.NAME }}` emitted at the top level.
    secrets: Vec<(u32, u32, String)>,
    problem: Option<String>,
}

const SECRETS_RULE: &str = "uses `secrets` in an expression; a secret can only be inserted whole, as {{ secrets.NAME }}, with no filters, operators or tests (Weft resolves it only where the definition names it)";

impl Walk<'_> {
    fn refuse(&mut self, why: impl Into<String>) {
        self.problem.get_or_insert_with(|| why.into());
    }

    fn stmts(&mut self, body: &[ast::Stmt<'_>]) {
        for s in body {
            self.stmt(s);
        }
    }

    fn stmt(&mut self, s: &ast::Stmt<'_>) {
        match s {
            ast::Stmt::Template(t) => {
                for child in &t.children {
                    match child {
                        ast::Stmt::EmitExpr(e) if secret_name(&e.expr).is_some() => {
                            let span = e.span();
                            let name = secret_name(&e.expr).unwrap_or_default();
                            self.secrets
                                .push((span.start_offset, span.end_offset, name));
                        }
                        other => self.stmt(other),
                    }
                }
            }
            ast::Stmt::EmitExpr(e) => self.expr(&e.expr),
            ast::Stmt::EmitRaw(_) => {}
            ast::Stmt::ForLoop(f) => {
                if f.recursive {
                    self.refuse("uses a recursive loop, which templates here do not allow");
                }
                self.target(&f.target);
                self.expr(&f.iter);
                if let Some(e) = &f.filter_expr {
                    self.expr(e);
                }
                self.stmts(&f.body);
                self.stmts(&f.else_body);
            }
            ast::Stmt::IfCond(i) => {
                self.expr(&i.expr);
                self.stmts(&i.true_body);
                self.stmts(&i.false_body);
            }
            ast::Stmt::WithBlock(w) => {
                for (a, b) in &w.assignments {
                    self.target(a);
                    self.expr(b);
                }
                self.stmts(&w.body);
            }
            ast::Stmt::Set(set) => {
                if !matches!(set.target, ast::Expr::Var(_) | ast::Expr::List(_)) {
                    self.refuse("assigns to an attribute; only {% set name = ... %} is allowed");
                }
                self.target(&set.target);
                self.expr(&set.expr);
            }
            ast::Stmt::SetBlock(_)
            | ast::Stmt::AutoEscape(_)
            | ast::Stmt::FilterBlock(_)
            | ast::Stmt::Do(_) => self.refuse(
                "uses a statement templates here do not allow; use {% if %}, {% for %}, {% with %} and {% set name = ... %}",
            ),
        }
    }

    /// What a loop or an assignment binds names to: names, or lists of
    /// them (not literals to rewrite).
    fn target(&mut self, e: &ast::Expr<'_>) {
        match e {
            ast::Expr::List(l) => {
                for i in &l.items {
                    self.target(i);
                }
            }
            other => self.expr(other),
        }
    }

    fn args(&mut self, args: &[ast::CallArg<'_>]) {
        for a in args {
            match a {
                ast::CallArg::Pos(e)
                | ast::CallArg::Kwarg(_, e)
                | ast::CallArg::PosSplat(e)
                | ast::CallArg::KwargSplat(e) => self.expr(e),
            }
        }
    }

    fn expr(&mut self, e: &ast::Expr<'_>) {
        match e {
            ast::Expr::Var(v) => {
                if v.id == "secrets" {
                    self.refuse(SECRETS_RULE);
                } else if v.id.starts_with("__weft") {
                    self.refuse(format!("uses `{}`, a name reserved by Weft", v.id));
                }
            }
            ast::Expr::Const(_) => {}
            ast::Expr::Slice(s) => {
                self.nodes.push(Node::Slice {
                    start: left_start(&s.expr),
                    end: e.span().end_offset,
                    parts: [s.start.is_some(), s.stop.is_some(), s.step.is_some()],
                });
                self.expr(&s.expr);
                for part in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.expr(part);
                }
            }
            ast::Expr::UnaryOp(u) => self.expr(&u.expr),
            ast::Expr::BinOp(b) => {
                let kind = match b.op {
                    ast::BinOpKind::Mul => Some(BinKind::Mul),
                    ast::BinOpKind::Add => Some(BinKind::Add),
                    ast::BinOpKind::Concat => Some(BinKind::Cat),
                    ast::BinOpKind::Eq => Some(BinKind::Eq),
                    ast::BinOpKind::Ne => Some(BinKind::Ne),
                    ast::BinOpKind::Lt => Some(BinKind::Lt),
                    ast::BinOpKind::Lte => Some(BinKind::Lte),
                    ast::BinOpKind::Gt => Some(BinKind::Gt),
                    ast::BinOpKind::Gte => Some(BinKind::Gte),
                    ast::BinOpKind::In => Some(BinKind::In),
                    _ => None,
                };
                if let Some(kind) = kind {
                    self.nodes.push(Node::Bin {
                        start: left_start(&b.left),
                        end: b.span().end_offset,
                        kind,
                    });
                }
                self.expr(&b.left);
                self.expr(&b.right);
            }
            ast::Expr::Compare(_) => {
                self.refuse("chains comparisons (`a < b < c`); write `a < b and b < c`")
            }
            ast::Expr::IfExpr(i) => {
                self.expr(&i.test_expr);
                self.expr(&i.true_expr);
                if let Some(f) = &i.false_expr {
                    self.expr(f);
                }
            }
            ast::Expr::Filter(f) => {
                if let Some(e) = &f.expr {
                    self.expr(e);
                }
                self.args(&f.args);
            }
            ast::Expr::Test(t) => {
                self.expr(&t.expr);
                self.args(&t.args);
            }
            ast::Expr::GetAttr(g) => self.expr(&g.expr),
            ast::Expr::GetItem(g) => {
                self.nodes.push(Node::Item {
                    start: left_start(&g.expr),
                    end: e.span().end_offset,
                });
                self.expr(&g.expr);
                self.expr(&g.subscript_expr);
            }
            ast::Expr::Call(c) => {
                self.expr(&c.expr);
                self.args(&c.args);
            }
            ast::Expr::List(l) => {
                if l.as_const().is_none() {
                    let span = e.span();
                    // (An unbracketed tuple's span starts late.)
                    let first = l.items.first().map_or(u32::MAX, left_start);
                    self.nodes.push(Node::List {
                        start: span.start_offset.min(first),
                        end: span.end_offset,
                    });
                }
                for i in &l.items {
                    self.expr(i);
                }
            }
            ast::Expr::Map(m) => {
                if m.as_const().is_none() {
                    let span = e.span();
                    self.nodes.push(Node::Map {
                        start: span.start_offset,
                        end: span.end_offset,
                    });
                }
                for (k, v) in m.keys.iter().zip(&m.values) {
                    self.expr(k);
                    self.expr(v);
                }
            }
        }
    }

    /// The template split at its `{{ secrets.NAME }}` tags: only text and
    /// other `{{ ... }}` tags may stand between them (no statements, which
    /// could span a secret).
    fn secret_parts(
        &self,
        stmt: &ast::Stmt<'_>,
        tags: &[(u32, u32)],
    ) -> Result<Vec<Part>, TemplateError> {
        let ast::Stmt::Template(t) = stmt else {
            return Ok(Vec::new());
        };
        let mut parts = Vec::new();
        let mut secrets = self.secrets.iter().peekable();
        for child in &t.children {
            match child {
                ast::Stmt::EmitRaw(r) => parts.push(Part::Text(r.raw.to_owned())),
                ast::Stmt::EmitExpr(e) => {
                    // The expression's span ends before the closing `}}`;
                    // the tag's own span (from the tokens) holds it whole.
                    let span = e.span();
                    let end = tags
                        .iter()
                        .find(|(start, _)| *start == span.start_offset)
                        .map_or(span.end_offset, |t| t.1);
                    let text = self
                        .source
                        .get(span.start_offset as usize..end as usize)
                        .unwrap_or_default();
                    match secrets.peek() {
                        Some((start, _, name)) if *start == span.start_offset => {
                            if !is_plain_secret_tag(text) {
                                return Err(fail(self.source, SECRETS_RULE));
                            }
                            parts.push(Part::Secret(name.clone()));
                            secrets.next();
                        }
                        _ => parts.push(Part::Template(text.to_owned())),
                    }
                }
                _ => {
                    return Err(fail(
                        self.source,
                        "inserts a secret and uses a statement ({% ... %}); a text that inserts secrets may hold only text and {{ ... }}",
                    ));
                }
            }
        }
        Ok(parts)
    }
}

/// `{{ secrets.NAME }}` as written, without whitespace control (which
/// would change the text around it).
fn is_plain_secret_tag(text: &str) -> bool {
    let Some(inner) = text.strip_prefix("{{").and_then(|t| t.strip_suffix("}}")) else {
        return false;
    };
    !inner.starts_with(['-', '+']) && !inner.ends_with(['-', '+'])
}

/// Names a set of rewritten sources may call that are not references.
pub(super) fn is_internal_name(name: &str) -> bool {
    name.starts_with("__weft")
}

/// Keeps only names that refer to the context.
pub(super) fn references(names: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    names
        .into_iter()
        .filter(|n| !is_internal_name(n) && !super::BUILTIN_GLOBALS.contains(&n.as_str()))
        .collect()
}
