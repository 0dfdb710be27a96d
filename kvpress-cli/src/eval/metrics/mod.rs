//! Evaluation metrics, computed as kvpress 0.5.5's `evaluation/benchmarks/*/calculate_metrics.py`
//! compute them, with the same `metrics.json` structure per dataset.
//!
//! | dataset (CLI name) | mirrors | `metrics.json` |
//! |---|---|---|
//! | `ruler` | `ruler/calculate_metrics.py` | `{task: {"string_match": x}}` |
//! | `longbench` | `longbench/calculate_metrics.py::calculate_metrics` | one number (0–100) |
//! | `longbench-e` | `longbench/calculate_metrics.py::calculate_metrics_e` | `{"0-4k": x, "4-8k": y, "8k+": z}` (0–100) |
//! | `longbench-v2` | `longbenchv2/calculate_metrics.py` | `{"average": x, <difficulty>: .., <length>: ..}` (0–1) |
//! | `infinitebench` | `infinite_bench/calculate_metrics.py` | one number (0–1) |
//! | `loogle` | `loogle/calculate_metrics.py` | `{task: {"bleu1", "bleu4", "rouge-1", "rouge-2", "rouge-l", "meteor"}}` or `{task: {"exact_match", "partial_match"}}` |
//! | `needle_in_haystack` | `needle_in_haystack/calculate_metrics.py` | `[{"rouge-1": {r,p,f}, "rouge-2": .., "rouge-l": ..}, ...]` |
//! | `aime25`, `math500` | `aime25/`, `math500/calculate_metrics.py` | `{"correct", "answered", "accuracy", "total"}` |
//! | `zero_scrolls` | `zero_scrolls/calculate_metrics.py` | `{}` |
//!
//! kvpress scores LongBench and InfiniteBench one task per run (it applies the first row's task
//! metric to every row). Here, when the predictions hold several tasks, each task is scored with
//! its own metric and the result is an object keyed by task whose values have the single-task
//! structure; with one task the output is exactly kvpress's.
//!
//! Where this port knowingly differs from the Python code (each is documented on the item):
//! LooGLE's BERTScore is not computed (no neural model) and is absent from the output;
//! METEOR has no WordNet synonym stage and orders the word *sets* it is given deterministically
//! (sorted) where Python's order depends on string hashing; InfiniteBench labels are read as the
//! official InfiniteBench scorer expects them (kvpress's own code raises or scores 0 on its own
//! dataset for `code_run`, `code_debug` and `math_find`); Python exceptions that would abort the
//! whole kvpress run become per-row zeros (ROUGE on an empty prediction for
//! needle-in-a-haystack) or [`MetricsError`]s; NaN (an empty LongBench-E length bucket) is
//! written as JSON `null`, since JSON has no NaN.
//!
//! Everything else is meant to be bit-for-bit what kvpress computes with its pinned Python
//! packages (`rouge` 1.0.1, `nltk` 3.9/3.10, `fuzzywuzzy` 0.18 on `difflib`, `jieba` 0.42.1,
//! CPython ≤ 3.11 `sum`/`round`, numpy's pairwise `mean`): the helpers reproduce those
//! libraries' exact conventions (sentence splitting on `.`, set-based n-grams, difflib's
//! autojunk, jieba's routing and HMM, Porter stemming, Python whitespace and rounding). They were
//! compared with the Python originals on about 35,000 random inputs per run (three runs) with
//! no difference in any bit.

pub mod bleu;
pub mod chinese;
pub mod infinitebench;
pub mod longbench;
pub mod loogle;
pub mod math;
pub mod meteor;
pub mod needle;
pub mod porter;
pub mod pyliteral;
pub mod rouge;
pub mod ruler;
pub mod sequence_matcher;
pub mod text;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::sample::Prediction;

/// Why metrics could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// The dataset name is not one of kvpress's CLI dataset names.
    #[error(
        "unknown dataset `{0}` (expected one of ruler, longbench, longbench-e, longbench-v2, infinitebench, loogle, needle_in_haystack, aime25, math500, zero_scrolls)"
    )]
    UnknownDataset(String),
    /// The dataset's metric needs at least one prediction (kvpress fails on an empty frame).
    #[error("no predictions to score for dataset `{0}`")]
    NoPredictions(String),
    /// The task has no metric in kvpress for this dataset.
    #[error("dataset `{dataset}` has no metric for task `{task}`")]
    UnknownTask {
        /// The dataset.
        dataset: String,
        /// The task name found in the rows.
        task: String,
    },
    /// kvpress refuses this task outright.
    #[error("task `{task}` is not supported: {reason}")]
    UnsupportedTask {
        /// The task.
        task: String,
        /// kvpress's reason.
        reason: String,
    },
    /// A row lacks a dataset-specific column the metric reads.
    #[error("row {row} (task `{task}`) lacks the column `{column}`")]
    MissingColumn {
        /// Index of the row in the predictions.
        row: usize,
        /// The row's task.
        task: String,
        /// kvpress's column name.
        column: String,
    },
    /// A column holds a value the metric cannot use.
    #[error("row {row} (task `{task}`): column `{column}` {problem}")]
    InvalidColumn {
        /// Index of the row in the predictions.
        row: usize,
        /// The row's task.
        task: String,
        /// kvpress's column name.
        column: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// kvpress's `calculate_metrics` for `dataset` (kvpress CLI names: ruler, longbench,
/// longbench-e, longbench-v2, infinitebench, loogle, needle_in_haystack, aime25, math500,
/// zero_scrolls → empty object), i.e. `SCORER_REGISTRY[dataset](df)` of
/// `evaluation/evaluate_registry.py`, returning what kvpress writes to `metrics.json`.
pub fn calculate_metrics(dataset: &str, predictions: &[Prediction]) -> Result<Value, MetricsError> {
    match dataset {
        "ruler" => ruler::calculate_metrics(predictions),
        "longbench" => longbench::calculate_metrics(predictions),
        "longbench-e" => longbench::calculate_metrics_e(predictions),
        "longbench-v2" => longbench::calculate_metrics_v2(predictions),
        "infinitebench" => infinitebench::calculate_metrics(predictions),
        "loogle" => loogle::calculate_metrics(predictions),
        "needle_in_haystack" => needle::calculate_metrics(predictions),
        "aime25" => math::calculate_metrics_aime25(predictions),
        "math500" => math::calculate_metrics_math500(predictions),
        "zero_scrolls" => Ok(Value::Object(Map::new())),
        other => Err(MetricsError::UnknownDataset(other.to_string())),
    }
}

/// The one number plotted for a dataset: the average over tasks of each task's main score
/// (0–100), as kvpress's plots and leaderboard do (RULER: mean of the per-task
/// `string_match`).
///
/// Per dataset: `ruler` mean `string_match`; `longbench` the score (mean over tasks when
/// several); `longbench-e` mean of the non-empty length buckets (then over tasks);
/// `longbench-v2` `100 × average`; `infinitebench` `100 ×` the score (mean over tasks);
/// `loogle` per task the mean of its sub-metrics ×100 (kvpress's README plots: "mean over all
/// submetrics"; BERTScore is absent here), then the mean over tasks; `needle_in_haystack`
/// `100 ×` the mean ROUGE-L F over rows; `aime25`/`math500` `100 × accuracy`. `None` for
/// `zero_scrolls`, unknown datasets, and metrics without any number.
pub fn headline_score(dataset: &str, metrics: &Value) -> Option<f64> {
    match dataset {
        "ruler" => mean(
            metrics
                .as_object()?
                .values()
                .filter_map(|t| t.get("string_match")?.as_f64()),
        ),
        "longbench" => per_task(metrics, |v| v.as_f64()),
        "longbench-e" => match metrics.as_object() {
            Some(obj) if longbench::is_length_buckets(obj) => longbench_e_mean(metrics),
            Some(obj) => mean(obj.values().filter_map(longbench_e_mean)),
            None => None,
        },
        "longbench-v2" => Some(100.0 * metrics.get("average")?.as_f64()?),
        "infinitebench" => per_task(metrics, |v| v.as_f64()).map(|x| 100.0 * x),
        "loogle" => mean(metrics.as_object()?.values().filter_map(|task| {
            mean(task.as_object()?.values().filter_map(Value::as_f64)).map(|x| 100.0 * x)
        })),
        "needle_in_haystack" => mean(
            metrics
                .as_array()?
                .iter()
                .filter_map(|row| row.get("rouge-l")?.get("f")?.as_f64()),
        )
        .map(|x| 100.0 * x),
        "aime25" | "math500" => Some(100.0 * metrics.get("accuracy")?.as_f64()?),
        _ => None,
    }
}

fn longbench_e_mean(buckets: &Value) -> Option<f64> {
    mean(buckets.as_object()?.values().filter_map(Value::as_f64))
}

/// A single number, or the mean over an object of per-task numbers.
fn per_task(metrics: &Value, get: impl Fn(&Value) -> Option<f64>) -> Option<f64> {
    match metrics {
        Value::Object(obj) => mean(obj.values().filter_map(get)),
        other => get(other),
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = values.collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Rows grouped by task in pandas' `groupby("task")` order (sorted task names), each row with
/// its index in `predictions`.
pub(crate) fn group_by_task(
    predictions: &[Prediction],
) -> BTreeMap<&str, Vec<(usize, &Prediction)>> {
    let mut groups: BTreeMap<&str, Vec<(usize, &Prediction)>> = BTreeMap::new();
    for (i, p) in predictions.iter().enumerate() {
        groups
            .entry(p.sample.task.as_str())
            .or_default()
            .push((i, p));
    }
    groups
}

/// Applies `score_task` to the only task of the predictions (kvpress's output for LongBench and
/// InfiniteBench), or to each task, giving an object keyed by task. No rows → `NoPredictions`.
pub(crate) fn per_task_or_single<F>(
    predictions: &[Prediction],
    dataset: &str,
    score_task: F,
) -> Result<Value, MetricsError>
where
    F: Fn(&str, &[(usize, &Prediction)]) -> Result<Value, MetricsError>,
{
    let groups = group_by_task(predictions);
    if groups.is_empty() {
        return Err(MetricsError::NoPredictions(dataset.to_string()));
    }
    if groups.len() == 1
        && let Some((task, rows)) = groups.iter().next()
    {
        return score_task(task, rows);
    }
    let mut out = Map::new();
    for (task, rows) in &groups {
        out.insert((*task).to_string(), score_task(task, rows)?);
    }
    Ok(Value::Object(out))
}

/// The value of a dataset-specific column (`sample.extra[column]`).
pub(crate) fn column<'a>(
    row: usize,
    p: &'a Prediction,
    name: &str,
) -> Result<&'a Value, MetricsError> {
    p.sample
        .extra
        .get(name)
        .ok_or_else(|| MetricsError::MissingColumn {
            row,
            task: p.sample.task.clone(),
            column: name.to_string(),
        })
}

/// An [`MetricsError::InvalidColumn`] for `row`.
pub(crate) fn invalid(
    row: usize,
    p: &Prediction,
    name: &str,
    problem: impl Into<String>,
) -> MetricsError {
    MetricsError::InvalidColumn {
        row,
        task: p.sample.task.clone(),
        column: name.to_string(),
        problem: problem.into(),
    }
}

/// The first reference answer (kvpress's scalar `answer` column).
pub(crate) fn first_answer(row: usize, p: &Prediction) -> Result<&str, MetricsError> {
    p.sample
        .answers
        .first()
        .map(String::as_str)
        .ok_or_else(|| invalid(row, p, "answer", "is empty"))
}

/// A float as JSON; NaN and infinities (which Python's `json.dump` writes as `NaN`/`Infinity`)
/// become `null`.
pub(crate) fn json_f64(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::collections::BTreeMap;

    use serde_json::Value;

    use super::super::sample::{Prediction, Sample};

    /// A prediction row for tests.
    pub fn row(task: &str, answers: &[&str], predicted: &str) -> Prediction {
        Prediction {
            sample: Sample {
                task: task.to_string(),
                answers: answers.iter().map(|a| (*a).to_string()).collect(),
                ..Sample::default()
            },
            predicted_answer: predicted.to_string(),
        }
    }

    /// A prediction row with extra columns.
    pub fn row_with(
        task: &str,
        answers: &[&str],
        predicted: &str,
        extra: &[(&str, Value)],
    ) -> Prediction {
        let mut p = row(task, answers, predicted);
        p.sample.extra = extra
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>();
        p
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::test_util::row;
    use super::*;

    #[test]
    fn unknown_dataset_and_zero_scrolls() {
        assert_eq!(
            calculate_metrics("nope", &[]),
            Err(MetricsError::UnknownDataset("nope".into()))
        );
        assert_eq!(
            calculate_metrics("zero_scrolls", &[row("gov_report", &["a"], "b")]),
            Ok(json!({}))
        );
        assert_eq!(headline_score("zero_scrolls", &json!({})), None);
    }

    #[test]
    fn headline_scores() {
        let ruler =
            json!({"niah_single_1": {"string_match": 100.0}, "qa_1": {"string_match": 50.0}});
        assert_eq!(headline_score("ruler", &ruler), Some(75.0));
        assert_eq!(headline_score("ruler", &json!({})), None);
        assert_eq!(headline_score("longbench", &json!(42.5)), Some(42.5));
        assert_eq!(
            headline_score("longbench", &json!({"trec": 40.0, "lcc": 60.0})),
            Some(50.0)
        );
        // Empty bucket (null) left out: (10 + 30) / 2.
        let e = json!({"0-4k": 10.0, "4-8k": null, "8k+": 30.0});
        assert_eq!(headline_score("longbench-e", &e), Some(20.0));
        assert_eq!(
            headline_score(
                "longbench-e",
                &json!({"trec": e, "lcc": {"0-4k": 40.0, "4-8k": 40.0, "8k+": 40.0}})
            ),
            Some(30.0)
        );
        assert_eq!(
            headline_score("longbench-v2", &json!({"average": 0.25, "easy": 0.5})),
            Some(25.0)
        );
        assert_eq!(headline_score("infinitebench", &json!(0.5)), Some(50.0));
        // (mean(0.2, 0.4) + mean(0.5, 0.7)) / 2 · 100 = (0.3 + 0.6) / 2 · 100 = 45.
        let loogle = json!({"shortdep_qa": {"bleu1": 0.2, "meteor": 0.4}, "shortdep_cloze": {"exact_match": 0.5, "partial_match": 0.7}});
        let h = headline_score("loogle", &loogle).expect("score");
        assert!((h - 45.0).abs() < 1e-9);
        let needle = json!([{"rouge-l": {"f": 0.5}}, {"rouge-l": {"f": 1.0}}]);
        assert_eq!(headline_score("needle_in_haystack", &needle), Some(75.0));
        assert_eq!(
            headline_score("aime25", &json!({"accuracy": 0.1})),
            Some(10.0)
        );
    }
}
