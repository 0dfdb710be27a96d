//! The `kvpress` binary end to end: JSON outputs against the reference on the default model,
//! and clear errors with a non-zero exit status.

use std::path::PathBuf;
use std::process::{Command, Output};

fn kvpress(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvpress"))
        .args(args)
        .output()
        .expect("run kvpress")
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "kvpress failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

fn golden_short_prompt() -> serde_json::Value {
    let dir = std::env::var_os("KVPRESS_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"));
    let text = std::fs::read_to_string(dir.join("model.json")).expect("golden model.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["prompts"][0].clone()
}

#[test]
fn tokenize_and_next_token_match_the_reference() {
    let golden = golden_short_prompt();
    let model = json_of(&kvpress(&["fetch", "--json"]))["path"]
        .as_str()
        .expect("path")
        .to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let prompt = dir.path().join("prompt.txt");
    std::fs::write(&prompt, golden["text"].as_str().expect("text")).expect("write");
    let prompt = prompt.to_str().expect("utf-8 path");

    let tok = json_of(&kvpress(&[
        "--model",
        &model,
        "tokenize",
        "--text-file",
        prompt,
        "--chat",
        "--json",
    ]));
    assert_eq!(tok["ids"], golden["ids_chat"]);
    assert_eq!(tok["text"], golden["chat_text"]);

    let next = json_of(&kvpress(&[
        "--model",
        &model,
        "next-token",
        "--text-file",
        prompt,
        "--chat",
        "--top-k",
        "5",
        "--greedy",
        "20",
        "--json",
    ]));
    let want = &golden["results"]["sdpa"]["chat"];
    assert_eq!(next["ids"], golden["ids_chat"]);
    assert_eq!(next["greedy"], want["greedy20_ids"]);
    let top = next["top"].as_array().expect("top");
    assert_eq!(top.len(), 5);
    for (i, entry) in top.iter().enumerate() {
        assert_eq!(entry["id"], want["top5"]["ids"][i]);
        let got = entry["logit"].as_f64().expect("logit");
        let expected = want["top5"]["values"][i].as_f64().expect("value");
        assert!(
            (got - expected).abs() <= 1e-3,
            "logit {i}: {got} vs {expected}"
        );
    }
}

#[test]
fn a_missing_model_is_a_clear_error() {
    let out = kvpress(&[
        "--model",
        "/nonexistent/model-dir",
        "tokenize",
        "--text",
        "hi",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/model-dir") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn a_bad_gguf_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.gguf");
    std::fs::write(&path, b"NOPE and then some bytes").expect("write");
    let out = kvpress(&[
        "--model",
        path.to_str().expect("utf-8"),
        "generate",
        "--text",
        "hi",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a GGUF file"), "{err}");
}

#[test]
fn text_arguments_are_required() {
    let out = kvpress(&["tokenize"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--text-file") || err.contains("--text"),
        "{err}"
    );
}
