//! Needle-in-a-haystack metrics: kvpress's
//! `evaluation/benchmarks/needle_in_haystack/calculate_metrics.py`.

use serde_json::Value;

use super::super::sample::Prediction;
use super::rouge::rouge_scores;
use super::text::py_strip;
use super::{MetricsError, column, invalid};

/// kvpress's needle-in-a-haystack `calculate_metrics(df)`: for every row, in order,
/// `Rouge().get_scores(needle.strip(), predicted_answer.strip())[0]` — note the argument order:
/// the **needle is the hypothesis** and the **prediction the reference** — i.e. a list of
/// `{"rouge-1": {"r", "p", "f"}, "rouge-2": .., "rouge-l": ..}`. kvpress does not average; the
/// mean over rows is left to [`super::headline_score`].
///
/// Deviation: where the `rouge` package raises (an empty prediction or needle, which stops
/// kvpress's whole evaluation), the row gets all-zero scores.
pub fn calculate_metrics(predictions: &[Prediction]) -> Result<Value, MetricsError> {
    let mut rows = Vec::with_capacity(predictions.len());
    for (i, p) in predictions.iter().enumerate() {
        let needle = column(i, p, "needle")?
            .as_str()
            .ok_or_else(|| invalid(i, p, "needle", "is not a string"))?;
        let scores =
            rouge_scores(py_strip(needle), py_strip(&p.predicted_answer)).unwrap_or_default();
        rows.push(scores.to_json());
    }
    Ok(Value::Array(rows))
}

/// One row's score in 0–1 for needle heat maps: the ROUGE-L F of the row as
/// [`calculate_metrics`] computes it (the same number [`super::headline_score`] averages); 0 when
/// the row has no string `needle` column or ROUGE cannot be computed.
pub fn row_score(p: &Prediction) -> f64 {
    let Some(needle) = p.sample.extra.get("needle").and_then(Value::as_str) else {
        return 0.0;
    };
    rouge_scores(py_strip(needle), py_strip(&p.predicted_answer)).map_or(0.0, |s| s.rouge_l.f)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_util::{row, row_with};
    use super::*;

    #[test]
    fn needle_is_the_hypothesis() {
        // needle (hyp) "the best thing is a sandwich" — 6 distinct words; prediction (ref)
        // "a sandwich" — 2. ROUGE-1 overlap 2: p = 2/6, r = 2/2 = 1. ROUGE-2: hyp bigrams 5,
        // ref 1, overlap 1 → p = 1/5, r = 1. ROUGE-L: LCS word set {a, sandwich} → r = 2/2,
        // p = 2/6.
        let needle = ("needle", json!(" the best thing is a sandwich "));
        let m = calculate_metrics(&[row_with("niah", &[], "a sandwich\n", &[needle])])
            .expect("metrics");
        let r1 = &m[0]["rouge-1"];
        assert_eq!(r1["r"], json!(1.0));
        assert_eq!(r1["p"], json!(2.0 / 6.0));
        assert_eq!(
            r1["f"],
            json!(2.0 * ((2.0 / 6.0) / (2.0 / 6.0 + 1.0 + 1e-8)))
        );
        assert_eq!(m[0]["rouge-2"]["p"], json!(0.2));
        assert_eq!(m[0]["rouge-l"]["r"], json!(1.0));
    }

    #[test]
    fn row_score_is_rouge_l_f() {
        // Identical texts: f = 2·(1·1)/(1 + 1 + 1e-8).
        let p = row_with("niah", &[], " a b ", &[("needle", json!("a b"))]);
        assert_eq!(row_score(&p), 2.0 * (1.0 / (2.0 + 1e-8)));
        let m = calculate_metrics(std::slice::from_ref(&p)).expect("metrics");
        assert_eq!(m[0]["rouge-l"]["f"], json!(row_score(&p)));
        assert_eq!(row_score(&row("niah", &[], "a b")), 0.0);
        assert_eq!(
            row_score(&row_with("niah", &[], "", &[("needle", json!("a b"))])),
            0.0
        );
    }

    #[test]
    fn empty_prediction_scores_zero_and_no_rows() {
        let needle = ("needle", json!("a b"));
        let m = calculate_metrics(&[row_with("niah", &[], "  ", &[needle])]).expect("metrics");
        assert_eq!(m[0]["rouge-l"], json!({"r": 0.0, "p": 0.0, "f": 0.0}));
        assert_eq!(calculate_metrics(&[]), Ok(json!([])));
        assert!(matches!(
            calculate_metrics(&[row("niah", &[], "x")]),
            Err(MetricsError::MissingColumn { .. })
        ));
    }
}
