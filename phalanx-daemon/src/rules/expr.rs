//! The condition language of custom rules.
//!
//! A condition is an expression over the fields of a flow's report, as
//! named in `phalanx analyze --json` (`retransmissions`, `rtt.p99_ms`,
//! `src_to_dst.zero_window_ms`, `state`, ...):
//!
//! ```text
//! or   := and ("or" and)*
//! and  := not ("and" not)*
//! not  := "not" not | cmp
//! cmp  := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
//! sum  := prod (("+" | "-") prod)*
//! prod := neg (("*" | "/") neg)*
//! neg  := "-" neg | atom
//! atom := NUMBER | "string" | true | false | FIELD | "(" or ")"
//! ```
//!
//! Types are checked when the rule is compiled: arithmetic and ordering
//! need numbers, `and`/`or`/`not` need true/false values, `==`/`!=` need
//! both sides of one type, and the whole condition must be true/false.
//! Evaluation is three-valued: a field without a value (`null`, e.g. no
//! RTT samples) or a division by zero makes the result *unknown*, and a
//! rule fires only when its condition is definitely true.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// Deepest nesting accepted (parentheses, `not`, unary minus): bounds the
/// parser's recursion whatever the input.
const MAX_DEPTH: usize = 64;

/// A syntax or type error, with the 1-based character column it points at.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ExprError {
    /// 1-based column (in characters) of the offending token.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

fn err<T>(column: usize, message: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError {
        column,
        message: message.into(),
    })
}

/// Type of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A number (possibly without a value for a given flow).
    Num,
    /// true / false.
    Bool,
    /// A string (`state`, `proto`, ...).
    Str,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Num => "a number",
            Kind::Bool => "true/false",
            Kind::Str => "a string",
        })
    }
}

/// The fields an expression may name, with their types.
#[derive(Clone, Debug, Default)]
pub struct Fields(BTreeMap<String, Kind>);

impl Fields {
    /// The scalar leaves of a JSON object, named by their dotted paths
    /// (arrays are not addressable). `null` leaves are skipped, so the
    /// example must give every optional field a value.
    pub fn from_example(v: &Value) -> Self {
        fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, Kind>) {
            match v {
                Value::Object(m) => {
                    for (k, x) in m {
                        let p = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&p, x, out);
                    }
                }
                Value::Number(_) => {
                    out.insert(prefix.to_string(), Kind::Num);
                }
                Value::Bool(_) => {
                    out.insert(prefix.to_string(), Kind::Bool);
                }
                Value::String(_) => {
                    out.insert(prefix.to_string(), Kind::Str);
                }
                Value::Null | Value::Array(_) => {}
            }
        }
        let mut m = BTreeMap::new();
        walk("", v, &mut m);
        Self(m)
    }

    /// The type of a field, if it exists.
    pub fn kind(&self, path: &str) -> Option<Kind> {
        self.0.get(path).copied()
    }

    /// Every field name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The known field closest to `path` (for "did you mean").
    fn closest(&self, path: &str) -> Option<&str> {
        self.names()
            .map(|n| (edit_distance(n, path), n))
            .filter(|(d, n)| *d <= 3.max(n.len() / 4))
            .min_by_key(|(d, _)| *d)
            .map(|(_, n)| n)
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `and`
    And,
    /// `or`
    Or,
}

impl BinOp {
    fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::And => "and",
            BinOp::Or => "or",
        }
    }
}

/// A compiled (parsed and type-checked) expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// Number literal.
    Num(f64),
    /// `true` / `false`.
    Bool(bool),
    /// String literal.
    Str(String),
    /// A field of the flow report, by dotted path.
    Field(String),
    /// Unary minus.
    Neg(Box<Expr>),
    /// `not`.
    Not(Box<Expr>),
    /// Binary operation.
    Bin(BinOp, Box<Expr>, Box<Expr>),
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    LParen,
    RParen,
    Op(BinOp),
    Not,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Num(n) => format!("number {n}"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Ident(s) => format!("`{s}`"),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::Op(o) => format!("`{}`", o.symbol()),
            Tok::Not => "`not`".into(),
            Tok::End => "the end of the expression".into(),
        }
    }
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let col = i + 1;
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
            continue;
        }
        let next = c.get(i + 1).copied();
        let two = |t: Tok| (t, 2usize);
        let (tok, len) = match ch {
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            '+' => (Tok::Op(BinOp::Add), 1),
            '-' => (Tok::Op(BinOp::Sub), 1),
            '*' => (Tok::Op(BinOp::Mul), 1),
            '/' => (Tok::Op(BinOp::Div), 1),
            '<' if next == Some('=') => two(Tok::Op(BinOp::Le)),
            '<' => (Tok::Op(BinOp::Lt), 1),
            '>' if next == Some('=') => two(Tok::Op(BinOp::Ge)),
            '>' => (Tok::Op(BinOp::Gt), 1),
            '=' if next == Some('=') => two(Tok::Op(BinOp::Eq)),
            '=' => return err(col, "`=` is not an operator; compare with `==`"),
            '!' if next == Some('=') => two(Tok::Op(BinOp::Ne)),
            '!' => return err(col, "use `not` for negation"),
            '&' if next == Some('&') => two(Tok::Op(BinOp::And)),
            '|' if next == Some('|') => two(Tok::Op(BinOp::Or)),
            '"' => lex_string(&c, i)?,
            d if d.is_ascii_digit() || (d == '.' && next.is_some_and(|n| n.is_ascii_digit())) => {
                lex_number(&c, i)?
            }
            a if a.is_ascii_alphabetic() || a == '_' => lex_word(&c, i),
            other => return err(col, format!("unexpected character {other:?}")),
        };
        out.push((tok, col));
        i += len;
    }
    out.push((Tok::End, c.len() + 1));
    Ok(out)
}

/// The string literal opening at `c[i]` (a `"`) and its length in chars.
fn lex_string(c: &[char], i: usize) -> Result<(Tok, usize), ExprError> {
    let mut j = i + 1;
    let mut s = String::new();
    loop {
        match c.get(j) {
            None => return err(i + 1, "unterminated string"),
            Some('"') => break,
            Some('\\') if c.get(j + 1) == Some(&'"') => {
                s.push('"');
                j += 2;
            }
            Some(&x) => {
                s.push(x);
                j += 1;
            }
        }
    }
    Ok((Tok::Str(s), j + 1 - i))
}

/// The number starting at `c[i]` and its length in chars.
fn lex_number(c: &[char], i: usize) -> Result<(Tok, usize), ExprError> {
    let mut j = i;
    while c.get(j).is_some_and(|x| x.is_ascii_digit()) {
        j += 1;
    }
    if c.get(j) == Some(&'.') {
        j += 1;
        while c.get(j).is_some_and(|x| x.is_ascii_digit()) {
            j += 1;
        }
    }
    if matches!(c.get(j), Some('e' | 'E')) {
        let mut k = j + 1;
        if matches!(c.get(k), Some('+' | '-')) {
            k += 1;
        }
        if c.get(k).is_some_and(|x| x.is_ascii_digit()) {
            while c.get(k).is_some_and(|x| x.is_ascii_digit()) {
                k += 1;
            }
            j = k;
        }
    }
    if c.get(j).is_some_and(|x| x.is_alphanumeric() || *x == '_') {
        return err(j + 1, "a number must not run into a name");
    }
    let text: String = c[i..j].iter().collect();
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok((Tok::Num(v), j - i)),
        _ => err(i + 1, format!("`{text}` is not a number")),
    }
}

/// The name, dotted path or keyword starting at `c[i]` and its length.
fn lex_word(c: &[char], i: usize) -> (Tok, usize) {
    let mut j = i;
    loop {
        while c
            .get(j)
            .is_some_and(|x| x.is_ascii_alphanumeric() || *x == '_')
        {
            j += 1;
        }
        // A dot continues the path only when a name follows.
        if c.get(j) == Some(&'.')
            && c.get(j + 1)
                .is_some_and(|x| x.is_ascii_alphabetic() || *x == '_')
        {
            j += 1;
            continue;
        }
        break;
    }
    let word: String = c[i..j].iter().collect();
    let tok = match word.as_str() {
        "and" => Tok::Op(BinOp::And),
        "or" => Tok::Op(BinOp::Or),
        "not" => Tok::Not,
        _ => Tok::Ident(word),
    };
    (tok, j - i)
}

struct Parser<'a> {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
    fields: &'a Fields,
    used: Vec<String>,
}

type Typed = (Expr, Kind, usize);

impl Parser<'_> {
    fn peek(&self) -> &(Tok, usize) {
        // `lex` always ends the list with `End`, and `pos` never passes it.
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }

    fn bump(&mut self) -> (Tok, usize) {
        let t = self.peek().clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn deeper(&mut self, col: usize) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(col, format!("nested more than {MAX_DEPTH} levels deep"));
        }
        Ok(())
    }

    fn need(&self, t: &Typed, want: Kind, op: &str) -> Result<(), ExprError> {
        if t.1 == want {
            return Ok(());
        }
        err(t.2, format!("`{op}` needs {want} here, this is {}", t.1))
    }

    fn or(&mut self) -> Result<Typed, ExprError> {
        let mut l = self.and()?;
        while let (Tok::Op(BinOp::Or), _) = self.peek() {
            self.bump();
            let r = self.and()?;
            self.need(&l, Kind::Bool, "or")?;
            self.need(&r, Kind::Bool, "or")?;
            l = (
                Expr::Bin(BinOp::Or, Box::new(l.0), Box::new(r.0)),
                Kind::Bool,
                l.2,
            );
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Typed, ExprError> {
        let mut l = self.not()?;
        while let (Tok::Op(BinOp::And), _) = self.peek() {
            self.bump();
            let r = self.not()?;
            self.need(&l, Kind::Bool, "and")?;
            self.need(&r, Kind::Bool, "and")?;
            l = (
                Expr::Bin(BinOp::And, Box::new(l.0), Box::new(r.0)),
                Kind::Bool,
                l.2,
            );
        }
        Ok(l)
    }

    fn not(&mut self) -> Result<Typed, ExprError> {
        if let (Tok::Not, col) = self.peek() {
            let col = *col;
            self.bump();
            self.deeper(col)?;
            let e = self.not()?;
            self.depth -= 1;
            self.need(&e, Kind::Bool, "not")?;
            return Ok((Expr::Not(Box::new(e.0)), Kind::Bool, col));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Typed, ExprError> {
        let l = self.sum()?;
        let op = match self.peek() {
            (
                Tok::Op(
                    op @ (BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::Eq | BinOp::Ne),
                ),
                _,
            ) => *op,
            _ => return Ok(l),
        };
        self.bump();
        let r = self.sum()?;
        match op {
            BinOp::Eq | BinOp::Ne => {
                if l.1 != r.1 {
                    return err(
                        r.2,
                        format!(
                            "`{}` compares values of one type: {} against {}",
                            op.symbol(),
                            l.1,
                            r.1
                        ),
                    );
                }
            }
            _ => {
                self.need(&l, Kind::Num, op.symbol())?;
                self.need(&r, Kind::Num, op.symbol())?;
            }
        }
        if let (
            Tok::Op(o @ (BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::Eq | BinOp::Ne)),
            c2,
        ) = self.peek()
        {
            return err(
                *c2,
                format!(
                    "comparisons do not chain: join them with `and` before `{}`",
                    o.symbol()
                ),
            );
        }
        Ok((Expr::Bin(op, Box::new(l.0), Box::new(r.0)), Kind::Bool, l.2))
    }

    fn sum(&mut self) -> Result<Typed, ExprError> {
        let mut l = self.prod()?;
        while let (Tok::Op(op @ (BinOp::Add | BinOp::Sub)), _) = self.peek() {
            let op = *op;
            self.bump();
            let r = self.prod()?;
            self.need(&l, Kind::Num, op.symbol())?;
            self.need(&r, Kind::Num, op.symbol())?;
            l = (Expr::Bin(op, Box::new(l.0), Box::new(r.0)), Kind::Num, l.2);
        }
        Ok(l)
    }

    fn prod(&mut self) -> Result<Typed, ExprError> {
        let mut l = self.neg()?;
        while let (Tok::Op(op @ (BinOp::Mul | BinOp::Div)), _) = self.peek() {
            let op = *op;
            self.bump();
            let r = self.neg()?;
            self.need(&l, Kind::Num, op.symbol())?;
            self.need(&r, Kind::Num, op.symbol())?;
            l = (Expr::Bin(op, Box::new(l.0), Box::new(r.0)), Kind::Num, l.2);
        }
        Ok(l)
    }

    fn neg(&mut self) -> Result<Typed, ExprError> {
        if let (Tok::Op(BinOp::Sub), col) = self.peek() {
            let col = *col;
            self.bump();
            self.deeper(col)?;
            let e = self.neg()?;
            self.depth -= 1;
            self.need(&e, Kind::Num, "-")?;
            return Ok((Expr::Neg(Box::new(e.0)), Kind::Num, col));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Typed, ExprError> {
        let (tok, col) = self.bump();
        match tok {
            Tok::Num(v) => Ok((Expr::Num(v), Kind::Num, col)),
            Tok::Str(s) => Ok((Expr::Str(s), Kind::Str, col)),
            Tok::Ident(w) if w == "true" => Ok((Expr::Bool(true), Kind::Bool, col)),
            Tok::Ident(w) if w == "false" => Ok((Expr::Bool(false), Kind::Bool, col)),
            Tok::Ident(path) => {
                let Some(kind) = self.fields.kind(&path) else {
                    let hint = match self.fields.closest(&path) {
                        Some(c) => format!(" (did you mean `{c}`?)"),
                        None => String::new(),
                    };
                    return err(col, format!("unknown field `{path}`{hint}"));
                };
                if !self.used.contains(&path) {
                    self.used.push(path.clone());
                }
                Ok((Expr::Field(path), kind, col))
            }
            Tok::LParen => {
                self.deeper(col)?;
                let e = self.or()?;
                self.depth -= 1;
                match self.bump() {
                    (Tok::RParen, _) => Ok((e.0, e.1, col)),
                    (t, c) => err(
                        c,
                        format!("expected `)` to close column {col}, found {}", t.describe()),
                    ),
                }
            }
            t => err(
                col,
                format!("expected a number, a field or `(`, found {}", t.describe()),
            ),
        }
    }
}

/// A compiled condition: the expression plus the fields it reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    /// The expression.
    pub expr: Expr,
    /// Fields it names, in order of first appearance.
    pub fields: Vec<String>,
}

/// Parses and type-checks a condition (it must be true/false).
pub fn compile(src: &str, fields: &Fields) -> Result<Condition, ExprError> {
    let toks = lex(src)?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
        fields,
        used: Vec::new(),
    };
    if matches!(p.peek().0, Tok::End) {
        return err(1, "the condition is empty");
    }
    let e = p.or()?;
    let (t, col) = p.peek().clone();
    if t != Tok::End {
        return err(
            col,
            format!("unexpected {} after a complete expression", t.describe()),
        );
    }
    if e.1 != Kind::Bool {
        return err(
            1,
            format!(
                "the condition must be true/false (a comparison), this is {}",
                e.1
            ),
        );
    }
    Ok(Condition {
        expr: e.0,
        fields: p.used,
    })
}

/// A runtime value.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Val<'a> {
    Num(f64),
    Bool(bool),
    Str(&'a str),
    /// No value: a `null` field, a division by zero, a non-finite result.
    Unknown,
}

/// Looks up a dotted path in a JSON object.
pub fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn eval<'a>(e: &'a Expr, flow: &'a Value) -> Val<'a> {
    match e {
        Expr::Num(n) => Val::Num(*n),
        Expr::Bool(b) => Val::Bool(*b),
        Expr::Str(s) => Val::Str(s),
        Expr::Field(p) => match lookup(flow, p) {
            Some(Value::Number(n)) => n.as_f64().map_or(Val::Unknown, Val::Num),
            Some(Value::Bool(b)) => Val::Bool(*b),
            Some(Value::String(s)) => Val::Str(s),
            _ => Val::Unknown,
        },
        Expr::Neg(x) => match eval(x, flow) {
            Val::Num(n) => Val::Num(-n),
            _ => Val::Unknown,
        },
        Expr::Not(x) => match eval(x, flow) {
            Val::Bool(b) => Val::Bool(!b),
            _ => Val::Unknown,
        },
        Expr::Bin(BinOp::And, l, r) => match (eval(l, flow), eval(r, flow)) {
            (Val::Bool(false), _) | (_, Val::Bool(false)) => Val::Bool(false),
            (Val::Bool(true), Val::Bool(true)) => Val::Bool(true),
            _ => Val::Unknown,
        },
        Expr::Bin(BinOp::Or, l, r) => match (eval(l, flow), eval(r, flow)) {
            (Val::Bool(true), _) | (_, Val::Bool(true)) => Val::Bool(true),
            (Val::Bool(false), Val::Bool(false)) => Val::Bool(false),
            _ => Val::Unknown,
        },
        Expr::Bin(op, l, r) => {
            let (a, b) = (eval(l, flow), eval(r, flow));
            match (op, a, b) {
                (BinOp::Eq, Val::Str(x), Val::Str(y)) => Val::Bool(x == y),
                (BinOp::Ne, Val::Str(x), Val::Str(y)) => Val::Bool(x != y),
                (BinOp::Eq, Val::Bool(x), Val::Bool(y)) => Val::Bool(x == y),
                (BinOp::Ne, Val::Bool(x), Val::Bool(y)) => Val::Bool(x != y),
                (_, Val::Num(x), Val::Num(y)) => numeric(*op, x, y),
                _ => Val::Unknown,
            }
        }
    }
}

/// A binary operation on two numbers.
fn numeric<'a>(op: BinOp, x: f64, y: f64) -> Val<'a> {
    let num = |v: f64| {
        if v.is_finite() {
            Val::Num(v)
        } else {
            Val::Unknown
        }
    };
    match op {
        BinOp::Add => num(x + y),
        BinOp::Sub => num(x - y),
        BinOp::Mul => num(x * y),
        BinOp::Div if y == 0.0 => Val::Unknown,
        BinOp::Div => num(x / y),
        BinOp::Lt => Val::Bool(x < y),
        BinOp::Le => Val::Bool(x <= y),
        BinOp::Gt => Val::Bool(x > y),
        BinOp::Ge => Val::Bool(x >= y),
        BinOp::Eq => Val::Bool(x == y),
        BinOp::Ne => Val::Bool(x != y),
        BinOp::And | BinOp::Or => Val::Unknown,
    }
}

impl Condition {
    /// Whether the condition is definitely true for a flow's JSON report
    /// (unknown counts as not true).
    pub fn holds(&self, flow: &Value) -> bool {
        eval(&self.expr, flow) == Val::Bool(true)
    }
}

/// One piece of a summary template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

/// A summary template: text with `{field.path}` placeholders (`{{` and
/// `}}` for literal braces).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    /// Fields it names, in order of first appearance.
    pub fields: Vec<String>,
}

impl Template {
    /// Parses a template; unknown fields and unbalanced braces are errors
    /// with the column.
    pub fn compile(src: &str, fields: &Fields) -> Result<Self, ExprError> {
        let c: Vec<char> = src.chars().collect();
        let mut pieces = Vec::new();
        let mut used: Vec<String> = Vec::new();
        let mut text = String::new();
        let mut i = 0;
        while i < c.len() {
            match c[i] {
                '{' if c.get(i + 1) == Some(&'{') => {
                    text.push('{');
                    i += 2;
                }
                '}' if c.get(i + 1) == Some(&'}') => {
                    text.push('}');
                    i += 2;
                }
                '}' => return err(i + 1, "unmatched `}` (write `}}` for a brace)"),
                '{' => {
                    let Some(len) = c[i + 1..].iter().position(|&x| x == '}') else {
                        return err(i + 1, "unclosed `{`");
                    };
                    let name: String = c[i + 1..i + 1 + len].iter().collect();
                    let name = name.trim().to_string();
                    if fields.kind(&name).is_none() {
                        let hint = match fields.closest(&name) {
                            Some(h) => format!(" (did you mean `{h}`?)"),
                            None => String::new(),
                        };
                        return err(i + 2, format!("unknown field `{name}`{hint}"));
                    }
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    if !used.contains(&name) {
                        used.push(name.clone());
                    }
                    pieces.push(Piece::Field(name));
                    i += len + 2;
                }
                ch => {
                    text.push(ch);
                    i += 1;
                }
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Self {
            pieces,
            fields: used,
        })
    }

    /// Renders the template for a flow's JSON report.
    pub fn render(&self, flow: &Value) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(f) => out.push_str(&display(lookup(flow, f))),
            }
        }
        out
    }
}

/// A field value as a person reads it: integers without a fraction, other
/// numbers with at most 3 decimals, `n/a` for no value.
pub fn display(v: Option<&Value>) -> String {
    match v {
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.to_string(),
            (_, Some(i), _) => i.to_string(),
            (_, _, Some(f)) => {
                let s = format!("{f:.3}");
                let s = s.trim_end_matches('0').trim_end_matches('.');
                s.to_string()
            }
            _ => "n/a".into(),
        },
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => "n/a".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields() -> Fields {
        Fields::from_example(&json!({
            "packets": 1, "retransmissions": 1, "state": "x", "syn_unanswered": true,
            "rtt": {"p99_ms": 1.0, "min_ms": 1.0},
            "src_to_dst": {"retransmissions": 1}
        }))
    }

    fn col(src: &str) -> (usize, String) {
        let e = compile(src, &fields()).expect_err(src);
        (e.column, e.message)
    }

    #[test]
    fn precedence_and_evaluation() {
        let f = fields();
        let flow = json!({"packets": 100, "retransmissions": 6, "state": "reset",
            "syn_unanswered": false, "rtt": {"p99_ms": 250.5, "min_ms": null},
            "src_to_dst": {"retransmissions": 6}});
        for (src, want) in [
            (
                "retransmissions / packets > 0.05 and rtt.p99_ms > 200",
                true,
            ),
            (
                "retransmissions / packets > 0.05 and rtt.p99_ms > 300",
                false,
            ),
            ("1 + 2 * 3 == 7", true),
            ("(1 + 2) * 3 == 9", true),
            ("10 - 4 - 3 == 3", true),
            ("-2 * -3 == 6", true),
            ("not syn_unanswered and state == \"reset\"", true),
            ("state != \"reset\" or packets >= 100", true),
            ("src_to_dst.retransmissions == retransmissions", true),
            ("2.5e2 < rtt.p99_ms", true),
            // Unknown (null) values never fire, even under `not`.
            ("rtt.min_ms > 0", false),
            ("not (rtt.min_ms > 0)", false),
            ("rtt.min_ms > 0 or packets > 1", true),
            ("rtt.min_ms > 0 and packets > 1", false),
            // Division by zero is unknown, not a panic and not infinity.
            ("packets / 0 > 1", false),
            ("not (packets / (retransmissions - 6) > 1)", false),
        ] {
            let c = compile(src, &f).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(c.holds(&flow), want, "{src}");
        }
    }

    #[test]
    fn error_positions_are_exact() {
        assert_eq!(
            col("retransmissions / packets > 0.05 and rtt.p98_ms > 200"),
            (
                38,
                "unknown field `rtt.p98_ms` (did you mean `rtt.p99_ms`?)".into()
            )
        );
        assert_eq!(
            col("packets > "),
            (
                11,
                "expected a number, a field or `(`, found the end of the expression".into()
            )
        );
        assert_eq!(
            col("(packets > 1"),
            (
                13,
                "expected `)` to close column 1, found the end of the expression".into()
            )
        );
        assert_eq!(
            col("packets > 1)"),
            (12, "unexpected `)` after a complete expression".into())
        );
        assert_eq!(
            col("packets = 1"),
            (9, "`=` is not an operator; compare with `==`".into())
        );
        assert_eq!(
            col("packets > 1 and state"),
            (17, "`and` needs true/false here, this is a string".into())
        );
        assert_eq!(
            col("state > 1"),
            (1, "`>` needs a number here, this is a string".into())
        );
        assert_eq!(
            col("state == 1"),
            (
                10,
                "`==` compares values of one type: a string against a number".into()
            )
        );
        assert_eq!(
            col("packets + 1"),
            (
                1,
                "the condition must be true/false (a comparison), this is a number".into()
            )
        );
        assert_eq!(
            col("1 < packets < 3"),
            (
                13,
                "comparisons do not chain: join them with `and` before `<`".into()
            )
        );
        assert_eq!(
            col("packets > 1 # x"),
            (13, "unexpected character '#'".into())
        );
        assert_eq!(col("state == \"open"), (10, "unterminated string".into()));
        assert_eq!(col("   "), (1, "the condition is empty".into()));
        assert_eq!(
            col("packets > 12abc"),
            (13, "a number must not run into a name".into())
        );
        // Columns count characters, not bytes.
        assert_eq!(
            col("state == \"é\" and ü"),
            (18, "unexpected character 'ü'".into())
        );
        let deep = format!("{}packets > 1{}", "(".repeat(70), ")".repeat(70));
        assert_eq!(col(&deep), (65, "nested more than 64 levels deep".into()));
    }

    #[test]
    fn template_renders_and_reports_columns() {
        let f = fields();
        let t = Template::compile(
            "{retransmissions} of {packets} re-sent, p99 {rtt.p99_ms} ms {{x}} {rtt.min_ms}",
            &f,
        )
        .expect("valid template");
        let flow =
            json!({"packets": 100, "retransmissions": 6, "rtt": {"p99_ms": 250.5, "min_ms": null}});
        assert_eq!(t.render(&flow), "6 of 100 re-sent, p99 250.5 ms {x} n/a");
        assert_eq!(
            t.fields,
            ["retransmissions", "packets", "rtt.p99_ms", "rtt.min_ms"]
        );
        let e = Template::compile("ok {packets} {rtt.p9_ms}", &f).expect_err("unknown");
        assert_eq!(e.column, 15);
        let e = Template::compile("ok {packets", &f).expect_err("unclosed");
        assert_eq!((e.column, e.message.as_str()), (4, "unclosed `{`"));
        let e = Template::compile("a } b", &f).expect_err("unmatched");
        assert_eq!(e.column, 3);
    }
}
