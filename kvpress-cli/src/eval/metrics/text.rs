//! Text and number helpers shared by every benchmark metric, written to behave like the Python
//! built-ins and the small helper functions that kvpress's `calculate_metrics.py` files use
//! (`str.split()`, `str.strip()`, `round`, `numpy.mean`, LongBench's `normalize_answer`,
//! `f1_score`, ...).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::LazyLock;

use regex::Regex;

/// Whether Python's `str.isspace()` holds for `c`, i.e. the characters on which `str.split()`
/// with no argument splits and which `str.strip()` removes.
///
/// Python counts U+001C..U+001F (the information separators) as whitespace; Rust's
/// [`char::is_whitespace`] does not, the two sets are otherwise equal.
pub fn is_py_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()` (no argument): the non-empty runs of non-whitespace characters.
pub fn py_split(s: &str) -> Vec<&str> {
    s.split(is_py_whitespace)
        .filter(|w| !w.is_empty())
        .collect()
}

/// Python's `s.strip()` (no argument).
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_whitespace)
}

/// Python's `s.lstrip()` (no argument).
pub fn py_lstrip(s: &str) -> &str {
    s.trim_start_matches(is_py_whitespace)
}

/// Python's `string.punctuation`: the 32 ASCII punctuation characters.
pub fn is_ascii_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
}

/// The extra punctuation removed by LongBench's and InfiniteBench's `normalize_zh_answer`
/// (its `cn_punctuation` string; note that it has `》` but not `《`, and ends with an ASCII `.`).
const CN_PUNCTUATION: &[char] = &[
    '！', '？', '｡', '。', '＂', '＃', '＄', '％', '＆', '＇', '（', '）', '＊', '＋', '，', '－',
    '／', '：', '；', '＜', '＝', '＞', '＠', '［', '＼', '］', '＾', '＿', '｀', '｛', '｜', '｝',
    '～', '｟', '｠', '｢', '｣', '､', '、', '〃', '》', '「', '」', '『', '』', '【', '】', '〔',
    '〕', '〖', '〗', '〘', '〙', '〚', '〛', '〜', '〝', '〞', '〟', '〰', '〾', '〿', '–', '—',
    '‘', '’', '‛', '“', '”', '„', '‟', '…', '‧', '﹏', '.',
];

/// `\b(a|an|the)\b`, the article pattern of `normalize_answer`.
static ARTICLES: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"\b(a|an|the)\b").ok());

/// LongBench's / InfiniteBench's `normalize_answer` (the SQuAD normalisation): lower-case,
/// remove ASCII punctuation, replace the articles `a`, `an`, `the` by a space, and collapse
/// whitespace to single spaces.
pub fn normalize_answer(s: &str) -> String {
    let lowered = s.to_lowercase();
    let no_punct: String = lowered
        .chars()
        .filter(|c| !is_ascii_punctuation(*c))
        .collect();
    let no_articles = match ARTICLES.as_ref() {
        Some(re) => re.replace_all(&no_punct, " ").into_owned(),
        None => no_punct,
    };
    py_split(&no_articles).join(" ")
}

/// LongBench's / InfiniteBench's `normalize_zh_answer`: lower-case, remove ASCII and Chinese
/// punctuation, and remove all whitespace.
pub fn normalize_zh_answer(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .filter(|c| {
            !is_ascii_punctuation(*c) && !CN_PUNCTUATION.contains(c) && !is_py_whitespace(*c)
        })
        .collect()
}

/// LongBench's `f1_score` on two token lists (`Counter(prediction) & Counter(ground_truth)`):
/// the harmonic mean of token precision and recall, 0 when no token is shared.
pub fn token_f1<T: Eq + Hash>(prediction: &[T], ground_truth: &[T]) -> f64 {
    let mut counts: HashMap<&T, usize> = HashMap::new();
    for t in ground_truth {
        *counts.entry(t).or_insert(0) += 1;
    }
    let mut num_same = 0usize;
    for t in prediction {
        if let Some(c) = counts.get_mut(t)
            && *c > 0
        {
            *c -= 1;
            num_same += 1;
        }
    }
    if num_same == 0 {
        return 0.0;
    }
    let precision = num_same as f64 / prediction.len() as f64;
    let recall = num_same as f64 / ground_truth.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

/// LongBench's `qa_f1_score` (also InfiniteBench's per-reference F1): token F1 between the
/// whitespace tokens of the two [`normalize_answer`]ed strings.
pub fn qa_f1_score(prediction: &str, ground_truth: &str) -> f64 {
    let p = normalize_answer(prediction);
    let g = normalize_answer(ground_truth);
    token_f1(&py_split(&p), &py_split(&g))
}

/// Python's `round(x, ndigits)` for floats: the double nearest to `x` correctly rounded to
/// `ndigits` decimals, ties (of the exact binary value) to even. NaN and infinities pass through.
pub fn py_round(x: f64, ndigits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // Rust's fixed-precision formatting is exact and rounds half to even, as CPython's
    // `float.__round__` (which goes through `_Py_dg_dtoa` mode 3) does.
    format!("{x:.ndigits$}").parse().unwrap_or(x)
}

/// Python's `round(x)` (no digits): nearest integer, ties to even.
pub fn py_round_int(x: f64) -> f64 {
    x.round_ties_even()
}

/// Python's built-in `sum()` over floats, left to right.
///
/// This is CPython ≤ 3.11's plain summation (the interpreter of the project's reference
/// environment); CPython ≥ 3.12 compensates the rounding error, which can change the last bit.
pub fn py_sum(xs: &[f64]) -> f64 {
    xs.iter().fold(0.0, |acc, x| acc + x)
}

/// `numpy.mean` of a float64 vector (also what pandas' `Series.mean()` / `DataFrame.mean()`
/// return here): numpy's pairwise summation divided by the count. NaN for an empty input, as
/// numpy returns (with a warning).
pub fn np_mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    np_pairwise_sum(xs) / xs.len() as f64
}

/// numpy's `pairwise_sum` for float64 (blocks of 128 summed with 8 accumulators).
fn np_pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |acc, x| acc + x)
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let whole = n - n % 8;
        let mut i = 8;
        while i < whole {
            for (j, acc) in r.iter_mut().enumerate() {
                *acc += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for x in &a[whole..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        np_pairwise_sum(&a[..n2]) + np_pairwise_sum(&a[n2..])
    }
}

/// The numeric value of a Unicode decimal digit (general category Nd), as Python's `int()`
/// reads it. Decimal digits are encoded in runs of ten from 0 to 9, so the value is the
/// distance to the start of the run of `\d` characters, modulo 10.
pub fn decimal_digit_value(c: char) -> Option<u32> {
    static DIGIT: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"^\d$").ok());
    if let Some(d) = c.to_digit(10) {
        return Some(d);
    }
    let re = DIGIT.as_ref()?;
    let is_digit = |ch: char| {
        let mut buf = [0u8; 4];
        re.is_match(ch.encode_utf8(&mut buf))
    };
    if !is_digit(c) {
        return None;
    }
    let mut start = c as u32;
    while let Some(prev) = start.checked_sub(1).and_then(char::from_u32) {
        if !is_digit(prev) {
            break;
        }
        start -= 1;
    }
    Some((c as u32 - start) % 10)
}

/// Python's `int(s)` for a decimal string, returned in canonical form (optional `-`, no
/// leading zeros) so that two values compare equal exactly when the Python ints do.
///
/// Accepts what `int()` accepts: surrounding whitespace, one sign, Unicode decimal digits, and
/// single underscores between digits. `None` where Python raises `ValueError`.
pub fn py_int_canonical(s: &str) -> Option<String> {
    let s = py_strip(s);
    let (negative, body) = match s.chars().next() {
        Some('-') => (true, &s[1..]),
        Some('+') => (false, &s[1..]),
        _ => (false, s),
    };
    if body.is_empty() || body.starts_with('_') || body.ends_with('_') || body.contains("__") {
        return None;
    }
    let mut digits = String::with_capacity(body.len());
    for c in body.chars() {
        if c == '_' {
            continue;
        }
        let d = decimal_digit_value(c)?;
        digits.push(char::from_digit(d, 10)?);
    }
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return Some("0".to_string());
    }
    Some(if negative {
        format!("-{trimmed}")
    } else {
        trimmed.to_string()
    })
}

/// Python's `float(s)` for the strings InfiniteBench feeds it (digits, one optional `.`, an
/// optional sign and exponent, Unicode digits allowed). `None` where Python raises.
pub fn py_float(s: &str) -> Option<f64> {
    let s = py_strip(s);
    let mut ascii = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            ascii.push(c);
        } else {
            ascii.push(char::from_digit(decimal_digit_value(c)?, 10)?);
        }
    }
    let lower = ascii.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    if matches!(unsigned, "inf" | "infinity" | "nan") {
        return lower.parse().ok();
    }
    if ascii.contains("__") || ascii.starts_with('_') || ascii.ends_with('_') {
        return None;
    }
    let cleaned: String = ascii.chars().filter(|c| *c != '_').collect();
    if !cleaned
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
    {
        return None;
    }
    cleaned.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_matches_python() {
        // Python: "x\x1c y\u3000z\u200bw".split() == ['x', 'y', 'z\u200bw']
        assert_eq!(
            py_split("x\u{1c} y\u{3000}z\u{200b}w"),
            vec!["x", "y", "z\u{200b}w"]
        );
        assert_eq!(py_split("   "), Vec::<&str>::new());
        assert_eq!(py_strip("\u{1f} a b \n"), "a b");
        assert_eq!(py_lstrip("\n a "), "a ");
    }

    #[test]
    fn normalize_answer_examples() {
        // lower → "the cat, an apple & a dog!" → strip punctuation → "the cat an apple  a dog"
        // → articles → "  cat   apple    dog" → collapse → "cat apple dog"
        assert_eq!(
            normalize_answer("The Cat, an Apple & a dog!"),
            "cat apple dog"
        );
        // "another" keeps its "an" (word boundary), Unicode letters are lower-cased.
        assert_eq!(normalize_answer("ANOTHER Éclair"), "another éclair");
        assert_eq!(normalize_answer(""), "");
        // Apostrophes are punctuation: "don't" → "dont".
        assert_eq!(normalize_answer("Don't"), "dont");
    }

    #[test]
    fn normalize_zh_answer_examples() {
        // Chinese and ASCII punctuation and all whitespace removed; `《` is NOT in kvpress's list.
        assert_eq!(normalize_zh_answer("你好，世界！ A b."), "你好世界ab");
        assert_eq!(normalize_zh_answer("《书》"), "《书");
    }

    #[test]
    fn token_f1_by_hand() {
        // pred [a, b, b, c], gt [b, c, d]: common = {b:1, c:1} → 2; P = 2/4, R = 2/3,
        // F1 = 2·(1/2)(2/3)/(1/2 + 2/3) = (2/3)/(7/6) = 4/7.
        let f = token_f1(&["a", "b", "b", "c"], &["b", "c", "d"]);
        assert!((f - 4.0 / 7.0).abs() < 1e-15);
        assert_eq!(token_f1::<&str>(&[], &["a"]), 0.0);
        assert_eq!(token_f1::<&str>(&[], &[]), 0.0);
    }

    #[test]
    fn qa_f1_by_hand() {
        // "The Eiffel Tower." → "eiffel tower"; "Eiffel tower in Paris" → "eiffel tower in paris"
        // common 2, P = 2/2, R = 2/4 → F1 = 2·1·0.5/1.5 = 2/3.
        let f = qa_f1_score("The Eiffel Tower.", "Eiffel tower in Paris");
        assert!((f - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(qa_f1_score("", "x"), 0.0);
    }

    #[test]
    fn round_like_python() {
        // Python: round(0.125, 2) == 0.12, round(0.375, 2) == 0.38, round(2.675, 2) == 2.67,
        // round(1.005, 2) == 1.0 (values from CPython 3.11).
        assert_eq!(py_round(0.125, 2), 0.12);
        assert_eq!(py_round(0.375, 2), 0.38);
        assert_eq!(py_round(2.675, 2), 2.67);
        assert_eq!(py_round(1.005, 2), 1.0);
        assert_eq!(py_round(66.666_666_666, 2), 66.67);
        assert!(py_round(f64::NAN, 2).is_nan());
        assert_eq!(py_round_int(2.5), 2.0);
        assert_eq!(py_round_int(3.5), 4.0);
    }

    #[test]
    fn np_mean_pairwise() {
        assert!(np_mean(&[]).is_nan());
        assert_eq!(np_mean(&[1.0, 2.0]), 1.5);
        // 200 values of 0.1: numpy.mean([0.1] * 200) == 0.1 (pairwise) while a plain running sum
        // gives 20.000000000000128 / 200 = 0.10000000000000064.
        let xs = vec![0.1; 200];
        assert_eq!(np_mean(&xs), 0.1);
        assert_ne!(py_sum(&xs) / 200.0, 0.1);
    }

    #[test]
    fn python_int_and_float() {
        assert_eq!(py_int_canonical(" 007 ").as_deref(), Some("7"));
        assert_eq!(py_int_canonical("-0").as_deref(), Some("0"));
        assert_eq!(py_int_canonical("1_000").as_deref(), Some("1000"));
        // Arabic-Indic digits: int("١٢") == 12.
        assert_eq!(py_int_canonical("١٢").as_deref(), Some("12"));
        // Fullwidth digits.
        assert_eq!(py_int_canonical("３").as_deref(), Some("3"));
        assert_eq!(py_int_canonical("1__0"), None);
        assert_eq!(py_int_canonical("1.5"), None);
        assert_eq!(py_int_canonical(""), None);
        assert_eq!(py_float("3.50"), Some(3.5));
        assert_eq!(py_float("x"), None);
        assert_eq!(decimal_digit_value('٩'), Some(9));
        assert_eq!(decimal_digit_value('a'), None);
    }
}
