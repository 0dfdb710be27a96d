//! InfiniteBench metrics: kvpress's `evaluation/benchmarks/infinite_bench/calculate_metrics.py`,
//! itself the official InfiniteBench `compute_scores.py` (`get_score_one_*`), averaged over the
//! rows of the task: one number in 0–1.
//!
//! Labels are the row's `answer` list ([`Sample::answers`](super::super::sample::Sample)).
//! Deviation, deliberately: kvpress hands the scorers a numpy array of strings (what its
//! Hugging Face dataset holds) where the official scorers expect the original JSON labels, with
//! the effect that kvpress raises (`code_debug`: `label[1]` of a one-letter label; `math_find`:
//! "Expected int or float"; `math_calc`: `assert isinstance(label, list)`) or always scores 0
//! (`code_run`: string label compared with an `int`). Here the string labels are read the way
//! the official scorer reads its labels: `code_run`, `math_calc` labels as integers, `math_find`
//! as an integer when it parses as one and as a float otherwise, and `code_debug` as
//! `[function name, option letter]` when two labels are given, else as the option letter alone
//! (kvpress's dataset keeps only the letter, so the function-name checks are skipped). In
//! `math_find`, an integer label with a decimal number in the prediction (`int("3.5")` raises in
//! Python) scores 0. Every other task is exactly the official scorer.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use super::super::sample::Prediction;
use super::text::{
    normalize_zh_answer, py_float, py_int_canonical, py_split, py_strip, py_sum, qa_f1_score,
    token_f1,
};
use super::{MetricsError, per_task_or_single};

static FIRST_NUMBER: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"\d+\.\d+|\d+").ok());
static CHOICE_A_D: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"\b[A-D]\b").ok());
static CHOICE_A_J: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"\b[A-J]\b").ok());

/// `first_int_match`: the first run of ASCII digits (`re.split("[^0-9]", pred)`), or `""`.
pub fn first_int_match(prediction: &str) -> &str {
    prediction
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .unwrap_or("")
}

/// Replaces each of `chars` by a space (the scorers' chains of `pred.replace(c, " ")`).
fn blank_out(s: &str, chars: &[char]) -> String {
    s.chars()
        .map(|c| if chars.contains(&c) { ' ' } else { c })
        .collect()
}

/// `while "  " in pred: pred = pred.replace("  ", " ")`: runs of spaces become one.
fn collapse_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !(c == ' ' && out.ends_with(' ')) {
            out.push(c);
        }
    }
    out
}

/// `re.search(r"\b[X]\b(?!.*\b[X]\b)", pred)`: the last standalone option letter of the first
/// line that has one (`.` does not cross newlines, so the look-ahead only sees the rest of the
/// line).
fn last_choice_on_first_line(re: &Regex, pred: &str) -> Option<String> {
    let matches: Vec<(usize, &str)> = re
        .find_iter(pred)
        .map(|m| (m.start(), m.as_str()))
        .collect();
    let (first_start, first) = *matches.first()?;
    let mut best = first;
    let mut prev_end = first_start + first.len();
    for &(start, text) in &matches[1..] {
        if pred[prev_end..start].contains('\n') {
            break;
        }
        best = text;
        prev_end = start + text.len();
    }
    Some(best.to_string())
}

/// `get_score_one_kv_retrieval`: the label is one of the words of the prediction once
/// `\n : " ' . , ? ! { }` are blanked out.
pub fn kv_retrieval(pred: &str, label: &str) -> bool {
    let cleaned = blank_out(pred, &['\n', ':', '"', '\'', '.', ',', '?', '!', '{', '}']);
    py_split(&cleaned).contains(&label)
}

/// `get_score_one_passkey` / `get_score_one_number_string`: the label equals the first digit
/// run of the prediction.
pub fn passkey(pred: &str, label: &str) -> bool {
    label == first_int_match(pred)
}

/// `get_score_one_code_run`: the last word (after blanking `\n . ` ' " :`) is an integer equal
/// to the label.
pub fn code_run(pred: &str, label: &str) -> bool {
    let cleaned = blank_out(py_strip(pred), &['\n', '.', '`', '\'', '"', ':']);
    let Some(last) = py_split(&cleaned).last().copied() else {
        return false;
    };
    match (py_int_canonical(last), py_int_canonical(label)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The official scorers' answer search: finds the first of `prefixes` that occurs in
/// `cleaned`; `None` when none does, `Some(None)` when nothing follows it, else `Some(Some(t))`
/// with `t` the text after it, its first character (a space) skipped.
fn after_first_prefix<'a>(cleaned: &'a str, prefixes: &[&str]) -> Option<Option<&'a str>> {
    let (idx, prefix) = prefixes
        .iter()
        .find_map(|p| cleaned.find(p).map(|i| (i, *p)))?;
    let mut chars = cleaned[idx + prefix.len()..].chars();
    Some(chars.next().map(|_| chars.as_str()))
}

/// `get_score_one_code_debug` with `label_c` the option letter and `fn_name` the function name
/// when known.
pub fn code_debug(pred: &str, label_c: &str, fn_name: Option<&str>) -> bool {
    let pred = py_strip(pred);
    if let Some(re) = CHOICE_A_J.as_ref()
        && last_choice_on_first_line(re, pred).as_deref() == Some(label_c)
    {
        return true;
    }
    let mut cleaned = blank_out(pred, &['\n', '`', '\'', '"', '-', '*']);
    cleaned = cleaned.replace("Option", " ").replace("option", " ");
    let cleaned = collapse_spaces(&cleaned);
    let candidates: Vec<&str> = std::iter::once(label_c).chain(fn_name).collect();
    if candidates.iter().any(|s| cleaned.starts_with(s)) {
        return true;
    }
    after_first_prefix(
        &cleaned,
        &["answer is:", "is:", "answer:", "correct option is:"],
    )
    .flatten()
    .is_some_and(|after| candidates.iter().any(|s| after.starts_with(s)))
}

/// `get_score_one_math_find`: the first number of the prediction equals the label (as an int
/// when the label is an integer, else as a float).
pub fn math_find(pred: &str, label: &str) -> Option<bool> {
    let first = FIRST_NUMBER.as_ref()?.find(pred).map(|m| m.as_str());
    if let Some(label_int) = py_int_canonical(label) {
        let Some(first) = first else {
            return Some(false);
        };
        return Some(py_int_canonical(first).is_some_and(|v| v == label_int));
    }
    let label_float = py_float(label)?;
    let Some(first) = first else {
        return Some(false);
    };
    Some(py_float(first) == Some(label_float))
}

/// `get_score_one_longdialogue_qa_eng`: 1 if any label (upper-cased) is in the upper-cased,
/// stripped prediction.
pub fn longdialogue_qa_eng(pred: &str, labels: &[String]) -> bool {
    let upper = py_strip(pred).to_uppercase();
    labels.iter().any(|l| upper.contains(&l.to_uppercase()))
}

/// `get_score_one_longbook_choice_eng`.
pub fn longbook_choice_eng(pred: &str, labels: &[String]) -> bool {
    let is_label = |s: &str| labels.iter().any(|l| l == s);
    let pred = py_strip(pred);
    if let Some(re) = CHOICE_A_D.as_ref()
        && let Some(letter) = last_choice_on_first_line(re, pred)
        && is_label(&letter)
    {
        return true;
    }
    let Some(first) = pred.chars().next() else {
        return false;
    };
    if "ABCD".contains(first) {
        return is_label(&first.to_string());
    }
    if is_label(pred) {
        return true;
    }
    let cleaned = collapse_spaces(&blank_out(
        pred,
        &['\n', '"', '\'', '.', ',', '?', '!', '{', '}'],
    ));
    if let Some(after) = after_first_prefix(
        &cleaned,
        &["answer is:", "answer:", "answer is", "option is"],
    ) {
        return after.is_some_and(|after| labels.iter().any(|l| after.starts_with(l.as_str())));
    }
    for word in py_split(&cleaned) {
        if "ABCD".contains(word) {
            return is_label(word);
        }
    }
    false
}

/// `qa_f1_score` of InfiniteBench: the best token F1 over the labels.
pub fn longbook_qa_eng(pred: &str, labels: &[String]) -> f64 {
    labels
        .iter()
        .map(|l| qa_f1_score(pred, l))
        .fold(0.0, f64::max)
}

/// `qa_f1_score_zh`: the best character F1 over the labels, after [`normalize_zh_answer`].
pub fn longbook_qa_chn(pred: &str, labels: &[String]) -> f64 {
    let p: Vec<char> = normalize_zh_answer(pred).chars().collect();
    labels
        .iter()
        .map(|l| token_f1(&p, &normalize_zh_answer(l).chars().collect::<Vec<_>>()))
        .fold(0.0, f64::max)
}

/// `get_score_one_math_calc` (model other than `gpt4`): the length of the common prefix of the
/// predicted digit runs and the labels, divided by the number of labels.
pub fn math_calc(pred: &str, labels: &[String]) -> Option<f64> {
    let wanted: Vec<String> = labels
        .iter()
        .map(|l| py_int_canonical(l))
        .collect::<Option<_>>()?;
    if wanted.is_empty() {
        return None;
    }
    let got: Vec<String> = pred
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(py_int_canonical)
        .collect();
    let prefix = wanted.iter().zip(&got).take_while(|(a, b)| a == b).count();
    Some(prefix as f64 / wanted.len() as f64)
}

/// `get_score_one(pred, label, task_name)` as a float.
fn score_one(task: &str, row: usize, p: &Prediction) -> Result<f64, MetricsError> {
    let pred = p.predicted_answer.as_str();
    let labels = &p.sample.answers;
    let bad = |problem: &str| super::invalid(row, p, "answer", problem);
    let first = || {
        labels
            .first()
            .map(String::as_str)
            .ok_or_else(|| bad("is empty"))
    };
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    Ok(match task {
        "kv_retrieval" | "kv_retrieval_prefix" | "kv_retrieval_both" => {
            b(kv_retrieval(pred, first()?))
        }
        "passkey" | "number_string" => b(passkey(pred, first()?)),
        "code_run" => b(code_run(pred, first()?)),
        "code_debug" => {
            let (label_c, fn_name) = match labels.as_slice() {
                [fn_name, letter, ..] => (letter.as_str(), Some(fn_name.as_str())),
                [letter] => (letter.as_str(), None),
                [] => return Err(bad("is empty")),
            };
            b(code_debug(pred, label_c, fn_name))
        }
        "math_find" => b(math_find(pred, first()?).ok_or_else(|| bad("is not a number"))?),
        "math_calc" => math_calc(pred, labels).ok_or_else(|| bad("is not a list of integers"))?,
        "longdialogue_qa_eng" => b(longdialogue_qa_eng(pred, labels)),
        "longbook_qa_eng" => longbook_qa_eng(pred, labels),
        "longbook_choice_eng" => b(longbook_choice_eng(pred, labels)),
        "longbook_qa_chn" => longbook_qa_chn(pred, labels),
        "longbook_sum_eng" => {
            return Err(MetricsError::UnsupportedTask {
                task: task.to_string(),
                reason: "Longbook sum task is not supported due to a conflict with rouge library."
                    .to_string(),
            });
        }
        other => {
            return Err(MetricsError::UnknownTask {
                dataset: "infinitebench".to_string(),
                task: other.to_string(),
            });
        }
    })
}

/// kvpress's InfiniteBench `calculate_metrics(df)` (`get_score`): the mean per-row score of the
/// task, in 0–1, a single number for a one-task frame; with several tasks an object
/// `{task: number}` (kvpress would use the first row's task for every row).
pub fn calculate_metrics(predictions: &[Prediction]) -> Result<Value, MetricsError> {
    per_task_or_single(predictions, "infinitebench", |task, rows| {
        let scores: Vec<f64> = rows
            .iter()
            .map(|&(i, p)| score_one(task, i, p))
            .collect::<Result<_, _>>()?;
        Ok(super::json_f64(py_sum(&scores) / scores.len() as f64))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_util::row;
    use super::*;

    fn labels(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn passkey_and_number_string() {
        assert_eq!(first_int_match("The pass key is 71432."), "71432");
        assert_eq!(first_int_match("no digits"), "");
        assert!(passkey(" 71432", "71432"));
        // First digit run only: "7143 2" → "7143".
        assert!(!passkey("7143 2", "71432"));
        // Arabic-Indic digits are not [0-9].
        assert!(!passkey("٧", "7"));
    }

    #[test]
    fn kv_retrieval_words() {
        let label = "00a00042-6bcb-494f-9c35-57180f1e7251";
        assert!(kv_retrieval(&format!(": \"{label}\"."), label));
        // The hyphen is not a separator: a longer token does not match.
        assert!(!kv_retrieval(&format!("{label}-x"), label));
        assert!(!kv_retrieval("", label));
    }

    #[test]
    fn code_run_last_word() {
        assert!(code_run("The return value is: -12.", "-12"));
        assert!(code_run("`5`", "5"));
        assert!(!code_run("5 is wrong, it is 6", "5"));
        assert!(!code_run("", "5"));
        assert!(!code_run("five", "5"));
    }

    #[test]
    fn code_debug_rules() {
        // Last standalone A–J of the first line: "B or C" → "C".
        assert!(code_debug("B or C", "C", None));
        // No standalone letter in "OptionB"; blanking "Option" gives " B", which does not start
        // with "B" (the prediction was stripped before the replacement); no prefix → false.
        assert!(!code_debug("OptionB", "B", None));
        // Prefix rule: "the correct answer is: func_3" with the function name known.
        assert!(code_debug(
            "the correct answer is: func_3",
            "B",
            Some("func_3")
        ));
        // Starts with the function name.
        assert!(code_debug("func_3 crashes", "A", Some("func_3")));
        // A prefix at the end of the text → false.
        assert!(!code_debug("my answer:", "A", None));
    }

    #[test]
    fn choice_regex_is_per_line() {
        // "A or B\nC and D": the first line's last letter is "B".
        let re = CHOICE_A_D.as_ref().expect("regex");
        assert_eq!(
            last_choice_on_first_line(re, "A or B\nC and D").as_deref(),
            Some("B")
        );
        assert_eq!(
            last_choice_on_first_line(re, "none\nC").as_deref(),
            Some("C")
        );
        assert_eq!(last_choice_on_first_line(re, "ABCD"), None);
    }

    #[test]
    fn longbook_choice_rules() {
        let l = labels(&["B"]);
        assert!(longbook_choice_eng(
            "The letter of the correct answer is B",
            &l
        ));
        // "A. foo, or B" → regex finds last standalone letter "B".
        assert!(longbook_choice_eng("A. foo, or B", &l));
        // First character rule: "Bob" has no standalone letter; "B" is the first char.
        assert!(longbook_choice_eng("Bob", &l));
        assert!(!longbook_choice_eng("", &l));
        assert!(!longbook_choice_eng("I think C", &l));
        // Words rule: "the ABCD" → "ABCD" is a substring of "ABCD" → "ABCD" in labels? No → false.
        assert!(!longbook_choice_eng("the ABCD", &l));
    }

    #[test]
    fn math_find_int_and_float() {
        assert_eq!(math_find("The largest is 42.", "42"), Some(true));
        assert_eq!(math_find("042", "42"), Some(true));
        assert_eq!(math_find("4.2", "42"), Some(false));
        assert_eq!(math_find("no number", "42"), Some(false));
        assert_eq!(math_find("3.50 or 2", "3.5"), Some(true));
        assert_eq!(math_find("3", "3.5"), Some(false));
        assert_eq!(math_find("3", "x"), None);
    }

    #[test]
    fn qa_scores() {
        // longbook_qa_eng: best F1 over labels: "Peyton" vs ["\"Peyton\"", "x"] → 1.0.
        assert_eq!(
            longbook_qa_eng("Peyton.", &labels(&["\"Peyton\"", "x"])),
            1.0
        );
        assert_eq!(longbook_qa_eng("", &labels(&["a"])), 0.0);
        // longbook_qa_chn: chars of "北京，中国" → [北,京,中,国] vs "北京" → P = 2/4, R = 1 → 2/3.
        let f = longbook_qa_chn("北京，中国", &labels(&["北京"]));
        assert!((f - 2.0 / 3.0).abs() < 1e-15);
        // longdialogue: case-insensitive containment.
        assert!(longdialogue_qa_eng(
            " it is ace rothstein",
            &labels(&["ACE", "ACE ROTHSTEIN"])
        ));
        assert!(!longdialogue_qa_eng("nobody", &labels(&["ACE"])));
    }

    #[test]
    fn math_calc_prefix() {
        // labels [1, 4, 8], predicted [1, 4, 9, 8] → prefix 2 → 2/3.
        assert_eq!(
            math_calc("Values: [1, 4, 9, 8]", &labels(&["1", "4", "8"])),
            Some(2.0 / 3.0)
        );
        assert_eq!(math_calc("", &labels(&["1"])), Some(0.0));
    }

    #[test]
    fn task_average() {
        // passkey: 1, 0, 1 → 2/3.
        let preds = [
            row("passkey", &["1"], "1"),
            row("passkey", &["1"], "2"),
            row("passkey", &["1"], "x1"),
        ];
        assert_eq!(calculate_metrics(&preds), Ok(json!(2.0 / 3.0)));
        let preds = [
            row("passkey", &["1"], "1"),
            row("kv_retrieval", &["k"], "no"),
        ];
        assert_eq!(
            calculate_metrics(&preds),
            Ok(json!({"kv_retrieval": 0.0, "passkey": 1.0}))
        );
        assert!(matches!(
            calculate_metrics(&[row("longbook_sum_eng", &["a"], "a")]),
            Err(MetricsError::UnsupportedTask { .. })
        ));
        assert!(matches!(
            calculate_metrics(&[row("other", &["a"], "a")]),
            Err(MetricsError::UnknownTask { .. })
        ));
        assert!(matches!(
            calculate_metrics(&[]),
            Err(MetricsError::NoPredictions(_))
        ));
    }
}
