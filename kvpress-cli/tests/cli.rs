//! The `kvpress` binary end to end: JSON outputs against the reference on the default model,
//! and clear errors with a non-zero exit status.

mod common;

use std::path::PathBuf;

use common::{json_of, kvpress};

fn golden(file: &str) -> serde_json::Value {
    let dir = std::env::var_os("KVPRESS_GOLDEN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden"));
    let text = std::fs::read_to_string(dir.join(file)).expect("golden file");
    serde_json::from_str(&text).expect("json")
}

fn golden_short_prompt() -> serde_json::Value {
    golden("model.json")["prompts"][0].clone()
}

/// The default model's path and the golden press context written to a file.
fn press_setup() -> (String, tempfile::TempDir, serde_json::Value) {
    let model = json_of(&kvpress(&["fetch", "--json"]))["path"]
        .as_str()
        .expect("path")
        .to_string();
    let presses = golden("presses_r0.5.json");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("context.txt"),
        presses["context"].as_str().expect("context"),
    )
    .expect("write");
    (model, dir, presses)
}

/// Positions set in a kvpress bitmask (byte j, bit b = position 8j + b).
fn positions_of(hex: &str) -> Vec<u64> {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    (0..bytes.len() as u64 * 8)
        .filter(|p| bytes[*p as usize / 8] >> (p % 8) & 1 == 1)
        .collect()
}

#[test]
fn generate_answers_from_a_head_wise_compressed_context_as_kvpress() {
    let (model, dir, golden) = press_setup();
    let context = dir.path().join("context.txt");
    let out = json_of(&kvpress(&[
        "--model",
        &model,
        "generate",
        "--context-file",
        context.to_str().expect("utf-8"),
        "--question",
        golden["question"].as_str().expect("question"),
        "--press",
        "adakv(expected_attention)",
        "--compression-ratio",
        "0.5",
        "--max-new-tokens",
        "24",
        "--json",
    ]));
    let want = &golden["results"]["AdaKVPress(ExpectedAttentionPress)"]["0.5"];
    assert_eq!(out["answers"][0], want["answer"]);
    assert_eq!(out["context_tokens"], 1287);
    // 643 entries per head on average are held, nothing more
    let bytes = out["cache"]["bytes"].as_f64().expect("bytes");
    let full = out["cache"]["bytes_uncompressed"].as_f64().expect("bytes");
    assert!(
        (bytes / full - 643.0 / 1287.0).abs() < 1e-6,
        "{bytes} / {full}"
    );
    let per_head = out["cache"]["tokens_per_head"]
        .as_array()
        .expect("per head");
    assert_eq!(per_head.len(), 30);
    for layer in per_head {
        let total: u64 = layer
            .as_array()
            .expect("heads")
            .iter()
            .map(|n| n.as_u64().expect("n"))
            .sum();
        assert_eq!(total, 3 * 643);
    }
    assert!(out["timings"]["press_seconds"].as_f64().expect("t") > 0.0);
}

#[test]
fn a_quantized_cache_holds_its_codes_and_answers() {
    let (model, dir, golden) = press_setup();
    let context = dir.path().join("context.txt");
    let context = context.to_str().expect("utf-8");
    let question = golden["question"].as_str().expect("question");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--model",
            &model,
            "generate",
            "--context-file",
            context,
            "--question",
            question,
            "--press",
            "knorm",
            "--compression-ratio",
            "0.5",
            "--max-new-tokens",
            "24",
        ];
        args.extend_from_slice(extra);
        kvpress(&args)
    };
    let out = json_of(&run(&["--kv-quant", "int8", "--json"]));
    assert_eq!(
        out["answers"][0],
        golden["results"]["KnormPress"]["0.5"]["answer"]
    );
    assert_eq!(out["kv_quant"]["format"], "int8");
    // 643 entries per head: the last 128 in f32, the others as 64 one-byte codes and an f16
    // scale and zero-point per 64 channels (256 bytes in f32)
    let bytes = out["cache"]["bytes"].as_f64().expect("bytes");
    let full = out["cache"]["bytes_uncompressed"].as_f64().expect("bytes");
    let expected = ((643.0 - 128.0) * 68.0 / 256.0 + 128.0) / 1287.0;
    assert!((bytes / full - expected).abs() < 1e-9, "{bytes} / {full}");

    for (extra, code, expected) in [
        (&["--kv-quant", "int3"][..], 2, "int3"),
        (
            &["--kv-quant", "int8", "--kv-group-size", "48"][..],
            1,
            "group",
        ),
        (&["--kv-group-size", "32"][..], 2, "--kv-quant"),
    ] {
        let out = run(extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{extra:?}: {err}");
        assert!(err.contains(expected), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn inspect_shows_the_positions_kvpress_keeps() {
    let (model, dir, golden) = press_setup();
    let context = dir.path().join("context.txt");
    let html = dir.path().join("kept.html");
    let out = json_of(&kvpress(&[
        "--model",
        &model,
        "inspect",
        "--context-file",
        context.to_str().expect("utf-8"),
        "--press",
        "snapkv",
        "--compression-ratio",
        "0.5",
        "--layers",
        "0,15,29",
        "--html",
        html.to_str().expect("utf-8"),
        "--json",
    ]));
    // the standalone picture embeds every layer's kept bitmasks, in kvpress's own format
    let page = std::fs::read_to_string(&html).expect("html written");
    let data = page
        .split("<script>window.KVPRESS_DATA = ")
        .nth(1)
        .and_then(|rest| rest.split(";</script>").next())
        .expect("embedded data");
    let data: serde_json::Value = serde_json::from_str(data).expect("json");
    assert_eq!(data["context_tokens"], 1287);
    assert_eq!(data["tokens"].as_array().expect("tokens").len(), 1287);
    let masks = &golden["results"]["SnapKVPress"]["0.5"]["layers"];
    for l in [0, 29] {
        for h in 0..3 {
            assert_eq!(
                positions_of(data["kept"][l][h].as_str().expect("hex")),
                positions_of(masks[l]["kept_mask_hex"][h].as_str().expect("hex")),
                "layer {l} head {h}"
            );
        }
    }
    assert_eq!(out["context_tokens"], 1287);
    let layers = out["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 3);
    let want = &golden["results"]["SnapKVPress"]["0.5"]["layers"];
    for entry in layers {
        let l = entry["layer"].as_u64().expect("layer") as usize;
        for (h, heads) in entry["heads"].as_array().expect("heads").iter().enumerate() {
            let got: Vec<u64> = heads
                .as_array()
                .expect("positions")
                .iter()
                .map(|p| p.as_u64().expect("p"))
                .collect();
            let theirs = positions_of(want[l]["kept_mask_hex"][h].as_str().expect("hex"));
            assert_eq!(got, theirs, "layer {l} head {h}");
        }
    }
}

#[test]
fn presses_lists_the_catalogue() {
    let out = json_of(&kvpress(&["presses", "--json"]));
    let names: Vec<&str> = out["presses"]
        .as_array()
        .expect("presses")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    for name in [
        "knorm",
        "snapkv",
        "expected_attention",
        "adakv",
        "streaming_llm",
        "tova",
        "observed_attention",
        "random",
        "keydiff",
        "pyramidkv",
        "think",
        "lagkv",
        "composed",
        "per_layer_compression",
        "chunk",
        "chunkkv",
        "block",
        "critical_kv",
        "critical_adakv",
        "key_rerotation",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
}

#[test]
fn bad_press_arguments_are_clear_errors() {
    let (model, dir, _) = press_setup();
    let context = dir.path().join("context.txt");
    let context = context.to_str().expect("utf-8");
    for (press, ratio, expected) in [
        ("snapk", "0.5", "unknown press `snapk`"),
        ("snapkv(window=3)", "0.5", "no parameter `window`"),
        ("snapkv(window_size=-1)", "0.5", "non-negative integer"),
        ("adakv(pyramidkv)", "0.5", "scorer is required"),
        ("knorm", "1.0", "must be in [0, 1)"),
        ("knorm", "-0.2", "must be in [0, 1)"),
        ("chunk(snapkv", "0.5", "end of the expression"),
    ] {
        let out = kvpress(&[
            "--model",
            &model,
            "generate",
            "--context-file",
            context,
            "--question",
            "Q",
            "--press",
            press,
            "--compression-ratio",
            ratio,
        ]);
        assert_eq!(out.status.code(), Some(1), "{press} @ {ratio}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{press} @ {ratio}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "  \n").expect("write");
    let out = kvpress(&[
        "--model",
        &model,
        "generate",
        "--context-file",
        empty.to_str().expect("utf-8"),
        "--question",
        "Q",
        "--press",
        "knorm",
        "--compression-ratio",
        "0.5",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
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

#[test]
fn every_press_runs_end_to_end_and_reports_its_real_ratio() {
    use kvpress_presses::registry::{CATALOGUE, Kind};
    let (model, dir, golden) = press_setup();
    let context = dir.path().join("context.txt");
    let context = context.to_str().expect("utf-8");
    for info in CATALOGUE {
        let expr = match (info.kind, info.name) {
            (Kind::Wrapper, "per_layer_compression") => {
                format!(
                    "{}(knorm, compression_ratios=[{}])",
                    info.name,
                    vec!["0.5"; 30].join(",")
                )
            }
            (Kind::Wrapper, "cam") => "cam(knorm, compression_interval=2, target_size=100)".into(),
            (Kind::Wrapper, "decoding") => {
                "decoding(knorm, compression_interval=2, target_size=100)".into()
            }
            (Kind::Wrapper, "lukv") => artefact(dir.path(), "lukv"),
            (Kind::Wrapper, "dms") => {
                "dms(streaming_llm, threshold=300, sliding_window_size=50)".into()
            }
            (_, "simlayerkv") => "simlayerkv(lazy_threshold=0.5, n_recent=100)".into(),
            (_, "qfilter" | "kvzap" | "fast_kvzip") => artefact(dir.path(), info.name),
            (_, "duo_attention") => {
                let heads = dir.path().join("heads.tsv");
                json_of(&kvpress(&[
                    "--model",
                    &model,
                    "calibrate",
                    "--target",
                    "duo-attention",
                    "--corpus",
                    context,
                    "--out",
                    heads.to_str().expect("utf-8"),
                    "--samples",
                    "3",
                    "--json",
                ]));
                let lines = std::fs::read_to_string(&heads).expect("heads");
                assert_eq!(lines.lines().count(), 30, "one line per layer");
                format!(
                    "duo_attention(path='{}', sink_size=16, recent_size=64)",
                    heads.display()
                )
            }
            (_, "expected_attention_stats") => {
                // statistics measured by `kvpress calibrate` on the context itself
                let stats = dir.path().join("stats.safetensors");
                let out = json_of(&kvpress(&[
                    "--model",
                    &model,
                    "calibrate",
                    "--corpus",
                    context,
                    "--out",
                    stats.to_str().expect("utf-8"),
                    "--samples",
                    "3",
                    "--json",
                ]));
                assert!(out["queries"].as_u64().expect("queries") > 100, "{out}");
                format!("expected_attention_stats(path='{}')", stats.display())
            }
            (Kind::Wrapper, _) => format!("{}(snapkv)", info.name),
            (_, "composed") => "composed(snapkv, think)".to_string(),
            (_, "prefill_decoding") => {
                "prefill_decoding(snapkv, decoding(knorm, target_size=100))".into()
            }
            _ => info.name.to_string(),
        };
        for ratio in ["0.25", "0.75"] {
            let question = golden["question"].as_str().expect("question");
            let mut args = vec![
                "--model",
                &model,
                "generate",
                "--context-file",
                context,
                "--max-context-length",
                "400",
                "--question",
                question,
                "--press",
                &expr,
                "--compression-ratio",
                ratio,
                "--max-new-tokens",
                "4",
                "--json",
            ];
            if info.name == "finch" {
                // the question is the window: compressed with the context
                args.push("--query-aware");
            }
            let out = json_of(&kvpress(&args));
            let n = out["context_tokens"].as_u64().expect("tokens");
            assert!(
                n == 400 || (info.name == "finch" && n > 400),
                "{expr}: {n} context tokens"
            );
            assert!(
                out["answers"][0].as_str().is_some_and(|a| !a.is_empty()),
                "{expr}"
            );
            let real = out["cache"]["compression_ratio"].as_f64().expect("ratio");
            let r: f64 = ratio.parse().expect("ratio");
            let expected = match info.name {
                // channel pruning and decoding-time presses leave the prefilled entries
                "think" | "decoding" | "compression_ratio_decoding" | "cam" => Some(0.0),
                "per_layer_compression" => Some(0.5),
                // streaming_llm scores entry i with i: positions 4..300 (not the sinks) leave
                // the window of 50 below the threshold
                "dms" => Some(296.0 / 400.0),
                // lazy layers are found by attention, not by the ratio
                "simlayerkv" => None,
                // round(90 heads · r) streaming heads keep 80 of 400 tokens
                "duo_attention" => Some((90.0 * r).round_ties_even() / 90.0 * (1.0 - 80.0 / 400.0)),
                _ => Some(r),
            };
            match expected {
                Some(e) => assert!(
                    (real - e).abs() < 0.05,
                    "{expr} @ {ratio}: real compression ratio {real}"
                ),
                None => assert!((0.0..1.0).contains(&real), "{expr}: {real}"),
            }
            eprintln!("{expr} @ {ratio}: real compression ratio {real:.3}");
        }
    }
}

/// A random artefact shaped for the default model (30 layers, 3 KV heads of 64, hidden 576)
/// and the expression that loads it.
fn artefact(dir: &std::path::Path, name: &str) -> String {
    use kvpress_core::artifacts::write_f32;
    let random =
        |n: usize| -> Vec<f32> { (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0).collect() };
    if name == "lukv" {
        // row t prunes (t + 1)/100 of every head: the real ratio follows --compression-ratio
        let rows: Vec<String> = (0..99)
            .map(|t| {
                let layer = format!(
                    "[{}]",
                    vec![format!("{}", (t + 1) as f64 / 100.0); 3].join(",")
                );
                format!("[{}]", vec![layer; 30].join(","))
            })
            .collect();
        let path = dir.join("lukv.json");
        std::fs::write(&path, format!("[{}]", rows.join(","))).expect("write curve");
        return format!("lukv(snapkv, path='{}')", path.display());
    }
    let path = dir.join(format!("{name}.safetensors"));
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = if name == "qfilter" {
        vec![("q_filters".into(), vec![30, 3, 64], random(30 * 3 * 64))]
    } else if name == "fast_kvzip" {
        // h_kv 3, g 3, m 8, S 2, hidden 576
        (0..30)
            .flat_map(|l| {
                let t = |n: &str, s: Vec<usize>| {
                    let len = s.iter().product();
                    (format!("layers.{l}.{n}"), s, random(len))
                };
                [
                    t("q_proj.weight", vec![72, 576]),
                    t("q_proj.bias", vec![72]),
                    t("q_norm.weight", vec![8]),
                    t("k_proj.weight", vec![24, 576]),
                    t("k_norm.weight", vec![8]),
                    t("k_base", vec![3, 2, 8]),
                    t("bias", vec![3, 3]),
                ]
            })
            .collect()
    } else {
        (0..30)
            .flat_map(|l| {
                [
                    (format!("layers.{l}.weight"), vec![3, 576], random(3 * 576)),
                    (format!("layers.{l}.bias"), vec![3], random(3)),
                ]
            })
            .collect()
    };
    write_f32(&path, &tensors).expect("write artefact");
    let extra = if name == "kvzap" {
        ", model_type='linear'"
    } else {
        ""
    };
    format!("{name}(path='{}'{extra})", path.display())
}
