//! RULER metrics: kvpress's `evaluation/benchmarks/ruler/calculate_metrics.py`.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value, json};

use super::super::sample::Prediction;
use super::text::{py_round, py_strip, py_sum};
use super::{MetricsError, group_by_task, invalid};

static CONTROL: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"[\x00-\x1f]").ok());

/// kvpress's cleaning of `predicted_answer`: `np_pattern.sub("", x.strip()).strip()` with
/// `np_pattern = [\x00-\x1f]` (control characters, including newlines and tabs, removed).
pub fn clean_prediction(prediction: &str) -> String {
    let stripped = py_strip(prediction);
    let removed = match CONTROL.as_ref() {
        Some(re) => re.replace_all(stripped, "").into_owned(),
        None => stripped.to_string(),
    };
    py_strip(&removed).to_string()
}

/// `string_match_part` for one row: 1 if any reference occurs (case-insensitively) in the
/// prediction, else 0.
fn match_part(pred: &str, refs: &[String]) -> f64 {
    let pred = pred.to_lowercase();
    if refs.iter().any(|r| pred.contains(&r.to_lowercase())) {
        1.0
    } else {
        0.0
    }
}

/// `string_match_all` for one row: the fraction of references occurring (case-insensitively)
/// in the prediction.
fn match_all(pred: &str, refs: &[String]) -> f64 {
    let pred = pred.to_lowercase();
    let hits: Vec<f64> = refs
        .iter()
        .map(|r| {
            if pred.contains(&r.to_lowercase()) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    py_sum(&hits) / refs.len() as f64
}

/// kvpress's `string_match_part(preds, refs)` (`qa_*` tasks):
/// `round(100 · mean_rows max_r [r.lower() in pred.lower()], 2)`.
pub fn string_match_part(preds: &[String], refs: &[&[String]]) -> f64 {
    let per_row: Vec<f64> = preds
        .iter()
        .zip(refs)
        .map(|(p, r)| match_part(p, r))
        .collect();
    py_round(py_sum(&per_row) / preds.len() as f64 * 100.0, 2)
}

/// kvpress's `string_match_all(preds, refs)` (all other tasks):
/// `round(100 · mean_rows (Σ_r [r.lower() in pred.lower()] / len(refs)), 2)`.
pub fn string_match_all(preds: &[String], refs: &[&[String]]) -> f64 {
    let per_row: Vec<f64> = preds
        .iter()
        .zip(refs)
        .map(|(p, r)| match_all(p, r))
        .collect();
    py_round(py_sum(&per_row) / preds.len() as f64 * 100.0, 2)
}

/// RULER's `calculate_metrics(df)`: per task (sorted, as `groupby("task")`),
/// `{"string_match": score}` with `string_match_part` for tasks whose name starts with `qa_`
/// (`task.split("_")[0] == "qa"`) and `string_match_all` otherwise. No rows → `{}`.
///
/// A row without any reference answer is an error (Python raises there: `max([])` or a
/// division by zero).
pub fn calculate_metrics(predictions: &[Prediction]) -> Result<Value, MetricsError> {
    let mut out = Map::new();
    for (task, rows) in group_by_task(predictions) {
        if let Some((i, p)) = rows.iter().find(|(_, p)| p.sample.answers.is_empty()) {
            return Err(invalid(*i, p, "answer", "is empty"));
        }
        let preds: Vec<String> = rows
            .iter()
            .map(|(_, p)| clean_prediction(&p.predicted_answer))
            .collect();
        let refs: Vec<&[String]> = rows
            .iter()
            .map(|(_, p)| p.sample.answers.as_slice())
            .collect();
        let score = if task.split('_').next() == Some("qa") {
            string_match_part(&preds, &refs)
        } else {
            string_match_all(&preds, &refs)
        };
        out.insert(task.to_string(), json!({ "string_match": score }));
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_util::row;
    use super::*;

    #[test]
    fn cleaning_removes_control_characters() {
        // " \tAns\nwer\u{1}  " → strip → "Ans\nwer\u{1}" → remove → "Answer".
        assert_eq!(clean_prediction(" \tAns\nwer\u{1}  "), "Answer");
        // DEL (0x7f) is not in [\x00-\x1f] and is kept.
        assert_eq!(clean_prediction("a\u{7f}"), "a\u{7f}");
        assert_eq!(clean_prediction(""), "");
    }

    #[test]
    fn by_hand_scores() {
        let preds = [
            // niah: 2 references, one found (case-insensitive) → 0.5
            row(
                "niah_multivalue",
                &["1234", "ABCD"],
                "The values are abcd and 99",
            ),
            // 2 references, both found → 1.0
            row("niah_multivalue", &["1", "2"], "1 2"),
            // 3 references, none found → 0
            row("niah_multivalue", &["x", "y", "z"], ""),
            // qa: any of the references → 1
            row("qa_1", &["Paris", "Lyon"], "It is LYON."),
            // qa: none → 0
            row("qa_1", &["Paris"], "London"),
            // qa: empty prediction → 0
            row("qa_1", &["Paris"], ""),
        ];
        let m = calculate_metrics(&preds).expect("metrics");
        // niah_multivalue: (0.5 + 1 + 0) / 3 · 100 = 50.0
        // qa_1: (1 + 0 + 0) / 3 · 100 = 33.333… → 33.33
        assert_eq!(
            m,
            json!({"niah_multivalue": {"string_match": 50.0}, "qa_1": {"string_match": 33.33}})
        );
    }

    #[test]
    fn control_characters_split_words_differently() {
        // The newline is removed, so "12\n34" becomes "1234" and matches.
        let m = calculate_metrics(&[row("niah_single_1", &["1234"], "12\n34")]).expect("metrics");
        assert_eq!(m, json!({"niah_single_1": {"string_match": 100.0}}));
    }

    #[test]
    fn rounding_and_unicode() {
        // cwe with 3 references: Ünïcode match via full lower-casing ("É" → "é").
        // Row scores 2/3 and 0 → mean 1/3 · 100 = 33.333… → 33.33.
        let preds = [
            row("cwe", &["Été", "ÉCOLE", "nope"], "été, école"),
            row("cwe", &["a"], "b"),
        ];
        let m = calculate_metrics(&preds).expect("metrics");
        assert_eq!(m, json!({"cwe": {"string_match": 33.33}}));
    }

    #[test]
    fn no_rows_and_no_reference() {
        assert_eq!(calculate_metrics(&[]), Ok(json!({})));
        assert!(calculate_metrics(&[row("vt", &[], "x")]).is_err());
    }

    #[test]
    fn qa_prefix_is_the_first_underscore_field() {
        // "qa" alone (no underscore) is also a qa task; "qab_1" is not.
        let m = calculate_metrics(&[row("qa", &["a", "b"], "a"), row("qab_1", &["a", "b"], "a")])
            .expect("m");
        assert_eq!(
            m,
            json!({"qa": {"string_match": 100.0}, "qab_1": {"string_match": 50.0}})
        );
    }
}
