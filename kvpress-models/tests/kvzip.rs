//! KVzip on the default model: the golden context compressed at ratio 0.5 keeps half of all
//! entries (over all layers and heads together), the bytes drop with them, and the golden
//! question is answered.

mod common;

use kvpress_models::ModelFiles;
use kvpress_models::pipeline::{Pipeline, Request};
use kvpress_presses::registry::build;

use common::B;

fn check(expr: &str) {
    let files = ModelFiles::open(&common::default_model_dir()).expect("open");
    let model = files.load_model::<B>(&Default::default()).expect("load");
    let golden = common::golden("presses_r0.5.json");
    let pipe = Pipeline::new(&model, &files.tokenizer, files.eos_token_ids.clone());
    let request = Request::new(golden["context"].as_str().expect("context"))
        .question(golden["question"].as_str().expect("question"))
        .max_new_tokens(24);
    let press = build::<B>(expr, Some(0.5)).expect("press");
    let out = pipe.run(&request, Some(press.as_ref())).expect("run");
    let n = out.context_tokens;
    let total = 30 * 3 * n;
    let kept: usize = out.tokens_per_head.iter().flatten().sum();
    let share = kept as f64 / total as f64;
    assert!(
        (share - 0.5).abs() <= 0.005,
        "{expr}: kept {kept} of {total}"
    );
    let bytes = out.cache_bytes as f64 / out.uncompressed_bytes as f64;
    assert!((bytes - share).abs() < 1e-6, "{expr}: bytes ratio {bytes}");
    assert!(!out.answers[0].is_empty(), "{expr}: no answer");
    eprintln!(
        "{expr}: kept {share:.4}, answer {:?}, prefill {:.2} s of which kvzip {:.2} s",
        out.answers[0], out.prefill_seconds, out.press_seconds
    );
}

#[test]
fn kvzip_keeps_half_of_all_entries_and_answers() {
    check("kvzip");
}

#[test]
fn layerwise_kvzip_plus_keeps_half_of_every_layer() {
    check("kvzip(layerwise=true, kvzip_plus_normalization=true)");
}
