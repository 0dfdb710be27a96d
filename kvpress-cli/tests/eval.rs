//! `kvpress dataset`, `kvpress eval` and `kvpress plot` end to end on the default model: a
//! generated RULER written as parquet in kvpress's column layout is read back and evaluated
//! with a sweep, the results follow kvpress's layout, finished runs are skipped, interrupted
//! ones resume, and the plots are drawn.

mod common;

use std::fs;
use std::path::Path;

use common::{json_of, kvpress};

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// kvpress's answers on generated RULER rows (`reference/eval_reference.py`).
fn kvpress_answers() -> serde_json::Value {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ruler_niah_single_1_2048.json");
    serde_json::from_str(&fs::read_to_string(file).expect("golden")).expect("json")
}

/// The rows of a results directory's predictions.csv, by column name.
fn predictions(dir: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = fs::read_to_string(dir.join("predictions.csv")).expect("csv");
    csv::Reader::from_reader(text.as_bytes())
        .deserialize()
        .map(|r| r.expect("row"))
        .collect()
}

fn stderr_of(args: &[&str]) -> String {
    let out = kvpress(args);
    assert!(!out.status.success(), "{args:?} should fail");
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn generated_ruler_is_deterministic_and_sized_in_model_tokens() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = |name: &str| dir.path().join(name);
    let generate = |out: &Path, seed: &str| {
        json_of(&kvpress(&[
            "dataset",
            "--dataset",
            "ruler",
            "--data-dir",
            "2048",
            "--samples",
            "2",
            "--seed",
            seed,
            "--out",
            path(out),
            "--json",
        ]))
    };
    assert_eq!(generate(&file("a.jsonl"), "7")["rows"], 22, "11 tasks × 2");
    generate(&file("b.jsonl"), "7");
    generate(&file("c.jsonl"), "8");
    let a = fs::read(file("a.jsonl")).expect("a");
    assert_eq!(
        a,
        fs::read(file("b.jsonl")).expect("b"),
        "same seed, same bytes"
    );
    assert_ne!(a, fs::read(file("c.jsonl")).expect("c"));

    // RULER's length rule in the model's own tokens: context + question + answer prefix +
    // max_new_tokens within 2% below the requested 2048, for every synthetic task but
    // niah_multikey_2/3, whose haystack is whole needle-shaped lines (~55 tokens for uuids):
    // those are within one line (2% from 4096 tokens on)
    for line in String::from_utf8(a).expect("utf-8").lines() {
        let row: serde_json::Value = serde_json::from_str(line).expect("row");
        let text = format!(
            "{}{}{}",
            row["context"].as_str().expect("context"),
            row["question"].as_str().expect("question"),
            row["answer_prefix"].as_str().expect("prefix")
        );
        let ids = json_of(&kvpress(&["tokenize", "--text", &text, "--json"]));
        let tokens = ids["ids"].as_array().expect("ids").len()
            + row["max_new_tokens"].as_u64().expect("n") as usize;
        let task = row["task"].as_str().expect("task");
        let lowest = if task.starts_with("niah_multikey_2") || task.starts_with("niah_multikey_3") {
            2048 - 60
        } else {
            2008
        };
        assert!(
            (lowest..=2048).contains(&tokens),
            "{} row has {tokens} tokens",
            row["task"]
        );
        for answer in row["answer"].as_array().expect("answers") {
            assert!(
                row["context"]
                    .as_str()
                    .expect("context")
                    .contains(answer.as_str().expect("answer"))
            );
        }
    }
}

#[test]
fn parquet_sweep_results_resume_and_plot() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("ruler.parquet");
    let results = dir.path().join("results");
    json_of(&kvpress(&[
        "dataset",
        "--dataset",
        "ruler",
        "--data-dir",
        "512",
        "--task",
        "niah_single_1",
        "--samples",
        "2",
        "--out",
        path(&data),
        "--json",
    ]));
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--dataset",
            "ruler",
            "--data-file",
            path(&data),
            "--data-dir",
            "512",
            "--output-dir",
            path(&results),
            "--max-new-tokens",
            "12",
            "--json",
        ];
        args.extend_from_slice(extra);
        kvpress(&args)
    };
    let out = json_of(&eval(&[
        "--press",
        "no_press",
        "--press",
        "knorm",
        "--press",
        "adakv(snapkv)",
        "--compression-ratio",
        "0.25",
        "0.75",
    ]));
    let runs = out["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 5, "no press once, two presses at two ratios");
    let model = "SmolLM2-135M-Instruct";
    let run_dir =
        |press: &str, ratio: &str| results.join(format!("ruler__512__{model}__{press}__{ratio}"));
    for (press, ratio) in [
        ("no_press", "0.00"),
        ("knorm", "0.25"),
        ("knorm", "0.75"),
        ("adakv(snapkv)", "0.25"),
        ("adakv(snapkv)", "0.75"),
    ] {
        let d = run_dir(press, ratio);
        for f in ["predictions.csv", "metrics.json", "config.yaml"] {
            assert!(d.join(f).exists(), "{} lacks {f}", d.display());
        }
        let metrics: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(d.join("metrics.json")).expect("metrics"))
                .expect("json");
        let score = metrics["niah_single_1"]["string_match"]
            .as_f64()
            .expect("string_match");
        assert!((0.0..=100.0).contains(&score));
        let config = fs::read_to_string(d.join("config.yaml")).expect("config");
        if press != "no_press" {
            assert!(config.contains(&format!("press: \"{press}\"")), "{config}");
        }
    }
    // the model finds the needle of a short RULER context without compression
    assert_eq!(runs[0]["press"], serde_json::Value::Null);
    assert!(
        runs[0]["score"].as_f64().expect("score") >= 50.0,
        "{}",
        runs[0]
    );
    // the realised ratio is measured on the cache
    let realised = runs[2]["realised_compression_ratio"]
        .as_f64()
        .expect("ratio");
    assert!((realised - 0.75).abs() < 0.02, "{realised}");
    let predictions =
        fs::read_to_string(run_dir("knorm", "0.25").join("predictions.csv")).expect("csv");
    let header = predictions.lines().next().expect("header");
    assert_eq!(
        header,
        "question,answer_prefix,answer,task,max_new_tokens,predicted_answer,compression_ratio"
    );

    // a finished run is skipped; an interrupted one resumes from partial.jsonl
    let resumed = run_dir("knorm", "0.25");
    for f in ["predictions.csv", "metrics.json", "config.yaml"] {
        fs::remove_file(resumed.join(f)).expect("remove");
    }
    fs::write(
        resumed.join("partial.jsonl"),
        "[{\"row\":0,\"predicted_answer\":\"RESUMED\",\"compression_ratio\":0.25}]\n[{\"row\":1,\"pre",
    )
    .expect("partial");
    let again = eval(&["--press", "knorm", "--compression-ratio", "0.25", "0.75"]);
    let stderr = String::from_utf8_lossy(&again.stderr).into_owned();
    json_of(&again);
    assert!(stderr.contains("skipping"), "{stderr}");
    assert!(stderr.contains("1 still to answer"), "{stderr}");
    let predictions = fs::read_to_string(resumed.join("predictions.csv")).expect("csv");
    assert!(predictions.contains("RESUMED"), "{predictions}");
    assert_eq!(predictions.lines().count(), 3);
    assert!(!resumed.join("partial.jsonl").exists());

    // plots: score against ratio, PNG and SVG
    let plotted = json_of(&kvpress(&["plot", "--results", path(&results), "--json"]));
    let files: Vec<&str> = plotted["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f.as_str().expect("file"))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    let png = fs::read(files.iter().find(|f| f.ends_with(".png")).expect("png")).expect("read");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let svg =
        fs::read_to_string(files.iter().find(|f| f.ends_with(".svg")).expect("svg")).expect("read");
    assert!(svg.contains("<svg") && svg.contains("knorm") && svg.contains("adakv(snapkv)"));
}

#[test]
fn needle_in_a_haystack_and_its_heat_map() {
    let dir = tempfile::tempdir().expect("tmp");
    let results = dir.path().join("results");
    let out = json_of(&kvpress(&[
        "eval",
        "--dataset",
        "needle_in_haystack",
        "--max-context-length",
        "400",
        "--needle-depth",
        "0",
        "100",
        "--max-new-tokens",
        "24",
        "--output-dir",
        path(&results),
        "--json",
    ]));
    let run = &out["runs"][0];
    let score = run["score"].as_f64().expect("score");
    assert!((0.0..=100.0).contains(&score));
    let metrics = &run["metrics"];
    assert_eq!(metrics.as_array().expect("one entry per row").len(), 2);
    let plotted = json_of(&kvpress(&["plot", "--results", path(&results), "--json"]));
    let files = plotted["files"].as_array().expect("files");
    assert!(
        files
            .iter()
            .any(|f| f.as_str().expect("file").contains("needle_in_haystack__")),
        "{files:?}"
    );
}

#[test]
fn bad_evaluation_options_are_clear_errors() {
    let e = stderr_of(&["eval", "--dataset", "rular"]);
    assert!(
        e.contains("unknown dataset \"rular\"") && e.contains("ruler"),
        "{e}"
    );
    let e = stderr_of(&["eval", "--dataset", "longbench"]);
    assert!(e.contains("--data-file"), "{e}");
    let e = stderr_of(&["eval", "--dataset", "ruler", "--fraction", "0"]);
    assert!(e.contains("--fraction"), "{e}");
    let e = stderr_of(&[
        "eval",
        "--dataset",
        "ruler",
        "--press",
        "knorm",
        "--compression-ratio",
        "1.5",
    ]);
    assert!(e.contains("[0, 1)") && e.contains("1.5"), "{e}");
    let e = stderr_of(&[
        "eval",
        "--dataset",
        "ruler",
        "--press",
        "knorm",
        "--compression-ratio",
        "-0.2",
    ]);
    assert!(e.contains("-0.2"), "{e}");
    let e = stderr_of(&["eval", "--dataset", "ruler", "--press", "knorrm"]);
    assert!(e.contains("knorrm"), "{e}");
    let e = stderr_of(&["eval", "--dataset", "needle_in_haystack"]);
    assert!(e.contains("--max-context-length"), "{e}");
    let e = stderr_of(&[
        "eval",
        "--dataset",
        "ruler",
        "--data-dir",
        "lots",
        "--task",
        "niah_single_1",
    ]);
    assert!(e.contains("context length"), "{e}");
    let e = stderr_of(&["eval", "--dataset", "ruler", "--task", "niah_single_9"]);
    assert!(e.contains("niah_single_9"), "{e}");
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.parquet");
    fs::write(&bad, b"PAR1 truncated").expect("write");
    let e = stderr_of(&["eval", "--dataset", "longbench", "--data-file", path(&bad)]);
    assert!(e.contains("bad.parquet"), "{e}");
    let e = stderr_of(&["plot", "--results", path(dir.path())]);
    assert!(e.contains("no finished results"), "{e}");
}

/// The sweep's answers on generated RULER rows equal kvpress's: kvpress 0.5.5's pipeline run
/// on the same rows (exported with `kvpress dataset`) by `reference/eval_reference.py`, for
/// no press and knorm, snapkv, expected_attention, streaming_llm, tova at 0.25/0.5/0.75.
#[test]
fn ruler_sweep_answers_equal_kvpress() {
    let golden = kvpress_answers();
    let dir = tempfile::tempdir().expect("tmp");
    let results = dir.path().join("results");
    let mut args = vec![
        "eval",
        "--dataset",
        "ruler",
        "--data-dir",
        "2048",
        "--task",
        "niah_single_1",
        "--samples",
        "2",
        "--output-dir",
        path(&results),
        "--json",
        "--press",
        "no_press",
    ];
    for p in [
        "knorm",
        "snapkv",
        "expected_attention",
        "streaming_llm",
        "tova",
    ] {
        args.extend(["--press", p]);
    }
    args.extend(["--compression-ratio", "0.25", "0.5", "0.75"]);
    let out = json_of(&kvpress(&args));
    let runs = out["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 16);
    let expected = golden["answers"].as_object().expect("answers");
    for run in runs {
        let key = format!(
            "{}@{}",
            run["press"].as_str().unwrap_or("no_press"),
            run["compression_ratio"].as_f64().expect("ratio")
        );
        let got: Vec<(String, String)> =
            predictions(Path::new(run["results"].as_str().expect("dir")))
                .into_iter()
                .map(|r| (r["question"].clone(), r["predicted_answer"].clone()))
                .collect();
        let questions: Vec<&str> = golden["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["question"].as_str().expect("question"))
            .collect();
        let want: Vec<&str> = expected[&key]
            .as_array()
            .unwrap_or_else(|| panic!("no kvpress answers for {key}"))
            .iter()
            .map(|a| a.as_str().expect("answer"))
            .collect();
        assert_eq!(
            got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(),
            questions,
            "the generated rows are the ones kvpress answered"
        );
        assert_eq!(
            got.iter().map(|g| g.1.as_str()).collect::<Vec<_>>(),
            want,
            "{key}"
        );
    }
}

/// Query-aware evaluation (the question compressed with its context) gives kvpress's answers.
#[test]
fn query_aware_answers_equal_kvpress() {
    let golden = kvpress_answers();
    let golden = &golden["query_aware_1024"];
    let dir = tempfile::tempdir().expect("tmp");
    let results = dir.path().join("results");
    let out = json_of(&kvpress(&[
        "eval",
        "--dataset",
        "ruler",
        "--data-dir",
        "1024",
        "--task",
        "niah_single_1",
        "--samples",
        "3",
        "--press",
        "snapkv",
        "--compression-ratio",
        "0.5",
        "--query-aware",
        "--output-dir",
        path(&results),
        "--json",
    ]));
    let dir = Path::new(out["runs"][0]["results"].as_str().expect("dir"));
    assert!(dir.ends_with("ruler__1024__SmolLM2-135M-Instruct__snapkv__0.50__query_aware"));
    let rows = predictions(dir);
    let questions: Vec<&str> = rows.iter().map(|r| r["question"].as_str()).collect();
    let answers: Vec<&str> = rows
        .iter()
        .map(|r| r["predicted_answer"].as_str())
        .collect();
    let want = |k: &str| -> Vec<&str> {
        golden[k]
            .as_array()
            .expect(k)
            .iter()
            .map(|v| v.as_str().expect("text"))
            .collect()
    };
    assert_eq!(questions, want("questions"));
    assert_eq!(
        answers,
        golden["answers"]["snapkv@0.5"]
            .as_array()
            .expect("answers")
            .iter()
            .map(|v| v.as_str().expect("text"))
            .collect::<Vec<_>>()
    );
}
