//! The press expression language of the command line.
//!
//! A press is written as a name with optional arguments in parentheses; arguments are
//! positional or `key=value`, and values are numbers, strings, booleans, `none`, lists or other
//! presses:
//!
//! ```text
//! adakv(expected_attention(epsilon=0.01), alpha_safeguard=0.2)
//! composed([snapkv, think(key_channel_compression_ratio=0.25)])
//! chunk(snapkv, chunk_length=1024)
//! ```
//!
//! This module only parses; which names and parameters exist is the registry's business. Every
//! node keeps its byte span so that errors can point at the bad part of the expression.

use std::fmt;

/// Byte range `[start, end)` in the source expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

/// A press application: `name(args…)`, or a bare `name`.
#[derive(Debug, Clone, PartialEq)]
pub struct PressExpr {
    /// The press name.
    pub name: String,
    /// Arguments in the order written.
    pub args: Vec<Arg>,
    /// Where the name stands.
    pub name_span: Span,
    /// The whole application.
    pub span: Span,
}

/// One argument.
#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    /// `Some(key)` for `key=value`.
    pub key: Option<String>,
    /// The value.
    pub value: Value,
    /// The whole argument.
    pub span: Span,
}

/// An argument value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An integer literal.
    Int(i64),
    /// A number with a fraction or exponent.
    Float(f64),
    /// A quoted string.
    Str(String),
    /// `true` / `false` (also `True` / `False`).
    Bool(bool),
    /// `none` / `None` / `null`.
    None,
    /// `[a, b, …]`.
    List(Vec<(Value, Span)>),
    /// A nested press (a bare identifier is a press without arguments).
    Press(PressExpr),
}

impl Value {
    /// The number as `f64`, for integer and float literals.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// A short description for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Bool(_) => "a boolean",
            Value::None => "none",
            Value::List(_) => "a list",
            Value::Press(_) => "a press",
        }
    }
}

/// A parse (or later, validation) error pointing into the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// What is wrong.
    pub message: String,
    /// Where.
    pub span: Span,
    /// The whole expression, for display.
    pub source: String,
}

impl ExprError {
    /// An error about `span` of `source`.
    pub fn new(message: impl Into<String>, span: Span, source: &str) -> Self {
        Self {
            message: message.into(),
            span,
            source: source.to_string(),
        }
    }
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.message)?;
        writeln!(f, "  {}", self.source)?;
        let lead = self.source[..self.span.start.min(self.source.len())]
            .chars()
            .count();
        let width = self.source
            [self.span.start.min(self.source.len())..self.span.end.min(self.source.len())]
            .chars()
            .count()
            .max(1);
        write!(f, "  {}{}", " ".repeat(lead), "^".repeat(width))
    }
}

impl std::error::Error for ExprError {}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl<'a> Parser<'a> {
    fn err(&self, message: impl Into<String>, start: usize, end: usize) -> ExprError {
        ExprError::new(message, Span { start, end }, self.src)
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Option<(String, Span)> {
        self.skip_ws();
        let start = self.pos;
        match self.peek() {
            Some(c) if is_ident_start(c) => {}
            _ => return None,
        }
        while let Some(c) = self.peek() {
            if is_ident_char(c) {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
        Some((
            self.src[start..self.pos].to_string(),
            Span {
                start,
                end: self.pos,
            },
        ))
    }

    fn unexpected(&self, expected: &str) -> ExprError {
        match self.peek() {
            None => self.err(
                format!("expected {expected}, found the end of the expression"),
                self.pos,
                self.pos,
            ),
            Some(c) => self.err(
                format!("expected {expected}, found `{c}`"),
                self.pos,
                self.pos + c.len_utf8(),
            ),
        }
    }

    /// `name` or `name(args)`, the name already read.
    fn press_after_name(&mut self, name: String, name_span: Span) -> Result<PressExpr, ExprError> {
        let mut args = Vec::new();
        if self.eat('(') {
            let mut seen_keyword = false;
            loop {
                self.skip_ws();
                if self.eat(')') {
                    break;
                }
                let arg = self.arg()?;
                if arg.key.is_some() {
                    seen_keyword = true;
                } else if seen_keyword {
                    return Err(self.err(
                        "a positional argument cannot follow keyword arguments",
                        arg.span.start,
                        arg.span.end,
                    ));
                }
                args.push(arg);
                if self.eat(',') {
                    continue;
                }
                if self.eat(')') {
                    break;
                }
                return Err(self.unexpected("`,` or `)`"));
            }
        }
        Ok(PressExpr {
            name,
            args,
            name_span,
            span: Span {
                start: name_span.start,
                end: self.pos,
            },
        })
    }

    fn arg(&mut self) -> Result<Arg, ExprError> {
        self.skip_ws();
        let start = self.pos;
        // `key=value` if an identifier is followed by `=`.
        if let Some((key, _)) = self.ident() {
            if self.eat('=') {
                let (value, span) = self.value()?;
                return Ok(Arg {
                    key: Some(key),
                    value,
                    span: Span {
                        start,
                        end: span.end,
                    },
                });
            }
            self.pos = start;
        }
        let (value, span) = self.value()?;
        Ok(Arg {
            key: None,
            value,
            span,
        })
    }

    fn value(&mut self) -> Result<(Value, Span), ExprError> {
        self.skip_ws();
        let start = self.pos;
        let value = match self.peek() {
            Some('[') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    if self.eat(']') {
                        break;
                    }
                    items.push(self.value()?);
                    if self.eat(',') {
                        continue;
                    }
                    if self.eat(']') {
                        break;
                    }
                    return Err(self.unexpected("`,` or `]`"));
                }
                Value::List(items)
            }
            Some(q @ ('"' | '\'')) => {
                self.pos += 1;
                let body_start = self.pos;
                match self.src[self.pos..].find(q) {
                    Some(len) => {
                        self.pos += len + 1;
                        Value::Str(self.src[body_start..body_start + len].to_string())
                    }
                    None => return Err(self.err("unterminated string", start, self.src.len())),
                }
            }
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => self.number()?,
            Some(c) if is_ident_start(c) => {
                let (name, span) = self.ident().ok_or_else(|| self.unexpected("a value"))?;
                match name.as_str() {
                    "true" | "True" => Value::Bool(true),
                    "false" | "False" => Value::Bool(false),
                    "none" | "None" | "null" => Value::None,
                    _ => Value::Press(self.press_after_name(name, span)?),
                }
            }
            _ => return Err(self.unexpected("a value")),
        };
        Ok((
            value,
            Span {
                start,
                end: self.pos,
            },
        ))
    }

    fn number(&mut self) -> Result<Value, ExprError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            let prev = self.src[..self.pos].chars().last();
            let sign_ok =
                (c == '-' || c == '+') && (self.pos == start || matches!(prev, Some('e' | 'E')));
            if c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || c == '_' || sign_ok {
                self.pos += 1;
            } else {
                break;
            }
        }
        let text: String = self.src[start..self.pos]
            .chars()
            .filter(|&c| c != '_')
            .collect();
        if let Ok(i) = text.parse::<i64>() {
            return Ok(Value::Int(i));
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Float(f)),
            _ => Err(self.err(
                format!("`{}` is not a number", &self.src[start..self.pos]),
                start,
                self.pos,
            )),
        }
    }
}

/// Parses one press expression.
pub fn parse(src: &str) -> Result<PressExpr, ExprError> {
    let mut p = Parser { src, pos: 0 };
    let (name, span) = p.ident().ok_or_else(|| p.unexpected("a press name"))?;
    let expr = p.press_after_name(name, span)?;
    p.skip_ws();
    if p.pos < src.len() {
        return Err(p.err(
            "unexpected text after the press expression",
            p.pos,
            src.len(),
        ));
    }
    Ok(expr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(v: &Value) -> &PressExpr {
        match v {
            Value::Press(p) => p,
            other => panic!("expected a press, got {other:?}"),
        }
    }

    #[test]
    fn bare_name() {
        let e = parse("  knorm ").expect("parses");
        assert_eq!(e.name, "knorm");
        assert!(e.args.is_empty());
        assert_eq!(e.name_span, Span { start: 2, end: 7 });
    }

    #[test]
    fn nested_with_keywords() {
        let e =
            parse("adakv(expected_attention(epsilon=0.01), alpha_safeguard=0.2)").expect("parses");
        assert_eq!(e.name, "adakv");
        assert_eq!(e.args.len(), 2);
        let inner = press(&e.args[0].value);
        assert_eq!(inner.name, "expected_attention");
        assert_eq!(inner.args[0].key.as_deref(), Some("epsilon"));
        assert_eq!(inner.args[0].value, Value::Float(0.01));
        assert_eq!(e.args[1].key.as_deref(), Some("alpha_safeguard"));
        assert_eq!(e.args[1].value.as_f64(), Some(0.2));
    }

    #[test]
    fn lists_strings_booleans_none_and_integers() {
        let e = parse("composed([snapkv, think(key_channel_compression_ratio=0.25)], name='x y', flag=True, n=none, k=-3, e=1e-3)")
            .expect("parses");
        match &e.args[0].value {
            Value::List(items) => {
                assert_eq!(items.len(), 2);
                assert_eq!(press(&items[0].0).name, "snapkv");
                assert_eq!(press(&items[1].0).name, "think");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.args[1].value, Value::Str("x y".into()));
        assert_eq!(e.args[2].value, Value::Bool(true));
        assert_eq!(e.args[3].value, Value::None);
        assert_eq!(e.args[4].value, Value::Int(-3));
        assert_eq!(e.args[5].value, Value::Float(0.001));
    }

    #[test]
    fn errors_point_at_the_bad_part() {
        let err = parse("chunk(snapkv, chunk_length=10x24)").expect_err("bad");
        assert!(err.message.contains("`,` or `)`"), "{}", err.message);
        assert_eq!(&err.source[err.span.start..err.span.end], "x");
        let shown = err.to_string();
        assert!(
            shown.ends_with("                               ^"),
            "{shown}"
        );

        let err = parse("chunk(snapkv, chunk_length=)").expect_err("bad");
        assert!(err.message.contains("expected a value"), "{}", err.message);

        let err = parse("snapkv(window_size=4").expect_err("bad");
        assert!(
            err.message.contains("end of the expression"),
            "{}",
            err.message
        );

        let err = parse("knorm) extra").expect_err("bad");
        assert!(err.message.contains("unexpected text"), "{}", err.message);

        let err = parse("adakv(alpha_safeguard=0.2, snapkv)").expect_err("bad");
        assert!(err.message.contains("positional"), "{}", err.message);
        assert_eq!(&err.source[err.span.start..err.span.end], "snapkv");

        let err = parse("snapkv(name='open").expect_err("bad");
        assert!(err.message.contains("unterminated"), "{}", err.message);

        let err = parse("knorm(1.2.3)").expect_err("bad");
        assert!(err.message.contains("not a number"), "{}", err.message);

        assert!(parse("").is_err());
        assert!(parse("(knorm)").is_err());
    }
}
