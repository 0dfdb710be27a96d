//! `kvpress eval`: kvpress's evaluation (`evaluation/evaluate.py`) on the model of this build.
//!
//! Rows are grouped by context so that one compression serves every question of a context,
//! as kvpress does; on top of that, every (press, ratio) of a sweep is served by ONE prefill
//! forward of each context ([`Pipeline::run_shared`]), where kvpress re-runs everything.
//! Results follow kvpress's layout (see [`results`]); finished runs are skipped and
//! interrupted ones resume.

pub mod dataset;
pub mod metrics;
pub mod needle;
pub mod plot;
pub mod results;
pub mod ruler;
pub mod sample;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use kvpress_core::{KvQuantization, Press};
use kvpress_models::pipeline::{Output, Pipeline, Request};
use kvpress_models::tokenizer::TextTokenizer;
use serde_json::{Map, Value, json};

use crate::backend::Backend;
use crate::model;
use results::{Answered, RunDir, RunName};
use sample::{Prediction, Sample};

/// Dataset names `kvpress eval` knows (kvpress's `DATASET_REGISTRY` / `SCORER_REGISTRY`).
pub const DATASETS: [&str; 10] = [
    "ruler",
    "needle_in_haystack",
    "longbench",
    "longbench-e",
    "longbench-v2",
    "infinitebench",
    "loogle",
    "zero_scrolls",
    "aime25",
    "math500",
];

/// Which rows are evaluated: a dataset read from files, or generated (RULER, needles).
#[derive(Debug, Clone)]
pub struct DataOptions {
    /// Dataset name (one of [`DATASETS`]).
    pub dataset: String,
    /// Sub-directory / split of the dataset (RULER: the context length in tokens).
    pub data_dir: Option<String>,
    /// A dataset file or directory (kvpress-style parquet, JSONL, JSON or CSV).
    pub data_file: Option<PathBuf>,
    /// Fraction of the rows evaluated (a seeded random subset).
    pub fraction: f64,
    /// Context tokens kept at most (needle_in_haystack: the context length generated).
    pub max_context_length: Option<usize>,
    /// Needle depths in percent (needle_in_haystack).
    pub needle_depths: Vec<u32>,
    /// Tasks evaluated (empty: all; RULER: the tasks generated).
    pub tasks: Vec<String>,
    /// Rows generated per task (RULER).
    pub samples: usize,
    /// SQuAD / HotpotQA file for RULER's qa_1 / qa_2.
    pub qa_file: Option<PathBuf>,
    /// Seed of generation and subsampling.
    pub seed: u64,
}

/// What `kvpress eval` runs.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// The rows.
    pub data: DataOptions,
    /// Press expressions (empty: no press).
    pub presses: Vec<String>,
    /// Compression ratios, each applied to every press.
    pub ratios: Vec<f64>,
    /// Tokens generated per answer (default: each row's `max_new_tokens`).
    pub max_new_tokens: Option<usize>,
    /// Compress the question with the context.
    pub query_aware: bool,
    /// Where results go.
    pub output_dir: PathBuf,
    /// Recompute finished runs.
    pub overwrite: bool,
    /// Quantized cache storage (none: full precision).
    pub kv_quantization: Option<KvQuantization>,
}

/// One (press, ratio) of the sweep.
struct Run {
    expression: Option<String>,
    ratio: f64,
    press: Option<Box<dyn Press<Backend>>>,
    dir: RunDir,
    name: String,
    done: BTreeMap<usize, Answered>,
}

impl Run {
    fn label(&self) -> String {
        format!(
            "{} @ {:.2}",
            self.expression.as_deref().unwrap_or("no press"),
            self.ratio
        )
    }
}

/// Runs the evaluation and prints a table (or JSON) of the scores.
pub fn run(model_path: Option<&Path>, opts: &EvalOptions, json_out: bool) -> anyhow::Result<()> {
    let data = &opts.data;
    validate(data)?;
    if opts.max_new_tokens == Some(0) {
        anyhow::bail!("--max-new-tokens must be at least 1");
    }
    let presses = sweep(opts)?;
    let files = model::open(model_path)?;
    let model_name = files.name.clone();
    let llama = model::load(&files)?;
    let pipe = Pipeline::new(&llama, &files.tokenizer, files.eos_token_ids.clone())
        .with_kv_quantization(opts.kv_quantization);
    let kv_quant = opts.kv_quantization.map(|q| kv_quant_label(&q));

    let samples = load_samples(data, &files.tokenizer)?;
    let groups = group_by_context(&samples, opts.query_aware)?;

    let data_dir = data_dir(data);
    let mut runs = Vec::new();
    for (expression, ratio, press) in presses {
        let press_name = results::press_dir_name(expression.as_deref());
        let name = RunName {
            dataset: &data.dataset,
            data_dir: data_dir.as_deref(),
            model: &model_name,
            press: &press_name,
            ratio,
            fraction: data.fraction,
            max_context_length: data.max_context_length,
            query_aware: opts.query_aware,
            needle_depths: (data.dataset == "needle_in_haystack")
                .then_some(data.needle_depths.as_slice()),
            kv_quant: kv_quant.as_deref(),
        }
        .dir_name();
        let dir = RunDir::new(&opts.output_dir, &name);
        if opts.overwrite {
            dir.clear()?;
        }
        let done = if dir.is_complete() {
            BTreeMap::new()
        } else {
            dir.answered(samples.len())?
        };
        runs.push(Run {
            expression,
            ratio,
            press,
            dir,
            name,
            done,
        });
    }

    let pending = |run: &Run, rows: &[usize]| {
        !run.dir.is_complete() && !rows.iter().all(|r| run.done.contains_key(r))
    };
    let units: usize = groups
        .iter()
        .map(|(_, rows)| runs.iter().filter(|r| pending(r, rows)).count())
        .sum();
    for run in runs.iter().filter(|r| r.dir.is_complete()) {
        eprintln!(
            "skipping {} (finished; --overwrite reruns it)",
            run.dir.path.display()
        );
    }
    let bar = progress(units as u64, groups.len(), runs.len());
    for (group, rows) in groups.iter().enumerate() {
        let todo: Vec<usize> = (0..runs.len())
            .filter(|&i| pending(&runs[i], &rows.1))
            .collect();
        if todo.is_empty() {
            continue;
        }
        bar.set_message(format!("context {}/{}", group + 1, groups.len()));
        let answered = answer_group(&pipe, opts, &samples, &rows.1, &runs, &todo)
            .with_context(|| format!("context group {} (row {})", group + 1, rows.1[0] + 1))?;
        for (i, group_answers) in todo.iter().zip(answered) {
            runs[*i].dir.append(&group_answers)?;
            for a in group_answers {
                runs[*i].done.insert(a.row, a);
            }
        }
        bar.inc(todo.len() as u64);
    }
    bar.finish_and_clear();

    let mut table = Vec::new();
    for run in &runs {
        if !run.dir.is_complete() {
            finish_run(run, opts, &samples, &model_name)?;
        }
        let metrics: Value = serde_json::from_str(
            &std::fs::read_to_string(run.dir.path.join("metrics.json"))
                .with_context(|| format!("reading {}/metrics.json", run.dir.path.display()))?,
        )?;
        let config = results::read_config(&run.dir.path.join("config.yaml"))?;
        table.push(json!({
            "press": run.expression,
            "compression_ratio": run.ratio,
            "realised_compression_ratio": config.get("realised_compression_ratio"),
            "score": metrics::headline_score(&data.dataset, &metrics),
            "metrics": metrics,
            "results": run.dir.path,
            "name": run.name,
        }));
    }
    print_table(&table, json_out)
}

/// Writes the rows `opts` selects (generated or read) to `out` (`.parquet` in kvpress's
/// column layout, or `.jsonl`): a generated RULER or needle set can then be evaluated by
/// kvpress itself, or again here with `--data-file`.
pub fn export(model_path: Option<&Path>, opts: &DataOptions, out: &Path) -> anyhow::Result<usize> {
    validate(opts)?;
    let files = model::open(model_path)?;
    let samples = load_samples(opts, &files.tokenizer)?;
    dataset::write_samples(out, &samples)?;
    Ok(samples.len())
}

/// Refuses bad options before anything is loaded.
fn validate(opts: &DataOptions) -> anyhow::Result<()> {
    if !DATASETS.contains(&opts.dataset.as_str()) {
        anyhow::bail!(
            "unknown dataset {:?}; known: {}",
            opts.dataset,
            DATASETS.join(", ")
        );
    }
    if !(opts.fraction > 0.0 && opts.fraction <= 1.0) {
        anyhow::bail!("--fraction must be in (0, 1], got {}", opts.fraction);
    }
    let generated = matches!(opts.dataset.as_str(), "ruler" | "needle_in_haystack");
    if !generated && opts.data_file.is_none() {
        anyhow::bail!(
            "{} is read from files: give --data-file (a kvpress-style parquet/JSONL/CSV file, or \
             the directory of the HF dataset; no network is used)",
            opts.dataset
        );
    }
    if opts.dataset == "ruler" && opts.data_file.is_none() {
        ruler_length(opts)?;
        ruler_tasks(opts)?;
    }
    if opts.dataset == "needle_in_haystack" {
        if opts.max_context_length.is_none() {
            anyhow::bail!("needle_in_haystack needs --max-context-length (as kvpress)");
        }
        if opts.needle_depths.is_empty() {
            anyhow::bail!("needle_in_haystack needs --needle-depth (percent, one or more)");
        }
        if let Some(d) = opts.needle_depths.iter().find(|d| **d > 100) {
            anyhow::bail!("--needle-depth is a percentage in [0, 100], got {d}");
        }
    }
    Ok(())
}

/// Every (expression, ratio, press) of the sweep; no press runs once at ratio 0, as kvpress's
/// `no_press`.
type SweepEntry = (Option<String>, f64, Option<Box<dyn Press<Backend>>>);

fn sweep(opts: &EvalOptions) -> anyhow::Result<Vec<SweepEntry>> {
    for r in &opts.ratios {
        if !(0.0..1.0).contains(r) {
            anyhow::bail!("--compression-ratio must be in [0, 1), got {r}");
        }
    }
    let ratios = if opts.ratios.is_empty() {
        vec![0.5]
    } else {
        opts.ratios.clone()
    };
    let mut out: Vec<SweepEntry> = Vec::new();
    let expressions: Vec<Option<&str>> = if opts.presses.is_empty() {
        vec![None]
    } else {
        opts.presses
            .iter()
            .map(|p| (p.trim() != "no_press").then_some(p.as_str()))
            .collect()
    };
    for expression in expressions {
        match expression {
            None => {
                if !out.iter().any(|(e, _, _)| e.is_none()) {
                    out.push((None, 0.0, None));
                }
            }
            Some(e) => {
                for &r in &ratios {
                    let press = kvpress_presses::registry::build::<Backend>(e, Some(r))
                        .map_err(|err| anyhow::anyhow!("bad --press: {err}"))?;
                    out.push((Some(e.to_string()), r, Some(press)));
                }
            }
        }
    }
    Ok(out)
}

/// The `data_dir` naming the results (RULER: the context length, 4096 by default as kvpress).
fn data_dir(opts: &DataOptions) -> Option<String> {
    match (&opts.data_dir, opts.dataset.as_str()) {
        (Some(d), _) => Some(d.clone()),
        (None, "ruler") if opts.data_file.is_none() => Some("4096".into()),
        _ => None,
    }
}

/// The rows evaluated: read or generated, filtered by task, subsampled.
pub fn load_samples(opts: &DataOptions, tokenizer: &TextTokenizer) -> anyhow::Result<Vec<Sample>> {
    let count = |text: &str| -> Result<usize, String> {
        tokenizer
            .encode(text, false)
            .map(|ids| ids.len())
            .map_err(|e| e.to_string())
    };
    let mut samples = match (&opts.data_file, opts.dataset.as_str()) {
        (Some(path), _) => dataset::read_samples(path, opts.data_dir.as_deref())?,
        (None, "ruler") => generate_ruler(opts, &count)?,
        (None, _) => generate_needles(opts, tokenizer, &count)?,
    };
    if !opts.tasks.is_empty() && opts.data_file.is_some() {
        samples.retain(|s| opts.tasks.contains(&s.task));
    }
    if opts.fraction < 1.0 {
        samples = subsample(samples, opts.fraction, opts.seed);
    }
    if samples.is_empty() {
        anyhow::bail!("the dataset has no rows (after --task and --fraction)");
    }
    Ok(samples)
}

/// The context length of a generated RULER (its `--data-dir`).
fn ruler_length(opts: &DataOptions) -> anyhow::Result<usize> {
    let dir = data_dir(opts).unwrap_or_default();
    dir.parse().map_err(|_| {
        anyhow::anyhow!(
            "--data-dir of a generated RULER is its context length in tokens (e.g. 4096), got {dir:?}"
        )
    })
}

/// The RULER tasks generated: `--task`s, or every task (the QA ones only with `--qa-file`).
fn ruler_tasks(opts: &DataOptions) -> anyhow::Result<Vec<ruler::RulerTask>> {
    if opts.tasks.is_empty() {
        return Ok(ruler::RulerTask::ALL
            .iter()
            .copied()
            .filter(|t| opts.qa_file.is_some() || !t.needs_qa_file())
            .collect());
    }
    opts.tasks
        .iter()
        .map(|t| t.parse().map_err(|e| anyhow::anyhow!("{e}")))
        .collect()
}

fn generate_ruler(
    opts: &DataOptions,
    count: &dyn Fn(&str) -> Result<usize, String>,
) -> anyhow::Result<Vec<Sample>> {
    let length = ruler_length(opts)?;
    let tasks = ruler_tasks(opts)?;
    let config = ruler::RulerConfig {
        context_length: length,
        samples: opts.samples,
        seed: opts.seed,
        qa_file: opts.qa_file.clone(),
    };
    let bar = crate::commands::spinner(format!("generating RULER at {length} tokens"));
    let mut rows = Vec::new();
    for task in tasks {
        bar.set_message(format!("generating RULER {task} at {length} tokens"));
        rows.extend(ruler::generate(task, &config, count)?);
    }
    bar.finish_and_clear();
    Ok(rows)
}

fn generate_needles(
    opts: &DataOptions,
    tokenizer: &TextTokenizer,
    count: &dyn Fn(&str) -> Result<usize, String>,
) -> anyhow::Result<Vec<Sample>> {
    // kvpress: `tokenizer.decode(tokenizer.encode(text)[:tokens])`
    let truncate = |text: &str, tokens: usize| -> Result<String, String> {
        let ids = tokenizer.encode(text, false).map_err(|e| e.to_string())?;
        tokenizer
            .decode(&ids[..tokens.min(ids.len())], true)
            .map_err(|e| e.to_string())
    };
    let config = needle::NeedleConfig {
        max_context_length: opts.max_context_length.unwrap_or(0),
        depths: opts.needle_depths.clone(),
    };
    Ok(needle::needle_in_haystack(&config, count, &truncate)?)
}

/// A seeded random subset of `round(fraction · n)` rows (at least one), in dataset order.
fn subsample(samples: Vec<Sample>, fraction: f64, seed: u64) -> Vec<Sample> {
    let n = samples.len();
    let keep = ((fraction * n as f64).round() as usize).clamp(1, n.max(1));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let draw = kvpress_presses::random::splitmix(seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
        let j = (draw % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let mut chosen = order[..keep.min(n)].to_vec();
    chosen.sort_unstable();
    let mut samples: Vec<Option<Sample>> = samples.into_iter().map(Some).collect();
    chosen.iter().filter_map(|&i| samples[i].take()).collect()
}

/// Row indices grouped by identical context (query-aware: by context and question, which are
/// compressed together as kvpress's `context + question`), in order of first appearance; the
/// rows of a group must share their answer prefix (kvpress asserts the same).
fn group_by_context(
    samples: &[Sample],
    query_aware: bool,
) -> anyhow::Result<Vec<(String, Vec<usize>)>> {
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let key = if query_aware {
            format!("{}\u{0}{}", s.context, s.question)
        } else {
            s.context.clone()
        };
        match index.get(&key) {
            Some(&g) => {
                let first = &samples[groups[g].1[0]];
                if first.answer_prefix != s.answer_prefix {
                    anyhow::bail!(
                        "rows {} and {} share a context but not their answer_prefix ({:?} vs {:?})",
                        groups[g].1[0] + 1,
                        i + 1,
                        first.answer_prefix,
                        s.answer_prefix
                    );
                }
                groups[g].1.push(i);
            }
            None => {
                index.insert(key.clone(), groups.len());
                groups.push((key, vec![i]));
            }
        }
    }
    Ok(groups)
}

/// Answers the rows of one context group for the runs `todo`: one shared prefill for the
/// runs whose presses answer several questions from one compression, one shared prefill per
/// row for decoding-time presses (kvpress answers their rows one at a time).
fn answer_group(
    pipe: &Pipeline<'_, Backend>,
    opts: &EvalOptions,
    samples: &[Sample],
    rows: &[usize],
    runs: &[Run],
    todo: &[usize],
) -> anyhow::Result<Vec<Vec<Answered>>> {
    let first = &samples[rows[0]];
    let max_new_tokens = match (opts.max_new_tokens, first.max_new_tokens) {
        (Some(n), _) => n,
        (None, 0) => anyhow::bail!("the row has no max_new_tokens; pass --max-new-tokens"),
        (None, n) => n,
    };
    let request = |questions: Vec<String>| Request {
        context: first.context.clone(),
        questions,
        answer_prefix: first.answer_prefix.clone(),
        max_new_tokens,
        max_context_length: opts.data.max_context_length,
        query_aware: opts.query_aware,
    };
    let press = |i: usize| runs[i].press.as_deref();
    let decoding = |i: &usize| press(*i).is_some_and(|p| p.compresses_during_decoding());
    let (per_row, together): (Vec<usize>, Vec<usize>) = todo.iter().partition(|i| decoding(i));
    let mut answers: BTreeMap<usize, Vec<Answered>> = BTreeMap::new();
    let record =
        |answers: &mut BTreeMap<usize, Vec<Answered>>, run: usize, rows: &[usize], out: &Output| {
            let ratio = 1.0 - out.cache_bytes as f64 / out.uncompressed_bytes.max(1) as f64;
            answers
                .entry(run)
                .or_default()
                .extend(rows.iter().enumerate().map(|(i, &row)| {
                    Answered {
                        row,
                        // a query-aware group asks its one question once for all its rows
                        predicted_answer: out
                            .answers
                            .get(i.min(out.answers.len().saturating_sub(1)))
                            .cloned()
                            .unwrap_or_default(),
                        compression_ratio: ratio,
                    }
                }));
        };
    if !together.is_empty() {
        let questions = if opts.query_aware {
            vec![first.question.clone()]
        } else {
            rows.iter().map(|&r| samples[r].question.clone()).collect()
        };
        let presses: Vec<_> = together.iter().map(|&i| press(i)).collect();
        let outs = pipe.run_shared(&request(questions), &presses)?;
        for (&i, out) in together.iter().zip(&outs) {
            record(&mut answers, i, rows, out);
        }
    }
    if !per_row.is_empty() {
        let presses: Vec<_> = per_row.iter().map(|&i| press(i)).collect();
        for &row in rows {
            let outs = pipe.run_shared(&request(vec![samples[row].question.clone()]), &presses)?;
            for (&i, out) in per_row.iter().zip(&outs) {
                record(&mut answers, i, &[row], out);
            }
        }
    }
    Ok(todo
        .iter()
        .map(|i| answers.remove(i).unwrap_or_default())
        .collect())
}

/// A quantized cache in a results directory name: `kv_int4_g64_r128`.
fn kv_quant_label(q: &KvQuantization) -> String {
    format!("kv_{}_g{}_r{}", q.bits, q.group_size, q.residual)
}

/// Writes a finished run's predictions, metrics and configuration.
fn finish_run(
    run: &Run,
    opts: &EvalOptions,
    samples: &[Sample],
    model_name: &str,
) -> anyhow::Result<()> {
    let mut predictions = Vec::with_capacity(samples.len());
    let mut ratios = Vec::with_capacity(samples.len());
    for (i, sample) in samples.iter().enumerate() {
        let a = run
            .done
            .get(&i)
            .with_context(|| format!("{}: row {} was not answered", run.label(), i + 1))?;
        let mut sample = sample.clone();
        sample.context.clear();
        predictions.push(Prediction {
            sample,
            predicted_answer: a.predicted_answer.clone(),
        });
        ratios.push(a.compression_ratio);
    }
    let data = &opts.data;
    let metrics = metrics::calculate_metrics(&data.dataset, &predictions)
        .with_context(|| format!("metrics of {}", run.label()))?;
    let realised = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;
    let mut config = Map::new();
    let mut put = |k: &str, v: Value| {
        config.insert(k.to_string(), v);
    };
    put("dataset", json!(data.dataset));
    put("data_dir", json!(data_dir(data)));
    put("data_file", json!(data.data_file));
    put("model", json!(model_name));
    put(
        "press_name",
        json!(results::press_dir_name(run.expression.as_deref())),
    );
    put("press", json!(run.expression));
    put("compression_ratio", json!(run.ratio));
    put(
        "realised_compression_ratio",
        json!((realised * 1e4).round() / 1e4),
    );
    put("fraction", json!(data.fraction));
    put("max_new_tokens", json!(opts.max_new_tokens));
    put("max_context_length", json!(data.max_context_length));
    put("query_aware", json!(opts.query_aware));
    if let Some(q) = &opts.kv_quantization {
        put("kv_quant", json!(q.bits.to_string()));
        put("kv_group_size", json!(q.group_size));
        put("kv_residual", json!(q.residual));
    }
    if data.dataset == "needle_in_haystack" {
        put("needle_depth", json!(data.needle_depths));
    }
    if data.dataset == "ruler" && data.data_file.is_none() {
        put("ruler_samples_per_task", json!(data.samples));
    }
    put("tasks", json!(data.tasks));
    put("seed", json!(data.seed));
    put("rows", json!(samples.len()));
    put("backend", json!(crate::backend::NAME));
    put("kvpress_rs_version", json!(env!("CARGO_PKG_VERSION")));
    run.dir.finish(&predictions, &ratios, &metrics, &config)
}

fn progress(units: u64, groups: usize, runs: usize) -> ProgressBar {
    let bar = ProgressBar::new(units);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {bar:30} {pos}/{len} answers [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or(ProgressStyle::default_bar()),
    );
    if units > 0 {
        eprintln!("{groups} contexts × {runs} press/ratio runs ({units} still to answer)");
    }
    bar
}

fn print_table(table: &[Value], json_out: bool) -> anyhow::Result<()> {
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "runs": table }))?
        );
        return Ok(());
    }
    println!(
        "{:<40} {:>6} {:>9} {:>8}  results",
        "press", "ratio", "realised", "score"
    );
    for row in table {
        let num = |k: &str| row[k].as_f64();
        println!(
            "{:<40} {:>6.2} {:>9} {:>8}  {}",
            row["press"].as_str().unwrap_or("no press"),
            num("compression_ratio").unwrap_or(0.0),
            num("realised_compression_ratio").map_or("-".into(), |r| format!("{r:.3}")),
            num("score").map_or("-".into(), |s| format!("{s:.2}")),
            row["results"].as_str().unwrap_or_default(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(context: &str, prefix: &str) -> Sample {
        Sample {
            context: context.into(),
            answer_prefix: prefix.into(),
            ..Default::default()
        }
    }

    #[test]
    fn groups_share_contexts_in_first_seen_order() {
        let rows = [sample("b", "x"), sample("a", "x"), sample("b", "x")];
        let groups = group_by_context(&rows, false).expect("groups");
        assert_eq!(
            groups,
            vec![("b".into(), vec![0, 2]), ("a".into(), vec![1])]
        );
        let mut asked = [sample("b", "x"), sample("b", "x"), sample("b", "x")];
        asked[0].question = "q1".into();
        asked[1].question = "q2".into();
        asked[2].question = "q1".into();
        let groups = group_by_context(&asked, true).expect("query-aware groups");
        assert_eq!(
            groups.iter().map(|g| g.1.clone()).collect::<Vec<_>>(),
            vec![vec![0, 2], vec![1]],
            "query-aware: one compression per (context, question)"
        );
        let bad = [sample("b", "x"), sample("b", "y")];
        let e = group_by_context(&bad, false)
            .expect_err("prefixes differ")
            .to_string();
        assert!(e.contains("answer_prefix"), "{e}");
    }

    #[test]
    fn subsample_is_seeded_and_sized() {
        let rows: Vec<Sample> = (0..10).map(|i| sample(&i.to_string(), "")).collect();
        let a = subsample(rows.clone(), 0.3, 42);
        assert_eq!(a.len(), 3);
        assert_eq!(a, subsample(rows.clone(), 0.3, 42));
        assert_ne!(a, subsample(rows.clone(), 0.3, 7));
        let order: Vec<usize> = a.iter().map(|s| s.context.parse().unwrap_or(0)).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "dataset order kept");
        assert_eq!(subsample(rows, 0.01, 1).len(), 1);
    }
}
