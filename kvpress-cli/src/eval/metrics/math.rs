//! AIME25 and MATH-500 metrics: kvpress's `evaluation/benchmarks/aime25/calculate_metrics.py`
//! and `evaluation/benchmarks/math500/calculate_metrics.py` (boxed-answer accuracy).

use serde_json::{Value, json};

use super::super::sample::Prediction;
use super::{MetricsError, first_answer};

/// AIME25's `extract_boxed`: the text after the **last** `boxed{` up to the next `}`. Without
/// any `boxed{` this is the prediction up to its first `}` (Python's `split(..)[-1]` never fails),
/// so an unboxed bare answer can still count as correct.
pub fn extract_boxed_last(pred: &str) -> &str {
    let after = pred.rsplit("boxed{").next().unwrap_or(pred);
    after.split('}').next().unwrap_or(after)
}

/// MATH-500's `extract_boxed`: the text after the **first** `boxed{` up to the next `}`;
/// `None` without `boxed{` (Python's `IndexError`).
pub fn extract_boxed_first(pred: &str) -> Option<&str> {
    let (_, after) = pred.split_once("boxed{")?;
    after.split('}').next()
}

fn accuracy(
    predictions: &[Prediction],
    dataset: &str,
    correct_fn: impl Fn(&str, &str) -> bool,
) -> Result<Value, MetricsError> {
    if predictions.is_empty() {
        return Err(MetricsError::NoPredictions(dataset.to_string()));
    }
    let mut correct = 0usize;
    let mut answered = 0usize;
    for (i, p) in predictions.iter().enumerate() {
        let answer = first_answer(i, p)?;
        correct += usize::from(correct_fn(&p.predicted_answer, answer));
        answered += usize::from(p.predicted_answer.contains("boxed{"));
    }
    let total = predictions.len();
    Ok(json!({
        "correct": correct,
        "answered": answered,
        "accuracy": correct as f64 / total as f64,
        "total": total,
    }))
}

/// kvpress's AIME25 `calculate_metrics(df)`: `{"correct", "answered", "accuracy", "total"}`,
/// correct when the last boxed text equals `str(answer)` (the first of `answers`), answered
/// when the prediction contains `boxed{`.
pub fn calculate_metrics_aime25(predictions: &[Prediction]) -> Result<Value, MetricsError> {
    accuracy(predictions, "aime25", |pred, answer| {
        extract_boxed_last(pred) == answer
    })
}

/// kvpress's MATH-500 `calculate_metrics(df)`: as AIME25 but with the first boxed text.
pub fn calculate_metrics_math500(predictions: &[Prediction]) -> Result<Value, MetricsError> {
    accuracy(predictions, "math500", |pred, answer| {
        extract_boxed_first(pred) == Some(answer)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_util::row;
    use super::*;

    #[test]
    fn extraction() {
        assert_eq!(extract_boxed_last(r"so \boxed{12} then \boxed{34}"), "34");
        assert_eq!(
            extract_boxed_first(r"so \boxed{12} then \boxed{34}"),
            Some("12")
        );
        // No boxed: AIME keeps everything up to the first "}", MATH-500 has nothing.
        assert_eq!(extract_boxed_last("42"), "42");
        assert_eq!(extract_boxed_first("42"), None);
        // Nested braces are cut at the first "}" (kvpress does not balance them).
        assert_eq!(
            extract_boxed_first(r"\boxed{\frac{1}{2}}"),
            Some(r"\frac{1")
        );
        assert_eq!(extract_boxed_last(""), "");
    }

    #[test]
    fn aime_counts() {
        let preds = [
            row("aime", &["34"], r"\boxed{12} … \boxed{34}"),
            row("aime", &["7"], "7"),
            row("aime", &["5"], r"\boxed{6}"),
            row("aime", &["5"], ""),
        ];
        // correct: rows 1, 2 (unboxed "7" == "7"); answered: rows 1, 3.
        assert_eq!(
            calculate_metrics_aime25(&preds),
            Ok(json!({"correct": 2, "answered": 2, "accuracy": 0.5, "total": 4}))
        );
    }

    #[test]
    fn math500_counts() {
        let preds = [
            row("math", &["12"], r"\boxed{12} \boxed{34}"),
            row("math", &["7"], "7"),
        ];
        assert_eq!(
            calculate_metrics_math500(&preds),
            Ok(json!({"correct": 1, "answered": 1, "accuracy": 0.5, "total": 2}))
        );
        assert!(matches!(
            calculate_metrics_math500(&[]),
            Err(MetricsError::NoPredictions(_))
        ));
    }
}
