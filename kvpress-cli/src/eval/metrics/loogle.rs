//! LooGLE metrics: kvpress's `evaluation/benchmarks/loogle/calculate_metrics.py` (adapted from
//! LooGLE's `automatic_metrics.py`).
//!
//! Per task (sorted): for `shortdep_cloze`, `exact_match` and `partial_match` (rounded to 4
//! decimals); for every other task the row means of `bleu1`, `bleu4`, `rouge-1`, `rouge-2`,
//! `rouge-l` (recall) and `meteor`.
//!
//! Deviations: **BERTScore (`bert`) is not computed** — it needs a neural model — and the key is
//! left out of the output. METEOR has no WordNet synonym stage (see [`super::meteor`]) and, as
//! kvpress passes Python *sets* of words (whose iteration order depends on the process's string
//! hashing, so Python's own value changes from run to run), the distinct words are given in
//! sorted order. The cloze answers are read with a literal-only evaluator
//! ([`super::pyliteral`]) instead of Python's `eval`.

use serde_json::{Map, Value, json};

use super::super::sample::Prediction;
use super::bleu::sentence_bleu;
use super::meteor::single_meteor_score;
use super::pyliteral::{PyValue, dict_get, eval_literal};
use super::rouge::rouge_scores;
use super::text::{np_mean, py_round, py_split};
use super::{MetricsError, first_answer, group_by_task, invalid, json_f64};

/// The metric keys of the non-cloze tasks, in kvpress's order (without `bert`).
pub const QA_KEYS: [&str; 6] = ["bleu1", "bleu4", "rouge-1", "rouge-2", "rouge-l", "meteor"];

/// `text.replace("\n", " ").split()`.
fn tokens(text: &str) -> Vec<&str> {
    // Python's split() already splits on "\n"; the replace changes nothing.
    py_split(text)
}

/// `get_bleu_score(reference, hypothesis)`: `[bleu1, bleu4]`.
pub fn bleu_scores(reference: &str, hypothesis: &str) -> [f64; 2] {
    let (r, h) = (tokens(reference), tokens(hypothesis));
    [
        sentence_bleu(&r, &h, &[1.0, 0.0, 0.0, 0.0]),
        sentence_bleu(&r, &h, &[0.0, 0.0, 0.0, 1.0]),
    ]
}

/// `get_rouge_score(reference, hypothesis)` (recall): `[rouge-1, rouge-2, rouge-l]`, zeros when
/// the `rouge` package raises (empty text), as `try_except_metric` gives.
pub fn rouge_recalls(reference: &str, hypothesis: &str) -> [f64; 3] {
    rouge_scores(hypothesis, reference)
        .map_or([0.0; 3], |s| [s.rouge_1.r, s.rouge_2.r, s.rouge_l.r])
}

/// The distinct words of a text, sorted (stand-in for Python's hash-ordered `set`).
fn word_set(text: &str) -> Vec<&str> {
    let mut words = tokens(text);
    words.sort_unstable();
    words.dedup();
    words
}

/// `get_meteor_score(reference, hypothesis)`: `single_meteor_score(set(reference),
/// set(hypothesis))` on the sorted word sets, without WordNet.
pub fn meteor(reference: &str, hypothesis: &str) -> f64 {
    single_meteor_score(&word_set(reference), &word_set(hypothesis))
}

/// The values of a reference dict as Python would `.split()` them; `None` when a value is not
/// `str`/`bytes` (Python raises `AttributeError`).
fn split_value(v: &PyValue) -> Option<Vec<Vec<u8>>> {
    match v {
        // Tag str tokens with a leading 0 byte and bytes tokens with 1 so they never compare
        // equal (str ≠ bytes in Python).
        PyValue::Str(s) => Some(
            py_split(s)
                .into_iter()
                .map(|w| [&[0u8][..], w.as_bytes()].concat())
                .collect(),
        ),
        PyValue::Bytes(b) => Some(
            b.split(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
                .filter(|w| !w.is_empty())
                .map(|w| [&[1u8][..], w].concat())
                .collect(),
        ),
        _ => None,
    }
}

/// `get_exact_match(reference, hypothesis)`: `(number of reference keys whose predicted value
/// equals the reference value, number of reference keys)`; `(0, 1)` when the prediction does
/// not evaluate to a dict, as in Python.
pub fn exact_match(reference: &[(PyValue, PyValue)], hypothesis: &str) -> (usize, usize) {
    let Some(hyp) = eval_literal(hypothesis) else {
        return (0, 1);
    };
    let Some(hyp) = hyp.as_dict() else {
        return (0, 1);
    };
    let hits = reference
        .iter()
        .filter(|(k, v)| dict_get(hyp, k).unwrap_or(&PyValue::None).py_eq(v))
        .count();
    (hits, reference.len())
}

/// `get_partial_match(reference, hypothesis)`: `(keys whose predicted value shares a word with
/// the reference value, number of reference keys)`; `(0, count)` when the prediction is not a
/// dict or a value is not a string.
pub fn partial_match(reference: &[(PyValue, PyValue)], hypothesis: &str) -> (usize, usize) {
    let count = reference.len();
    let Some(hyp) = eval_literal(hypothesis) else {
        return (0, count);
    };
    let Some(hyp) = hyp.as_dict() else {
        return (0, count);
    };
    let mut hits = 0;
    for (key, value) in reference {
        let Some(pred_value) = dict_get(hyp, key) else {
            continue;
        };
        let (Some(truth), Some(pred)) = (split_value(value), split_value(pred_value)) else {
            return (0, count);
        };
        if truth.iter().any(|w| pred.contains(w)) {
            hits += 1;
        }
    }
    (hits, count)
}

fn cloze_metrics(rows: &[(usize, &Prediction)]) -> Result<Value, MetricsError> {
    let mut exact = (0usize, 0usize);
    let mut partial = (0usize, 0usize);
    for &(i, p) in rows {
        let answer = first_answer(i, p)?;
        let reference = eval_literal(answer)
            .ok_or_else(|| invalid(i, p, "answer", "is not a Python/JSON literal"))?;
        let reference = reference
            .as_dict()
            .ok_or_else(|| invalid(i, p, "answer", "is not a dict"))?;
        let (m, c) = exact_match(reference, &p.predicted_answer);
        exact = (exact.0 + m, exact.1 + c);
        let (m, c) = partial_match(reference, &p.predicted_answer);
        partial = (partial.0 + m, partial.1 + c);
    }
    let ratio = |(m, c): (usize, usize)| -> Result<Value, MetricsError> {
        if c == 0 {
            let (i, p) = rows
                .first()
                .copied()
                .ok_or(MetricsError::NoPredictions("loogle".into()))?;
            return Err(invalid(
                i,
                p,
                "answer",
                "dicts are all empty (division by zero)",
            ));
        }
        Ok(json!(py_round(m as f64 / c as f64, 4)))
    };
    Ok(json!({"exact_match": ratio(exact)?, "partial_match": ratio(partial)?}))
}

fn qa_metrics(rows: &[(usize, &Prediction)]) -> Result<Value, MetricsError> {
    let mut columns: [Vec<f64>; 6] = Default::default();
    for &(i, p) in rows {
        let answer = first_answer(i, p)?;
        let pred = p.predicted_answer.as_str();
        let [b1, b4] = bleu_scores(answer, pred);
        let [r1, r2, rl] = rouge_recalls(answer, pred);
        let m = meteor(answer, pred);
        for (col, v) in columns.iter_mut().zip([b1, b4, r1, r2, rl, m]) {
            col.push(v);
        }
    }
    let mut out = Map::new();
    for (key, col) in QA_KEYS.iter().zip(&columns) {
        out.insert((*key).to_string(), json_f64(np_mean(col)));
    }
    Ok(Value::Object(out))
}

/// kvpress's LooGLE `calculate_metrics(df)`: `{task: {metric: mean}}` (see the module doc).
/// No rows → `{}`.
pub fn calculate_metrics(predictions: &[Prediction]) -> Result<Value, MetricsError> {
    let mut out = Map::new();
    for (task, rows) in group_by_task(predictions) {
        let metrics = if task == "shortdep_cloze" {
            cloze_metrics(&rows)?
        } else {
            qa_metrics(&rows)?
        };
        out.insert(task.to_string(), metrics);
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_util::row;
    use super::*;

    fn dict(src: &str) -> Vec<(PyValue, PyValue)> {
        eval_literal(src)
            .and_then(|v| v.as_dict().map(<[_]>::to_vec))
            .unwrap_or_default()
    }

    #[test]
    fn cloze_exact_and_partial() {
        let reference = dict(r#"{"<mask-0>": "Alice Smith", "<mask-1>": "Paris"}"#);
        // Exact: <mask-0> differs, <mask-1> equal → (1, 2). Partial: "Alice" shared → 1,
        // "Paris" shared → 1 → (2, 2).
        let hyp = "{'<mask-0>': 'Alice', '<mask-1>': 'Paris'}";
        assert_eq!(exact_match(&reference, hyp), (1, 2));
        assert_eq!(partial_match(&reference, hyp), (2, 2));
        // Not a dict: exact (0, 1), partial (0, 2).
        assert_eq!(exact_match(&reference, "Alice and Paris"), (0, 1));
        assert_eq!(partial_match(&reference, "Alice and Paris"), (0, 2));
        // A non-string predicted value makes the whole row 0 for partial.
        let hyp = "{'<mask-0>': 'Alice', '<mask-1>': 3}";
        assert_eq!(partial_match(&reference, hyp), (0, 2));
        assert_eq!(exact_match(&reference, hyp), (0, 2));
        // Missing key: get() is None ≠ "Paris".
        assert_eq!(
            exact_match(&reference, "{'<mask-0>': 'Alice Smith'}"),
            (1, 2)
        );
    }

    #[test]
    fn cloze_task_rounding() {
        // Row 1: exact (1, 2), partial (2, 2); row 2: exact (0, 1) (not a dict), partial (0, 1).
        // exact = 1/3 → 0.3333; partial = 2/3 → 0.6667.
        let preds = [
            row(
                "shortdep_cloze",
                &[r#"{"<mask-0>": "Alice Smith", "<mask-1>": "Paris"}"#],
                "{'<mask-0>': 'Alice', '<mask-1>': 'Paris'}",
            ),
            row("shortdep_cloze", &[r#"{"<mask-0>": "Bob"}"#], ""),
        ];
        assert_eq!(
            calculate_metrics(&preds),
            Ok(json!({"shortdep_cloze": {"exact_match": 0.3333, "partial_match": 0.6667}}))
        );
        // A reference that is not a dict literal is an error (Python crashes in partial_match).
        assert!(calculate_metrics(&[row("shortdep_cloze", &["not a dict"], "{}")]).is_err());
    }

    #[test]
    fn qa_identical_answer() {
        // "the cat sat" vs itself: BLEU-1 = 1; BLEU-4: no 4-gram → BP 1 · exp(ln(float min))
        // (nltk: 2.2250738585072626e-308); ROUGE recalls 1; METEOR on sorted sets [cat, sat, the]
        // (3 matches, 1 chunk) = (1 − 0.5/27) / (0.9 + (1 − 0.9)).
        let m = calculate_metrics(&[row("shortdep_qa", &["the cat sat"], "the cat sat")])
            .expect("metrics");
        let t = &m["shortdep_qa"];
        assert_eq!(t["bleu1"], json!(1.0));
        assert_eq!(t["bleu4"], json!(2.2250738585072626e-308));
        assert_eq!(t["rouge-1"], json!(1.0));
        assert_eq!(t["rouge-2"], json!(1.0));
        assert_eq!(t["rouge-l"], json!(1.0));
        let meteor = (1.0 - 0.5 * (1.0f64 / 3.0).powf(3.0)) * (1.0 / (0.9 + (1.0 - 0.9)));
        assert_eq!(t["meteor"], json!(meteor));
        assert!(t.get("bert").is_none());
    }

    #[test]
    fn qa_empty_prediction_and_mean() {
        // Empty prediction: BLEU 0 (no unigram), ROUGE raises → zeros, METEOR 0. Mean with a
        // perfect row: BLEU-1 (1 + 0)/2 = 0.5, ROUGE-1 0.5.
        let preds = [
            row("longdep_qa", &["a b"], "a b"),
            row("longdep_qa", &["a b"], ""),
        ];
        let m = calculate_metrics(&preds).expect("metrics");
        assert_eq!(m["longdep_qa"]["bleu1"], json!(0.5));
        assert_eq!(m["longdep_qa"]["rouge-1"], json!(0.5));
        assert_eq!(calculate_metrics(&[]), Ok(json!({})));
    }

    #[test]
    fn python_reference_values() {
        // kvpress's get_bleu_score / get_rouge_score with nltk 3.10.4 and rouge 1.0.1:
        // ref = "The meeting was held in Geneva in 1954.", hyp = "It was held in Geneva."
        // bleu1 = 0.32928698165641584 (by hand: 3/5 unigrams — "Geneva." ≠ "Geneva" — times
        // BP exp(1 − 8/5)), bleu4 = 1.221146424717419e-308, rouge-1 r = 4/7, rouge-2 r = 3/7,
        // rouge-l r = 4/7.
        let (r, h) = (
            "The meeting was held in Geneva in 1954.",
            "It was held in Geneva.",
        );
        assert_eq!(
            bleu_scores(r, h),
            [0.32928698165641584, 1.221146424717419e-308]
        );
        assert_eq!(
            rouge_recalls(r, h),
            [0.5714285714285714, 0.42857142857142855, 0.5714285714285714]
        );
    }
}
