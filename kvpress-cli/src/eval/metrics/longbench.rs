//! LongBench, LongBench-E and LongBench-v2 metrics: kvpress's
//! `evaluation/benchmarks/longbench/calculate_metrics.py` (LongBench's official `metrics.py`
//! and `eval.py`) and `evaluation/benchmarks/longbenchv2/calculate_metrics.py`.
//!
//! Columns read: `answers` ([`Sample::answers`](super::super::sample::Sample)), `all_classes`
//! (trec, lsht: the first row's list is used for all rows, as kvpress does), `length`
//! (LongBench-E), `difficulty` and `length` (LongBench-v2), `answer` (LongBench-v2: the first
//! of `answers`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value, json};

use super::super::sample::Prediction;
use super::chinese::jieba_cut;
use super::rouge::rouge_scores;
use super::sequence_matcher::fuzz_ratio;
use super::text::{normalize_zh_answer, np_mean, py_lstrip, py_round, qa_f1_score, token_f1};
use super::{MetricsError, column, first_answer, invalid, json_f64, per_task_or_single};

static DIGITS: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"\d+").ok());
static PARAGRAPH_EN: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"Paragraph (\d+)").ok());
static PARAGRAPH_ZH: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"段落(\d+)").ok());

/// The metric of a LongBench task (`dataset2metric`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// `qa_f1_score`.
    QaF1,
    /// `qa_f1_zh_score` (jieba words).
    QaF1Zh,
    /// `rouge_score` (ROUGE-L F).
    Rouge,
    /// `rouge_zh_score` (ROUGE-L F on jieba words).
    RougeZh,
    /// `classification_score`.
    Classification,
    /// `retrieval_score`.
    Retrieval,
    /// `retrieval_zh_score`.
    RetrievalZh,
    /// `count_score`.
    Count,
    /// `code_sim_score`.
    CodeSim,
}

/// `dataset2metric[task]`; `None` for a task LongBench does not know.
pub fn task_metric(task: &str) -> Option<Metric> {
    use Metric::*;
    Some(match task {
        "narrativeqa" | "qasper" | "multifieldqa_en" | "hotpotqa" | "2wikimqa" | "musique"
        | "triviaqa" => QaF1,
        "multifieldqa_zh" => QaF1Zh,
        "dureader" | "vcsum" => RougeZh,
        "gov_report" | "qmsum" | "multi_news" | "samsum" => Rouge,
        "trec" | "lsht" => Classification,
        "passage_retrieval_en" => Retrieval,
        "passage_retrieval_zh" => RetrievalZh,
        "passage_count" => Count,
        "lcc" | "repobench-p" => CodeSim,
        _ => return None,
    })
}

/// Whether the task keeps only the first line of the prediction (`trec`, `triviaqa`, `samsum`,
/// `lsht`).
fn first_line_only(task: &str) -> bool {
    matches!(task, "trec" | "triviaqa" | "samsum" | "lsht")
}

/// `count_score`: the fraction of the numbers (`\d+`) in the prediction equal to the answer.
pub fn count_score(prediction: &str, ground_truth: &str) -> f64 {
    let Some(re) = DIGITS.as_ref() else {
        return 0.0;
    };
    let numbers: Vec<&str> = re.find_iter(prediction).map(|m| m.as_str()).collect();
    if numbers.is_empty() {
        return 0.0;
    }
    numbers.iter().filter(|n| **n == ground_truth).count() as f64 / numbers.len() as f64
}

/// `retrieval_score` / `retrieval_zh_score`: the fraction of the numbers in the prediction
/// equal to the paragraph id of the answer (`Paragraph N` / `段落N`); `None` when the answer
/// holds no id (Python raises `IndexError`).
pub fn retrieval_score(prediction: &str, ground_truth: &str, chinese: bool) -> Option<f64> {
    let pattern = if chinese {
        PARAGRAPH_ZH.as_ref()?
    } else {
        PARAGRAPH_EN.as_ref()?
    };
    let id = pattern.captures(ground_truth)?.get(1)?.as_str();
    let numbers: Vec<&str> = DIGITS
        .as_ref()?
        .find_iter(prediction)
        .map(|m| m.as_str())
        .collect();
    if numbers.is_empty() {
        return Some(0.0);
    }
    Some(numbers.iter().filter(|n| **n == id).count() as f64 / numbers.len() as f64)
}

/// `code_sim_score`: `fuzz.ratio(first code line, answer) / 100`, where the first code line is
/// the first line (after removing leading newlines) without `` ` ``, `#` or `//` (empty if none).
pub fn code_sim_score(prediction: &str, ground_truth: &str) -> f64 {
    let line = prediction
        .trim_start_matches('\n')
        .split('\n')
        .find(|l| !l.contains('`') && !l.contains('#') && !l.contains("//"))
        .unwrap_or("");
    f64::from(fuzz_ratio(line, ground_truth)) / 100.0
}

/// `classification_score`, including its quirk of removing items from the match list while
/// iterating over it (the item after a removed one is skipped).
pub fn classification_score(prediction: &str, ground_truth: &str, all_classes: &[String]) -> f64 {
    let mut matched: Vec<&str> = all_classes
        .iter()
        .map(String::as_str)
        .filter(|c| prediction.contains(c))
        .collect();
    let mut i = 0;
    while i < matched.len() {
        let term = matched[i];
        if ground_truth.contains(term) && term != ground_truth {
            // list.remove(x) removes the first equal item.
            if let Some(pos) = matched.iter().position(|m| *m == term) {
                matched.remove(pos);
            }
        }
        i += 1;
    }
    if matched.contains(&ground_truth) {
        1.0 / matched.len() as f64
    } else {
        0.0
    }
}

/// `rouge_score`: ROUGE-L F of the `rouge` package (prediction as hypothesis), 0 when the
/// package raises (empty prediction or answer).
pub fn rouge_score(prediction: &str, ground_truth: &str) -> f64 {
    rouge_scores(prediction, ground_truth).map_or(0.0, |s| s.rouge_l.f)
}

/// `rouge_zh_score`: [`rouge_score`] on the jieba words joined by spaces.
pub fn rouge_zh_score(prediction: &str, ground_truth: &str) -> f64 {
    rouge_score(
        &jieba_cut(prediction).join(" "),
        &jieba_cut(ground_truth).join(" "),
    )
}

/// `qa_f1_zh_score`: token F1 over jieba words, each [`normalize_zh_answer`]ed, empty ones
/// dropped.
pub fn qa_f1_zh_score(prediction: &str, ground_truth: &str) -> f64 {
    let tokens = |s: &str| -> Vec<String> {
        jieba_cut(s)
            .into_iter()
            .map(normalize_zh_answer)
            .filter(|t| !t.is_empty())
            .collect()
    };
    token_f1(&tokens(prediction), &tokens(ground_truth))
}

/// Everything a task's rows share.
struct TaskContext<'a> {
    metric: Metric,
    all_classes: &'a [String],
}

/// `dataset2metric[task](prediction, ground_truth, all_classes=...)`.
fn score_one(
    ctx: &TaskContext<'_>,
    prediction: &str,
    ground_truth: &str,
    row: usize,
    p: &Prediction,
) -> Result<f64, MetricsError> {
    Ok(match ctx.metric {
        Metric::QaF1 => qa_f1_score(prediction, ground_truth),
        Metric::QaF1Zh => qa_f1_zh_score(prediction, ground_truth),
        Metric::Rouge => rouge_score(prediction, ground_truth),
        Metric::RougeZh => rouge_zh_score(prediction, ground_truth),
        Metric::Classification => classification_score(prediction, ground_truth, ctx.all_classes),
        Metric::Retrieval | Metric::RetrievalZh => {
            retrieval_score(prediction, ground_truth, ctx.metric == Metric::RetrievalZh)
                .ok_or_else(|| invalid(row, p, "answers", "holds no paragraph id"))?
        }
        Metric::Count => count_score(prediction, ground_truth),
        Metric::CodeSim => code_sim_score(prediction, ground_truth),
    })
}

/// Max over the references, starting from 0 (`score = max(score, metric(...))`).
fn best_score(
    ctx: &TaskContext<'_>,
    prediction: &str,
    row: usize,
    p: &Prediction,
) -> Result<f64, MetricsError> {
    let mut best = 0.0f64;
    for gt in &p.sample.answers {
        best = best.max(score_one(ctx, prediction, gt, row, p)?);
    }
    Ok(best)
}

/// The `all_classes` of the task's first row (empty unless the task classifies).
fn all_classes(
    task_metric: Metric,
    rows: &[(usize, &Prediction)],
) -> Result<Vec<String>, MetricsError> {
    if task_metric != Metric::Classification {
        return Ok(Vec::new());
    }
    let Some(&(i, p)) = rows.first() else {
        return Ok(Vec::new());
    };
    let value = column(i, p, "all_classes")?;
    let items = value
        .as_array()
        .ok_or_else(|| invalid(i, p, "all_classes", "is not a list"))?;
    items
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| invalid(i, p, "all_classes", "holds a non-string"))
        })
        .collect()
}

fn metric_for(task: &str, dataset: &str) -> Result<Metric, MetricsError> {
    task_metric(task).ok_or_else(|| MetricsError::UnknownTask {
        dataset: dataset.to_string(),
        task: task.to_string(),
    })
}

/// LongBench's `scorer(dataset, predictions, answers, all_classes)`:
/// `round(100 · mean_rows max_refs metric(pred.lstrip(), ref), 2)`, where trec/triviaqa/samsum/lsht
/// first keep `pred.lstrip().split("\n")[0]`.
fn scorer(task: &str, rows: &[(usize, &Prediction)], dataset: &str) -> Result<f64, MetricsError> {
    let metric = metric_for(task, dataset)?;
    let classes = all_classes(metric, rows)?;
    let ctx = TaskContext {
        metric,
        all_classes: &classes,
    };
    let mut total = 0.0;
    for &(i, p) in rows {
        let mut prediction = p.predicted_answer.as_str();
        if first_line_only(task) {
            prediction = py_lstrip(prediction).split('\n').next().unwrap_or("");
        }
        total += best_score(&ctx, py_lstrip(prediction), i, p)?;
    }
    Ok(py_round(100.0 * total / rows.len() as f64, 2))
}

/// The three LongBench-E length buckets, in kvpress's order.
pub const LENGTH_BUCKETS: [&str; 3] = ["0-4k", "4-8k", "8k+"];

/// Whether an object is a LongBench-E result (its keys are the length buckets).
pub fn is_length_buckets(obj: &Map<String, Value>) -> bool {
    !obj.is_empty() && obj.keys().all(|k| LENGTH_BUCKETS.contains(&k.as_str()))
}

/// A row's `length` column as a number.
fn length_of(row: usize, p: &Prediction) -> Result<f64, MetricsError> {
    let v = column(row, p, "length")?;
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| invalid(row, p, "length", "is not a number"))
}

/// LongBench's `scorer_e`: per length bucket (`length` < 4000, < 8000, else),
/// `round(100 · numpy.mean(scores), 2)`; an empty bucket is NaN (JSON `null`). Unlike
/// [`scorer`], the first-line rule uses `pred.lstrip("\n")` and the prediction is not
/// left-stripped before scoring.
fn scorer_e(
    task: &str,
    rows: &[(usize, &Prediction)],
    dataset: &str,
) -> Result<Value, MetricsError> {
    let metric = metric_for(task, dataset)?;
    let classes = all_classes(metric, rows)?;
    let ctx = TaskContext {
        metric,
        all_classes: &classes,
    };
    let mut buckets: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for &(i, p) in rows {
        let mut prediction = p.predicted_answer.as_str();
        if first_line_only(task) {
            prediction = prediction
                .trim_start_matches('\n')
                .split('\n')
                .next()
                .unwrap_or("");
        }
        let score = best_score(&ctx, prediction, i, p)?;
        let length = length_of(i, p)?;
        let b = if length < 4000.0 {
            0
        } else if length < 8000.0 {
            1
        } else {
            2
        };
        buckets[b].push(score);
    }
    let mut out = Map::new();
    for (name, scores) in LENGTH_BUCKETS.iter().zip(&buckets) {
        out.insert(
            (*name).to_string(),
            json_f64(py_round(100.0 * np_mean(scores), 2)),
        );
    }
    Ok(Value::Object(out))
}

/// kvpress's LongBench `calculate_metrics(df)`: `scorer(task, predicted_answer, answers,
/// all_classes)`, a single number (0–100) for a one-task frame. With several tasks, an object
/// `{task: number}` (kvpress would apply the first task's metric to all rows).
pub fn calculate_metrics(predictions: &[Prediction]) -> Result<Value, MetricsError> {
    per_task_or_single(predictions, "longbench", |task, rows| {
        scorer(task, rows, "longbench").map(json_f64)
    })
}

/// kvpress's `calculate_metrics_e(df)` (LongBench-E): `{"0-4k", "4-8k", "8k+"}` for a one-task
/// frame (task names may carry a `-e` suffix, removed to find the metric); with several tasks,
/// `{task: {...}}`.
pub fn calculate_metrics_e(predictions: &[Prediction]) -> Result<Value, MetricsError> {
    per_task_or_single(predictions, "longbench-e", |task, rows| {
        scorer_e(task.strip_suffix("-e").unwrap_or(task), rows, "longbench-e")
    })
}

/// LongBench-v2's `score`: after removing `*`, the prediction contains
/// `The correct answer is (X)` or `The correct answer is X`.
pub fn v2_score(predicted: &str, expected: &str) -> bool {
    let cleaned = predicted.replace('*', "");
    cleaned.contains(&format!("The correct answer is ({expected})"))
        || cleaned.contains(&format!("The correct answer is {expected}"))
}

/// A grouping column's value as the JSON key pandas/`json.dump` would give it.
fn group_key(row: usize, p: &Prediction, name: &str) -> Result<String, MetricsError> {
    match column(row, p, name)? {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(if *b { "true".into() } else { "false".into() }),
        _ => Err(invalid(row, p, name, "is not a string")),
    }
}

/// kvpress's LongBench-v2 `calculate_metrics(df)`: `{"average": mean score}` updated with the
/// mean score per `difficulty` value and then per `length` value (fractions in 0–1).
pub fn calculate_metrics_v2(predictions: &[Prediction]) -> Result<Value, MetricsError> {
    if predictions.is_empty() {
        return Err(MetricsError::NoPredictions("longbench-v2".into()));
    }
    let mut by_difficulty: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut by_length: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut correct = 0usize;
    for (i, p) in predictions.iter().enumerate() {
        let ok = usize::from(v2_score(&p.predicted_answer, first_answer(i, p)?));
        correct += ok;
        for (name, map) in [
            ("difficulty", &mut by_difficulty),
            ("length", &mut by_length),
        ] {
            let e = map.entry(group_key(i, p, name)?).or_insert((0, 0));
            e.0 += ok;
            e.1 += 1;
        }
    }
    // Boolean means are exact: (number true) / count.
    let mut out = Map::new();
    out.insert(
        "average".into(),
        json!(correct as f64 / predictions.len() as f64),
    );
    for map in [by_difficulty, by_length] {
        for (key, (c, n)) in map {
            out.insert(key, json!(c as f64 / n as f64));
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_util::{row, row_with};
    use super::*;

    #[test]
    fn classification_quirk() {
        // all_classes [A, AB, B]; prediction "AB" contains "A", "AB", "B" → matched [A, AB, B].
        // gt "AB": i=0 "A" ⊂ "AB" and ≠ → removed → [AB, B]; i=1 "B" ⊂ "AB" → removed → [AB].
        // "AB" in list → 1/1.
        let classes: Vec<String> = ["A", "AB", "B"].iter().map(|s| s.to_string()).collect();
        assert_eq!(classification_score("AB", "AB", &classes), 1.0);
        // Skipping: classes [x, xy, y, z], pred "xy z", gt "xyz"? Use gt "xy":
        // matched [x, xy, y, z]; i=0 "x" ⊂ "xy" → removed → [xy, y, z]; i=1 "y" ⊂ "xy" →
        // removed → [xy, z]; i=2 stop. "xy" in list → 1/2.
        let classes: Vec<String> = ["x", "xy", "y", "z"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(classification_score("xy z", "xy", &classes), 0.5);
        // Skipped element survives: classes [a, b, ab], pred "ab", gt "ab": matched [a, b, ab];
        // i=0 "a" removed → [b, ab]; i=1 is "ab" (== gt, kept); "b" was skipped → [b, ab] → 1/2.
        let classes: Vec<String> = ["a", "b", "ab"].iter().map(|s| s.to_string()).collect();
        assert_eq!(classification_score("ab", "ab", &classes), 0.5);
        assert_eq!(classification_score("none", "ab", &classes), 0.0);
    }

    #[test]
    fn count_and_retrieval() {
        // numbers ["3", "3", "4"], gt "3" → 2/3.
        assert_eq!(count_score("3 or 3 or 4", "3"), 2.0 / 3.0);
        assert_eq!(count_score("none", "3"), 0.0);
        // "03" ≠ "3" (string comparison).
        assert_eq!(count_score("03", "3"), 0.0);
        assert_eq!(
            retrieval_score("Paragraph 12", "Paragraph 12", false),
            Some(1.0)
        );
        // numbers ["1", "12"] → 1/2.
        assert_eq!(
            retrieval_score("Paragraph 1 or 12", "Paragraph 12", false),
            Some(0.5)
        );
        assert_eq!(retrieval_score("段落3", "段落3", true), Some(1.0));
        assert_eq!(retrieval_score("3", "no id", false), None);
    }

    #[test]
    fn code_sim_takes_first_code_line() {
        // Lines: "```python" (has `), "# comment" (has #), "x = 1" → compared with "x = 1".
        assert_eq!(
            code_sim_score("\n```python\n# comment\nx = 1\ny = 2", "x = 1"),
            1.0
        );
        // No usable line → "" vs answer → 0.
        assert_eq!(code_sim_score("// only", "x"), 0.0);
        // fuzz.ratio("abcd", "bcde") = 75.
        assert_eq!(code_sim_score("abcd", "bcde"), 0.75);
    }

    #[test]
    fn longbench_single_task_is_a_number() {
        // hotpotqa: row 1 best of refs: "Paris" vs ["paris", "city of paris"] → 1.0;
        // row 2 "in London" vs "London": P = 1/2, R = 1 → 2/3; row 3 empty → 0.
        // mean = (1 + 2/3 + 0) / 3 · 100 = 55.555… → 55.56.
        let preds = [
            row("hotpotqa", &["paris", "city of paris"], "  Paris"),
            row("hotpotqa", &["London"], "in London"),
            row("hotpotqa", &["x"], ""),
        ];
        assert_eq!(calculate_metrics(&preds), Ok(json!(55.56)));
    }

    #[test]
    fn first_line_rule() {
        // triviaqa keeps "Paris" only (after lstrip): F1 1.0; without the rule the extra
        // line would lower it.
        let preds = [row(
            "triviaqa",
            &["Paris"],
            "\n Paris\nThe capital of France",
        )];
        assert_eq!(calculate_metrics(&preds), Ok(json!(100.0)));
        // trec: first line "Location" → class "Location" found; gt "Location" → 1/1.
        let classes = json!(["Location", "Human", "Number"]);
        let preds = [row_with(
            "trec",
            &["Location"],
            "Location\nHuman",
            &[("all_classes", classes)],
        )];
        assert_eq!(calculate_metrics(&preds), Ok(json!(100.0)));
    }

    #[test]
    fn several_tasks_give_an_object() {
        let preds = [
            row("hotpotqa", &["a b"], "a b"),
            row("passage_count", &["3"], "3"),
        ];
        assert_eq!(
            calculate_metrics(&preds),
            Ok(json!({"hotpotqa": 100.0, "passage_count": 100.0}))
        );
        assert!(matches!(
            calculate_metrics(&[]),
            Err(MetricsError::NoPredictions(_))
        ));
        assert!(matches!(
            calculate_metrics(&[row("unknown_task", &["a"], "a")]),
            Err(MetricsError::UnknownTask { .. })
        ));
        // trec without all_classes: missing column.
        assert!(matches!(
            calculate_metrics(&[row("trec", &["a"], "a")]),
            Err(MetricsError::MissingColumn { .. })
        ));
    }

    #[test]
    fn summarization_rouge() {
        // gov_report: ROUGE-L F of "the cat sat" vs "the cat sat": 2·1/(2 + 1e-8) → ×100 → 100.0
        // after rounding; an empty prediction raises in `rouge` → 0.
        let preds = [
            row("gov_report", &["the cat sat"], "the cat sat"),
            row("gov_report", &["x"], ""),
        ];
        assert_eq!(calculate_metrics(&preds), Ok(json!(50.0)));
    }

    #[test]
    fn longbench_e_buckets() {
        // Lengths 100 (0-4k), 5000 (4-8k), 9000 and 8000 (8k+). passage_count scores 1, 0, 1, 0.5
        // (numbers ["2", "3"], gt "2"). Buckets: 0-4k [1] → 100.0; 4-8k [0] → 0.0;
        // 8k+ [1, 0.5] → 75.0.
        let preds = [
            row_with("passage_count", &["2"], "2", &[("length", json!(100))]),
            row_with("passage_count", &["2"], "5", &[("length", json!(5000))]),
            row_with("passage_count", &["2"], "2", &[("length", json!(9000))]),
            row_with("passage_count", &["2"], "2 3", &[("length", json!(8000))]),
        ];
        assert_eq!(
            calculate_metrics_e(&preds),
            Ok(json!({"0-4k": 100.0, "4-8k": 0.0, "8k+": 75.0}))
        );
        // An empty bucket is NaN in Python, null here; "-e" suffix accepted.
        let preds = [row_with(
            "passage_count-e",
            &["2"],
            "2",
            &[("length", json!(10))],
        )];
        assert_eq!(
            calculate_metrics_e(&preds),
            Ok(json!({"0-4k": 100.0, "4-8k": null, "8k+": null}))
        );
        // Missing length.
        assert!(matches!(
            calculate_metrics_e(&[row("passage_count", &["2"], "2")]),
            Err(MetricsError::MissingColumn { .. })
        ));
    }

    #[test]
    fn longbench_e_first_line_rule_differs() {
        // scorer_e: lstrip("\n") only, then no lstrip: " Paris" keeps its space, which
        // normalize_answer removes anyway → F1 1.0.
        let preds = [row_with(
            "triviaqa",
            &["Paris"],
            "\n Paris\nmore",
            &[("length", json!(1))],
        )];
        assert_eq!(
            calculate_metrics_e(&preds),
            Ok(json!({"0-4k": 100.0, "4-8k": null, "8k+": null}))
        );
        // code: scorer_e does not lstrip, so the leading " " stays in the compared line:
        // fuzz.ratio(" x = 1", "x = 1") = round(100·2·5/11) = round(90.9) = 91.
        let preds = [row_with(
            "lcc",
            &["x = 1"],
            " x = 1",
            &[("length", json!(1))],
        )];
        assert_eq!(
            calculate_metrics_e(&preds),
            Ok(json!({"0-4k": 91.0, "4-8k": null, "8k+": null}))
        );
        // scorer lstrips → exact match → 100.
        assert_eq!(
            calculate_metrics(&[row("lcc", &["x = 1"], " x = 1")]),
            Ok(json!(100.0))
        );
    }

    #[test]
    fn chinese_tasks() {
        // multifieldqa_zh: jieba words of "我来到北京清华大学" = [我, 来到, 北京, 清华大学],
        // answer "北京清华大学" = [北京, 清华大学] → common 2, P = 2/4, R = 1 → F1 = 2/3 → 66.67.
        let preds = [row(
            "multifieldqa_zh",
            &["北京清华大学"],
            "我来到北京清华大学",
        )];
        assert_eq!(calculate_metrics(&preds), Ok(json!(66.67)));
        // Punctuation-only tokens are dropped: "北京。" → [北京] vs [北京] → 1.
        assert_eq!(qa_f1_zh_score("北京。", "北京"), 1.0);
        // dureader: identical text → ROUGE-L F 2/(2 + 1e-8) → 100.0 after rounding.
        let preds = [row("dureader", &["我来到北京"], "我来到北京")];
        assert_eq!(calculate_metrics(&preds), Ok(json!(100.0)));
    }

    #[test]
    fn longbench_v2() {
        let extra = |d: &str, l: &str| vec![("difficulty", json!(d)), ("length", json!(l))];
        let preds = [
            row_with(
                "v2",
                &["A"],
                "**The correct answer is (A)**",
                &extra("easy", "short"),
            ),
            row_with(
                "v2",
                &["B"],
                "The correct answer is B.",
                &extra("hard", "short"),
            ),
            row_with(
                "v2",
                &["C"],
                "The correct answer is (D)",
                &extra("hard", "long"),
            ),
            row_with("v2", &["D"], "", &extra("hard", "long")),
        ];
        // average 2/4; easy 1/1; hard 1/3; short 2/2; long 0/2.
        assert_eq!(
            calculate_metrics_v2(&preds),
            Ok(json!({"average": 0.5, "easy": 1.0, "hard": 1.0 / 3.0, "short": 1.0, "long": 0.0}))
        );
        assert!(!v2_score("the correct answer is A", "A"));
        assert!(matches!(
            calculate_metrics_v2(&[]),
            Err(MetricsError::NoPredictions(_))
        ));
    }
}
