//! The results layout of kvpress's `evaluate.py`, and resuming an interrupted run.
//!
//! One directory per (dataset, data_dir, model, press, ratio, options):
//! `<output>/<dataset>__<data_dir>__<model>__<press>__<ratio:.2f>[__fraction…][__max_context…]
//! [__query_aware][__needle_depth…][__kv_int8_g64_r128]/` holding `predictions.csv` (every
//! column but the context), `metrics.json` and `config.yaml`. A run is complete when `predictions.csv` and
//! `metrics.json` exist (kvpress's skip rule). Until then, each answered context group is
//! appended to `partial.jsonl`, so an interrupted run resumes where it stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::dataset;
use super::sample::{Prediction, Sample};

/// Columns of `predictions.csv` before the dataset-specific ones.
const FIXED_COLUMNS: [&str; 5] = [
    "question",
    "answer_prefix",
    "answer",
    "task",
    "max_new_tokens",
];

/// The options that name a results directory (kvpress's `get_results_dir`).
#[derive(Debug, Clone)]
pub struct RunName<'a> {
    /// Dataset name (`ruler`, `longbench`, ...).
    pub dataset: &'a str,
    /// Split / length sub-directory, if any.
    pub data_dir: Option<&'a str>,
    /// Model name (`/` written `--`).
    pub model: &'a str,
    /// Press name for the directory (see [`press_dir_name`]).
    pub press: &'a str,
    /// Compression ratio.
    pub ratio: f64,
    /// Subsampled fraction.
    pub fraction: f64,
    /// Context truncation.
    pub max_context_length: Option<usize>,
    /// Query-aware compression.
    pub query_aware: bool,
    /// Needle depths (needle_in_haystack only).
    pub needle_depths: Option<&'a [u32]>,
    /// Quantized cache storage (`kv_int8_g64_r128`), if any.
    pub kv_quant: Option<&'a str>,
}

impl RunName<'_> {
    /// The directory name.
    pub fn dir_name(&self) -> String {
        let mut parts = vec![self.dataset.to_string()];
        if let Some(d) = self.data_dir.filter(|d| !d.is_empty()) {
            parts.push(d.to_string());
        }
        parts.push(self.model.replace('/', "--"));
        parts.push(self.press.to_string());
        parts.push(format!("{:.2}", self.ratio));
        if self.fraction < 1.0 {
            parts.push(format!("fraction{:.3}", self.fraction));
        }
        if let Some(m) = self.max_context_length {
            parts.push(format!("max_context{m}"));
        }
        if self.query_aware {
            parts.push("query_aware".into());
        }
        if let Some(depths) = self.needle_depths {
            let list: Vec<String> = depths.iter().map(u32::to_string).collect();
            parts.push(format!("needle_depth{}", list.join("-")));
        }
        if let Some(q) = self.kv_quant {
            parts.push(q.to_string());
        }
        parts.join("__")
    }
}

/// A press expression as a directory name: spaces dropped, characters other than letters,
/// digits and `_.,=()+-` replaced by `_` (the exact expression is kept in `config.yaml`).
pub fn press_dir_name(expression: Option<&str>) -> String {
    match expression {
        None => "no_press".into(),
        Some(e) => e
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.,=()+-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
    }
}

/// One answered row of a context group, as stored in `partial.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answered {
    /// Index of the row in the (subsampled) dataset.
    pub row: usize,
    /// The generated answer.
    pub predicted_answer: String,
    /// Compression ratio realised on the cache: 1 − bytes held / bytes uncompressed.
    pub compression_ratio: f64,
}

/// One results directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The directory.
    pub path: PathBuf,
}

impl RunDir {
    /// The directory `name` under `output`.
    pub fn new(output: &Path, name: &str) -> Self {
        Self {
            path: output.join(name),
        }
    }

    fn predictions(&self) -> PathBuf {
        self.path.join("predictions.csv")
    }

    fn metrics(&self) -> PathBuf {
        self.path.join("metrics.json")
    }

    fn partial(&self) -> PathBuf {
        self.path.join("partial.jsonl")
    }

    /// Whether the run is complete (kvpress skips it then).
    pub fn is_complete(&self) -> bool {
        self.predictions().exists() && self.metrics().exists()
    }

    /// Removes every result of the run (for `--overwrite`).
    pub fn clear(&self) -> anyhow::Result<()> {
        if self.path.exists() {
            fs::remove_dir_all(&self.path)
                .with_context(|| format!("removing {}", self.path.display()))?;
        }
        Ok(())
    }

    /// The rows answered by an earlier, interrupted run, by row index. A partial file written
    /// for another dataset (a row index beyond `rows`) is an error.
    pub fn answered(&self, rows: usize) -> anyhow::Result<BTreeMap<usize, Answered>> {
        let path = self.partial();
        let mut done = BTreeMap::new();
        let Ok(text) = fs::read_to_string(&path) else {
            return Ok(done);
        };
        for (i, line) in text.lines().enumerate() {
            // a line cut by the interruption is simply not done
            let Ok(group) = serde_json::from_str::<Vec<Answered>>(line) else {
                note_incomplete_line(&path, i);
                continue;
            };
            for a in group {
                if a.row >= rows {
                    anyhow::bail!(
                        "{} answers row {} but the dataset has {rows} rows: it was written for \
                         other data; rerun with --overwrite",
                        path.display(),
                        a.row
                    );
                }
                done.insert(a.row, a);
            }
        }
        Ok(done)
    }

    /// Appends one answered context group to `partial.jsonl`.
    pub fn append(&self, group: &[Answered]) -> anyhow::Result<()> {
        fs::create_dir_all(&self.path)
            .with_context(|| format!("creating {}", self.path.display()))?;
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.partial())
            .with_context(|| format!("opening {}", self.partial().display()))?;
        let line = serde_json::to_string(group)?;
        writeln!(file, "{line}").with_context(|| format!("writing {}", self.partial().display()))
    }

    /// Writes `predictions.csv` (each prediction with its realised compression ratio),
    /// `metrics.json` and `config.yaml`, and removes `partial.jsonl`.
    pub fn finish(
        &self,
        predictions: &[Prediction],
        ratios: &[f64],
        metrics: &Value,
        config: &Map<String, Value>,
    ) -> anyhow::Result<()> {
        fs::create_dir_all(&self.path)
            .with_context(|| format!("creating {}", self.path.display()))?;
        write_predictions(&self.predictions(), predictions, ratios)?;
        fs::write(
            self.metrics(),
            serde_json::to_string_pretty(metrics)? + "\n",
        )
        .with_context(|| format!("writing {}", self.metrics().display()))?;
        fs::write(self.path.join("config.yaml"), to_yaml(config))
            .with_context(|| format!("writing {}/config.yaml", self.path.display()))?;
        let _ = fs::remove_file(self.partial());
        Ok(())
    }
}

/// Says that a line of `partial.jsonl` was cut by an interruption (its rows are answered again).
fn note_incomplete_line(path: &Path, line: usize) {
    eprintln!(
        "note: {} line {} is incomplete (interrupted write); its rows are answered again",
        path.display(),
        line + 1
    );
}

/// Writes the predictions with their realised compression ratio, every column but the context.
fn write_predictions(path: &Path, rows: &[Prediction], ratios: &[f64]) -> anyhow::Result<()> {
    let extra: BTreeSet<&str> = rows
        .iter()
        .flat_map(|p| p.sample.extra.keys().map(String::as_str))
        .collect();
    let mut writer =
        csv::Writer::from_path(path).with_context(|| format!("writing {}", path.display()))?;
    let mut header: Vec<&str> = FIXED_COLUMNS.to_vec();
    header.extend(extra.iter().copied());
    header.extend(["predicted_answer", "compression_ratio"]);
    writer.write_record(&header)?;
    for (p, ratio) in rows.iter().zip(ratios) {
        let s = &p.sample;
        let mut record = vec![
            s.question.clone(),
            s.answer_prefix.clone(),
            serde_json::to_string(&s.answers)?,
            s.task.clone(),
            s.max_new_tokens.to_string(),
        ];
        for key in &extra {
            record.push(match s.extra.get(*key) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(text)) => text.clone(),
                Some(other) => other.to_string(),
            });
        }
        record.push(p.predicted_answer.clone());
        record.push(format!("{ratio:.4}"));
        writer.write_record(&record)?;
    }
    writer.flush()?;
    Ok(())
}

/// The predictions of a finished run (read back from `predictions.csv`).
pub fn read_predictions(dir: &Path) -> anyhow::Result<Vec<Prediction>> {
    let path = dir.join("predictions.csv");
    let rows = dataset::read_rows(&path)?;
    rows.into_iter()
        .enumerate()
        .map(|(i, mut row)| {
            row.entry("context")
                .or_insert_with(|| Value::String(String::new()));
            let predicted = match row.remove("predicted_answer") {
                Some(Value::String(s)) => s,
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            row.remove("compression_ratio");
            let sample: Sample = dataset::sample_from_row(row)
                .map_err(|e| anyhow::anyhow!("{} row {}: {e}", path.display(), i + 1))?;
            Ok(Prediction {
                sample,
                predicted_answer: predicted,
            })
        })
        .collect()
}

/// A flat map as YAML: each value written as JSON, which YAML 1.2 reads as the same value.
fn to_yaml(config: &Map<String, Value>) -> String {
    config.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

/// Reads a flat `key: value` YAML file as written by [`to_yaml`] or by kvpress's
/// `yaml.dump` of scalars (plain scalars become numbers, booleans, null or text).
pub fn read_config(path: &Path) -> anyhow::Result<Map<String, Value>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut map = Map::new();
    for line in text.lines() {
        if line.starts_with([' ', '-', '#']) || line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let parsed = serde_json::from_str::<Value>(value).unwrap_or_else(|_| match value {
            "" | "null" | "~" => Value::Null,
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            other => Value::String(other.trim_matches(['\'', '"']).to_string()),
        });
        map.insert(key.trim().to_string(), parsed);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn directory_names_follow_kvpress() {
        let name = RunName {
            dataset: "ruler",
            data_dir: Some("4096"),
            model: "HuggingFaceTB/SmolLM2-135M-Instruct",
            press: "knorm",
            ratio: 0.5,
            fraction: 1.0,
            max_context_length: None,
            query_aware: false,
            needle_depths: None,
            kv_quant: None,
        };
        assert_eq!(
            name.dir_name(),
            "ruler__4096__HuggingFaceTB--SmolLM2-135M-Instruct__knorm__0.50"
        );
        let name = RunName {
            dataset: "needle_in_haystack",
            data_dir: None,
            fraction: 0.25,
            max_context_length: Some(2048),
            query_aware: true,
            needle_depths: Some(&[0, 50]),
            kv_quant: None,
            ..name
        };
        assert_eq!(
            name.dir_name(),
            "needle_in_haystack__HuggingFaceTB--SmolLM2-135M-Instruct__knorm__0.50__\
             fraction0.250__max_context2048__query_aware__needle_depth0-50"
        );
        let quantized = RunName {
            kv_quant: Some("kv_int4_g64_r128"),
            ..name
        };
        assert!(
            quantized
                .dir_name()
                .ends_with("needle_depth0-50__kv_int4_g64_r128")
        );
        assert_eq!(
            press_dir_name(Some("adakv(expected_attention(epsilon = 0.01))")),
            "adakv(expected_attention(epsilon=0.01))"
        );
        assert_eq!(press_dir_name(Some("a/b\"c")), "a_b_c");
        assert_eq!(press_dir_name(None), "no_press");
    }

    #[test]
    fn partial_results_resume_and_finish() {
        let tmp = tempfile::tempdir().expect("tmp");
        let run = RunDir::new(tmp.path(), "r");
        assert!(run.answered(3).expect("none").is_empty());
        let a = |row| Answered {
            row,
            predicted_answer: format!("p{row}"),
            compression_ratio: 0.5,
        };
        run.append(&[a(0), a(2)]).expect("append");
        // an interrupted write leaves half a line
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(run.partial())
            .expect("open");
        write!(f, "[{{\"row\":1,\"pred").expect("write");
        let done = run.answered(3).expect("read");
        assert_eq!(done.keys().copied().collect::<Vec<_>>(), vec![0, 2]);
        assert!(run.answered(2).is_err(), "row 2 is beyond a 2-row dataset");
        assert!(!run.is_complete());

        let sample = Sample {
            context: "long".into(),
            question: "q, with comma".into(),
            answer_prefix: "A:".into(),
            answers: vec!["x".into(), "y\"z".into()],
            task: "t".into(),
            max_new_tokens: 9,
            extra: [("length".to_string(), json!(4096))].into_iter().collect(),
        };
        let prediction = Prediction {
            sample: sample.clone(),
            predicted_answer: "x and y\nz".into(),
        };
        let mut config = Map::new();
        config.insert("press".into(), json!("snapkv(window_size=64)"));
        config.insert("compression_ratio".into(), json!(0.5));
        config.insert("max_context_length".into(), Value::Null);
        run.finish(
            &[prediction],
            &[0.5],
            &json!({"t": {"string_match": 50.0}}),
            &config,
        )
        .expect("finish");
        assert!(run.is_complete());
        assert!(!run.partial().exists());
        let back = read_predictions(&run.path).expect("read back");
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].predicted_answer, "x and y\nz");
        assert_eq!(back[0].sample.answers, sample.answers);
        assert_eq!(back[0].sample.question, sample.question);
        assert_eq!(back[0].sample.extra["length"], json!("4096"));
        let read = read_config(&run.path.join("config.yaml")).expect("config");
        assert_eq!(read, config);
    }

    #[test]
    fn kvpress_yaml_scalars() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("config.yaml");
        fs::write(
            &path,
            "dataset: ruler\ndata_dir: '4096'\ncompression_ratio: 0.25\nquery_aware: false\nmodel_kwargs:\n  dtype: auto\nmax_new_tokens: null\n",
        )
        .expect("write");
        let c = read_config(&path).expect("read");
        assert_eq!(c["dataset"], json!("ruler"));
        assert_eq!(c["data_dir"], json!("4096"));
        assert_eq!(c["compression_ratio"], json!(0.25));
        assert_eq!(c["query_aware"], json!(false));
        assert_eq!(c["max_new_tokens"], Value::Null);
        assert!(!c.contains_key("dtype"));
    }
}
