//! A safe stand-in for the Python `eval()` that LooGLE's cloze metric runs on the reference
//! answer and on the model's output (`get_exact_match` / `get_partial_match`).
//!
//! Only Python *literals* are evaluated, like `ast.literal_eval`: `None`, `True`, `False`,
//! numbers (with `+`/`-` signs, underscores, hex/octal/binary), strings and bytes (all quote
//! forms, prefixes `r u b f` without `{}` fields, escapes, implicit concatenation), lists,
//! tuples, dicts and sets, nested. The layout rules of `eval` are kept: leading spaces and tabs
//! are ignored, leading blank lines too, but an indented first line or anything after the
//! expression is a syntax error; inside brackets lines may break freely; `#` comments are
//! allowed.
//!
//! Anything else (names, calls, operators, comprehensions, complex numbers, `\N{...}`) is
//! treated as a failed evaluation — where Python would evaluate e.g. `{"a": 1 + 1}`, this
//! returns `None`; for model outputs scored by LooGLE that means "not a dict", scored 0, which is
//! also what Python gives for every output that is not a literal dict.

/// A Python value built from a literal.
#[derive(Debug, Clone)]
pub enum PyValue {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An `int` (only the `i128` range is supported).
    Int(i128),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `bytes`.
    Bytes(Vec<u8>),
    /// A `list`.
    List(Vec<PyValue>),
    /// A `tuple`.
    Tuple(Vec<PyValue>),
    /// A `dict`, in insertion order, keys unique under Python equality.
    Dict(Vec<(PyValue, PyValue)>),
    /// A `set`, elements unique under Python equality.
    Set(Vec<PyValue>),
}

impl PyValue {
    /// Python's `==`: numbers compare by value across `bool`/`int`/`float`, containers
    /// element-wise (`list` ≠ `tuple`), dicts and sets regardless of order.
    pub fn py_eq(&self, other: &PyValue) -> bool {
        use PyValue as V;
        if let (Some(a), Some(b)) = (self.number(), other.number()) {
            return numbers_eq(a, b);
        }
        match (self, other) {
            (V::None, V::None) => true,
            (V::Str(a), V::Str(b)) => a == b,
            (V::Bytes(a), V::Bytes(b)) => a == b,
            (V::List(a), V::List(b)) | (V::Tuple(a), V::Tuple(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.py_eq(y))
            }
            (V::Dict(a), V::Dict(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .all(|(k, v)| dict_get(b, k).is_some_and(|w| v.py_eq(w)))
            }
            (V::Set(a), V::Set(b)) => {
                a.len() == b.len() && a.iter().all(|x| b.iter().any(|y| x.py_eq(y)))
            }
            _ => false,
        }
    }

    fn number(&self) -> Option<Number> {
        match self {
            PyValue::Bool(b) => Some(Number::Int(i128::from(*b))),
            PyValue::Int(i) => Some(Number::Int(*i)),
            PyValue::Float(f) => Some(Number::Float(*f)),
            _ => None,
        }
    }

    /// Whether Python could use the value as a dict key / set element.
    pub fn is_hashable(&self) -> bool {
        match self {
            PyValue::List(_) | PyValue::Dict(_) | PyValue::Set(_) => false,
            PyValue::Tuple(items) => items.iter().all(PyValue::is_hashable),
            _ => true,
        }
    }

    /// The entries when the value is a dict.
    pub fn as_dict(&self) -> Option<&[(PyValue, PyValue)]> {
        match self {
            PyValue::Dict(entries) => Some(entries),
            _ => None,
        }
    }
}

#[derive(Clone, Copy)]
enum Number {
    Int(i128),
    Float(f64),
}

fn numbers_eq(a: Number, b: Number) -> bool {
    match (a, b) {
        (Number::Int(x), Number::Int(y)) => x == y,
        (Number::Float(x), Number::Float(y)) => x == y,
        (Number::Int(i), Number::Float(f)) | (Number::Float(f), Number::Int(i)) => {
            // Exact comparison, as Python does between int and float.
            f.is_finite() && f.fract() == 0.0 && f.abs() < 1.0e38 && f as i128 == i
        }
    }
}

/// `d.get(key)` on dict entries.
pub fn dict_get<'a>(entries: &'a [(PyValue, PyValue)], key: &PyValue) -> Option<&'a PyValue> {
    entries.iter().find(|(k, _)| k.py_eq(key)).map(|(_, v)| v)
}

/// `eval(src)` restricted to literals; `None` where Python raises or where the expression is
/// not a literal.
pub fn eval_literal(src: &str) -> Option<PyValue> {
    let chars: Vec<char> = src.chars().collect();
    let mut p = Parser { s: &chars, i: 0 };
    // `eval` strips leading spaces and tabs of the source.
    while matches!(p.peek(), Some(' ' | '\t')) {
        p.i += 1;
    }
    p.skip_leading_blank_lines()?;
    let value = p.testlist()?;
    p.skip_trailing()?;
    Some(value)
}

struct Parser<'a> {
    s: &'a [char],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn peek_at(&self, k: usize) -> Option<char> {
        self.s.get(self.i + k).copied()
    }

    fn eat_newline(&mut self) -> bool {
        match self.peek() {
            Some('\n') => {
                self.i += 1;
                true
            }
            Some('\r') => {
                self.i += 1;
                if self.peek() == Some('\n') {
                    self.i += 1;
                }
                true
            }
            _ => false,
        }
    }

    fn skip_comment(&mut self) {
        if self.peek() == Some('#') {
            while !matches!(self.peek(), None | Some('\n' | '\r')) {
                self.i += 1;
            }
        }
    }

    /// Blank and comment-only lines before the expression; the first real line must not be
    /// indented (Python: "unexpected indent").
    fn skip_leading_blank_lines(&mut self) -> Option<()> {
        let mut first_line = true;
        loop {
            let mut indent = 0;
            while matches!(self.peek(), Some(' ' | '\t' | '\u{c}')) {
                self.i += 1;
                indent += 1;
            }
            self.skip_comment();
            if self.eat_newline() {
                first_line = false;
                continue;
            }
            if self.peek().is_some() && indent > 0 && !first_line {
                return None;
            }
            return Some(());
        }
    }

    /// Whitespace inside a logical line; inside brackets newlines are whitespace too.
    fn skip_ws(&mut self, in_brackets: bool) {
        loop {
            match self.peek() {
                Some(' ' | '\t' | '\u{c}') => self.i += 1,
                Some('#') => self.skip_comment(),
                Some('\\') if matches!(self.peek_at(1), Some('\n' | '\r')) => {
                    self.i += 1;
                    self.eat_newline();
                }
                Some('\n' | '\r') if in_brackets => {
                    self.eat_newline();
                }
                _ => return,
            }
        }
    }

    /// After the expression only whitespace, comments and newlines may follow.
    fn skip_trailing(&mut self) -> Option<()> {
        loop {
            self.skip_ws(true);
            if self.peek().is_none() {
                return Some(());
            }
            if !self.eat_newline() {
                return None;
            }
        }
    }

    /// `testlist`: one expression or a bare tuple `a, b,`.
    fn testlist(&mut self) -> Option<PyValue> {
        self.skip_ws(false);
        let first = self.expr(false)?;
        self.skip_ws(false);
        if self.peek() != Some(',') {
            return Some(first);
        }
        let mut items = vec![first];
        while self.peek() == Some(',') {
            self.i += 1;
            self.skip_ws(false);
            if matches!(self.peek(), None | Some('\n' | '\r' | '#')) {
                break;
            }
            items.push(self.expr(false)?);
            self.skip_ws(false);
        }
        Some(PyValue::Tuple(items))
    }

    /// One literal with optional unary signs.
    fn expr(&mut self, in_brackets: bool) -> Option<PyValue> {
        self.skip_ws(in_brackets);
        match self.peek()? {
            sign @ ('-' | '+') => {
                self.i += 1;
                let value = self.expr(in_brackets)?;
                let negate = sign == '-';
                match value {
                    PyValue::Bool(b) => Some(PyValue::Int(if negate {
                        -i128::from(b)
                    } else {
                        i128::from(b)
                    })),
                    PyValue::Int(i) => {
                        Some(PyValue::Int(if negate { i.checked_neg()? } else { i }))
                    }
                    PyValue::Float(f) => Some(PyValue::Float(if negate { -f } else { f })),
                    _ => None,
                }
            }
            '{' => self.braces(),
            '[' => {
                self.i += 1;
                let items = self.sequence(']')?;
                Some(PyValue::List(items.0))
            }
            '(' => {
                self.i += 1;
                let (items, trailing_comma) = self.sequence(')')?;
                if items.len() == 1 && !trailing_comma {
                    items.into_iter().next()
                } else {
                    Some(PyValue::Tuple(items))
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && self.peek_at(1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                self.number()
            }
            '\'' | '"' => self.strings(in_brackets),
            c if c.is_alphabetic() || c == '_' => {
                let start = self.i;
                while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    self.i += 1;
                }
                let name: String = self.s[start..self.i].iter().collect();
                if matches!(self.peek(), Some('\'' | '"')) {
                    self.i = start;
                    return self.strings(in_brackets);
                }
                match name.as_str() {
                    "None" => Some(PyValue::None),
                    "True" => Some(PyValue::Bool(true)),
                    "False" => Some(PyValue::Bool(false)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Comma-separated items up to `close` (already past the opening bracket); also says
    /// whether a trailing comma was present.
    fn sequence(&mut self, close: char) -> Option<(Vec<PyValue>, bool)> {
        let mut items = Vec::new();
        let mut trailing_comma = false;
        loop {
            self.skip_ws(true);
            if self.peek() == Some(close) {
                self.i += 1;
                return Some((items, trailing_comma));
            }
            items.push(self.expr(true)?);
            self.skip_ws(true);
            match self.peek()? {
                ',' => {
                    self.i += 1;
                    trailing_comma = true;
                }
                c if c == close => {
                    trailing_comma = false;
                }
                _ => return None,
            }
        }
    }

    /// A dict or set display.
    fn braces(&mut self) -> Option<PyValue> {
        self.i += 1;
        self.skip_ws(true);
        if self.peek() == Some('}') {
            self.i += 1;
            return Some(PyValue::Dict(Vec::new()));
        }
        let first = self.expr(true)?;
        self.skip_ws(true);
        if self.peek() == Some(':') {
            let mut entries: Vec<(PyValue, PyValue)> = Vec::new();
            let mut key = first;
            loop {
                // at ':'
                self.i += 1;
                let value = self.expr(true)?;
                if !key.is_hashable() {
                    return None;
                }
                match entries.iter_mut().find(|(k, _)| k.py_eq(&key)) {
                    Some(entry) => entry.1 = value,
                    None => entries.push((key, value)),
                }
                self.skip_ws(true);
                match self.peek()? {
                    '}' => {
                        self.i += 1;
                        return Some(PyValue::Dict(entries));
                    }
                    ',' => {
                        self.i += 1;
                        self.skip_ws(true);
                        if self.peek() == Some('}') {
                            self.i += 1;
                            return Some(PyValue::Dict(entries));
                        }
                        key = self.expr(true)?;
                        self.skip_ws(true);
                        if self.peek() != Some(':') {
                            return None;
                        }
                    }
                    _ => return None,
                }
            }
        }
        let mut items: Vec<PyValue> = Vec::new();
        let mut next = Some(first);
        loop {
            if let Some(item) = next.take() {
                if !item.is_hashable() {
                    return None;
                }
                if !items.iter().any(|x| x.py_eq(&item)) {
                    items.push(item);
                }
            }
            self.skip_ws(true);
            match self.peek()? {
                '}' => {
                    self.i += 1;
                    return Some(PyValue::Set(items));
                }
                ',' => {
                    self.i += 1;
                    self.skip_ws(true);
                    if self.peek() == Some('}') {
                        self.i += 1;
                        return Some(PyValue::Set(items));
                    }
                    next = Some(self.expr(true)?);
                }
                _ => return None,
            }
        }
    }

    fn digits(&mut self, radix: u32) -> Option<String> {
        // digit (["_"] digit)*
        let mut out = String::new();
        loop {
            match self.peek() {
                Some(c) if c.is_digit(radix) => {
                    out.push(c);
                    self.i += 1;
                }
                Some('_')
                    if !out.is_empty() && self.peek_at(1).is_some_and(|d| d.is_digit(radix)) =>
                {
                    self.i += 1;
                }
                _ => break,
            }
        }
        (!out.is_empty()).then_some(out)
    }

    fn number(&mut self) -> Option<PyValue> {
        let value = self.number_body()?;
        // A number glued to a name character (`1abc`, `1j`) is not a literal we accept.
        if self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        Some(value)
    }

    fn number_body(&mut self) -> Option<PyValue> {
        if self.peek() == Some('0') {
            let radix = match self.peek_at(1) {
                Some('x' | 'X') => Some(16),
                Some('o' | 'O') => Some(8),
                Some('b' | 'B') => Some(2),
                _ => None,
            };
            if let Some(radix) = radix {
                self.i += 2;
                if self.peek() == Some('_') {
                    self.i += 1;
                }
                let digits = self.digits(radix)?;
                return i128::from_str_radix(&digits, radix).ok().map(PyValue::Int);
            }
        }
        let int_part = if self.peek() == Some('.') {
            String::new()
        } else {
            self.digits(10)?
        };
        let mut is_float = false;
        let mut text = int_part.clone();
        if self.peek() == Some('.') {
            is_float = true;
            self.i += 1;
            text.push('.');
            if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                text.push_str(&self.digits(10)?);
            }
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            let save = self.i;
            self.i += 1;
            let mut exp = String::from("e");
            if let Some(sign @ ('+' | '-')) = self.peek() {
                exp.push(sign);
                self.i += 1;
            }
            match self.digits(10) {
                Some(d) => {
                    exp.push_str(&d);
                    text.push_str(&exp);
                    is_float = true;
                }
                None => self.i = save,
            }
        }
        if is_float {
            return text.parse().ok().map(PyValue::Float);
        }
        // Decimal ints may not have leading zeros unless they are all zeros ("00" is 0).
        if int_part.len() > 1 && int_part.starts_with('0') && int_part.chars().any(|c| c != '0') {
            return None;
        }
        int_part.parse().ok().map(PyValue::Int)
    }

    /// One or more adjacent string literals, concatenated.
    fn strings(&mut self, in_brackets: bool) -> Option<PyValue> {
        let mut text: Option<String> = None;
        let mut bytes: Option<Vec<u8>> = None;
        loop {
            let start = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
                self.i += 1;
            }
            let prefix: String = self.s[start..self.i]
                .iter()
                .collect::<String>()
                .to_ascii_lowercase();
            if !matches!(self.peek(), Some('\'' | '"')) {
                self.i = start;
                break;
            }
            let valid = ["", "r", "u", "b", "br", "rb", "f", "fr", "rf"].contains(&prefix.as_str());
            if !valid {
                return None;
            }
            let raw = prefix.contains('r');
            let is_bytes = prefix.contains('b');
            let is_f = prefix.contains('f');
            let body = self.string_body(raw, is_bytes)?;
            if is_f && body.iter().any(|c| matches!(c, '{' | '}')) {
                return None;
            }
            if is_bytes {
                if text.is_some() {
                    return None;
                }
                let mut out = bytes.take().unwrap_or_default();
                for c in body {
                    out.push(u8::try_from(u32::from(c)).ok()?);
                }
                bytes = Some(out);
            } else {
                if bytes.is_some() {
                    return None;
                }
                let mut out = text.take().unwrap_or_default();
                out.extend(body);
                text = Some(out);
            }
            self.skip_ws(in_brackets);
            if !self
                .peek()
                .is_some_and(|c| c == '\'' || c == '"' || c.is_ascii_alphabetic())
            {
                break;
            }
        }
        match (text, bytes) {
            (Some(t), None) => Some(PyValue::Str(t)),
            (None, Some(b)) => Some(PyValue::Bytes(b)),
            _ => None,
        }
    }

    /// The characters of one quoted literal (the cursor is on the opening quote). For bytes,
    /// each returned char is one byte value (< 256); non-ASCII source characters are refused.
    fn string_body(&mut self, raw: bool, is_bytes: bool) -> Option<Vec<char>> {
        let quote = self.peek()?;
        let triple = self.peek_at(1) == Some(quote) && self.peek_at(2) == Some(quote);
        self.i += if triple { 3 } else { 1 };
        let mut out: Vec<char> = Vec::new();
        loop {
            let c = self.peek()?;
            if is_bytes && !c.is_ascii() {
                return None;
            }
            if c == quote {
                if !triple {
                    self.i += 1;
                    return Some(out);
                }
                if self.peek_at(1) == Some(quote) && self.peek_at(2) == Some(quote) {
                    self.i += 3;
                    return Some(out);
                }
                out.push(c);
                self.i += 1;
                continue;
            }
            if matches!(c, '\n' | '\r') && !triple {
                return None;
            }
            if c != '\\' {
                out.push(c);
                self.i += 1;
                continue;
            }
            // Backslash.
            let next = self.peek_at(1)?;
            if raw {
                out.push('\\');
                out.push(next);
                self.i += 2;
                continue;
            }
            self.i += 2;
            match next {
                '\n' => {}
                '\r' => {
                    if self.peek() == Some('\n') {
                        self.i += 1;
                    }
                }
                '\\' => out.push('\\'),
                '\'' => out.push('\''),
                '"' => out.push('"'),
                'a' => out.push('\u{7}'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'v' => out.push('\u{b}'),
                '0'..='7' => {
                    let mut value = next.to_digit(8)?;
                    for _ in 0..2 {
                        match self.peek().and_then(|d| d.to_digit(8)) {
                            Some(d) => {
                                value = value * 8 + d;
                                self.i += 1;
                            }
                            None => break,
                        }
                    }
                    if is_bytes && value > 255 {
                        return None;
                    }
                    out.push(char::from_u32(value)?);
                }
                'x' => out.push(self.hex_escape(2)?),
                'u' if !is_bytes => out.push(self.hex_escape(4)?),
                'U' if !is_bytes => out.push(self.hex_escape(8)?),
                'N' if !is_bytes => return None,
                other => {
                    out.push('\\');
                    out.push(other);
                }
            }
        }
    }

    fn hex_escape(&mut self, len: usize) -> Option<char> {
        let mut value = 0u32;
        for _ in 0..len {
            let d = self.peek()?.to_digit(16)?;
            value = value.checked_mul(16)?.checked_add(d)?;
            self.i += 1;
        }
        char::from_u32(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> PyValue {
        PyValue::Str(x.to_string())
    }

    #[test]
    fn json_and_python_dicts() {
        let v = eval_literal(r#"{"<mask-0>": "Bob", "<mask-1>": "New York"}"#).expect("dict");
        let d = v.as_dict().expect("dict");
        assert_eq!(d.len(), 2);
        assert!(dict_get(d, &s("<mask-1>")).is_some_and(|x| x.py_eq(&s("New York"))));
        // Single quotes, trailing comma, leading spaces, trailing newlines and comment.
        let v = eval_literal("  {'a': 'x', 'b': [1, 2.0, (3,)],}  # done\n\n").expect("dict");
        assert_eq!(v.as_dict().map(<[_]>::len), Some(2));
    }

    #[test]
    fn layout_rules_of_eval() {
        // Python: eval("\n{'a': 1}") works; eval("\t\n  {'a': 1}") → "unexpected indent".
        assert!(eval_literal("\n{'a': 1}").is_some());
        assert!(eval_literal("\t\n  {'a': 1}").is_none());
        // Text after the literal: SyntaxError.
        assert!(eval_literal("{'a': 1} is my answer").is_none());
        assert!(eval_literal("{'a': 1}\nmore").is_none());
        // Lines may break inside brackets.
        assert!(eval_literal("{'a':\n   1}").is_some());
        assert!(eval_literal("").is_none());
    }

    #[test]
    fn equality_like_python() {
        // 1 == 1.0 == True; "1" != 1; [1] != (1,); dicts compare regardless of order.
        assert!(PyValue::Int(1).py_eq(&PyValue::Float(1.0)));
        assert!(PyValue::Bool(true).py_eq(&PyValue::Int(1)));
        assert!(!s("1").py_eq(&PyValue::Int(1)));
        let l = eval_literal("[1]").expect("list");
        let t = eval_literal("(1,)").expect("tuple");
        assert!(!l.py_eq(&t));
        let a = eval_literal("{'x': 1, 'y': 2}").expect("dict");
        let b = eval_literal("{'y': 2.0, 'x': True}").expect("dict");
        assert!(a.py_eq(&b));
        // Duplicate keys: the last value wins ({'a': 1, 'a': 2} == {'a': 2}).
        let d = eval_literal("{'a': 1, 'a': 2}").expect("dict");
        assert!(d.py_eq(&eval_literal("{'a': 2}").expect("dict")));
    }

    #[test]
    fn literals() {
        assert!(matches!(eval_literal("-0x1F"), Some(PyValue::Int(-31))));
        assert!(matches!(eval_literal("1_000"), Some(PyValue::Int(1000))));
        assert!(eval_literal("01").is_none());
        assert!(matches!(eval_literal("00"), Some(PyValue::Int(0))));
        assert!(matches!(eval_literal("1e3"), Some(PyValue::Float(f)) if f == 1000.0));
        assert!(matches!(eval_literal(".5"), Some(PyValue::Float(f)) if f == 0.5));
        assert!(eval_literal("1j").is_none());
        assert!(matches!(eval_literal("'a' \"b\""), Some(PyValue::Str(ref x)) if x == "ab"));
        assert!(
            matches!(eval_literal(r"'\x41\u00e9\n'"), Some(PyValue::Str(ref x)) if x == "Aé\n")
        );
        assert!(matches!(eval_literal(r"r'\n'"), Some(PyValue::Str(ref x)) if x == "\\n"));
        assert!(matches!(eval_literal("'''a\nb'''"), Some(PyValue::Str(ref x)) if x == "a\nb"));
        assert!(matches!(eval_literal("b'ab'"), Some(PyValue::Bytes(ref x)) if x == b"ab"));
        assert!(eval_literal("'a' b'b'").is_none());
        assert!(eval_literal("'unterminated").is_none());
        assert!(matches!(eval_literal("'中文'"), Some(PyValue::Str(ref x)) if x == "中文"));
        assert!(matches!(eval_literal("1, 2"), Some(PyValue::Tuple(ref x)) if x.len() == 2));
        assert!(matches!(eval_literal("{1, 1.0, 2}"), Some(PyValue::Set(ref x)) if x.len() == 2));
        assert!(matches!(eval_literal("{}"), Some(PyValue::Dict(ref x)) if x.is_empty()));
        assert!(matches!(eval_literal("None"), Some(PyValue::None)));
        // Not literals: names, unhashable keys, calls, operators.
        assert!(eval_literal("foo").is_none());
        assert!(eval_literal("{[1]: 2}").is_none());
        assert!(eval_literal("dict(a=1)").is_none());
        assert!(eval_literal("{'a': 1 + 1}").is_none());
    }
}
