//! Decoding-time compression on the default model: the cache band of `decoding`, the fraction
//! kept by `compression_ratio_decoding`, and the pipeline's one-question rule.

mod common;

use std::sync::Mutex;

use kvpress_core::error::Result;
use kvpress_core::{LayerCache, LayerInputs, Press};
use kvpress_models::ModelFiles;
use kvpress_models::generate::{GenerationOptions, continue_generation};
use kvpress_models::llama::ForwardOptions;
use kvpress_models::pipeline::{Pipeline, Request};
use kvpress_presses::registry::build;

use common::B;

/// Records, after every decoding forward, each layer's cache length and last position.
struct Watch {
    inner: Box<dyn Press<B>>,
    seen: Mutex<Vec<(usize, usize, usize)>>,
}

impl Press<B> for Watch {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        self.inner.compress(inputs, cache)
    }

    fn compress_decoding(
        &self,
        inputs: &LayerInputs<'_, B>,
        cache: &mut LayerCache<B>,
    ) -> Result<()> {
        self.inner.compress_decoding(inputs, cache)?;
        let last = inputs.positions.iter().copied().max().unwrap_or(0);
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((inputs.layer, last, cache.len()));
        }
        Ok(())
    }
}

/// Prefills the golden context, then decodes `steps` tokens after the golden question with
/// `expr` as the press; returns (layer, last position, cache length) after every forward.
fn decode(expr: &str, ratio: Option<f64>, steps: usize) -> (usize, Vec<(usize, usize, usize)>) {
    let files = ModelFiles::open(&common::default_model_dir()).expect("open");
    let model = files.load_model::<B>(&Default::default()).expect("load");
    let golden = common::golden("presses_r0.5.json");
    let pipe = Pipeline::new(&model, &files.tokenizer, files.eos_token_ids.clone());
    let request = Request::new(golden["context"].as_str().expect("context"))
        .question(golden["question"].as_str().expect("question"));
    let prompt = pipe.prompt(&request).expect("prompt");
    let watch = Watch {
        inner: build::<B>(expr, ratio).expect("press"),
        seen: Mutex::new(Vec::new()),
    };
    let mut cache = pipe
        .prefill(&prompt.context_ids, Some(&watch))
        .expect("prefill");
    let n = prompt.context_ids.len();
    let options = GenerationOptions {
        max_new_tokens: steps,
        ignore_eos: true,
        ..Default::default()
    };
    continue_generation(
        &model,
        &mut cache,
        &prompt.question_ids[0],
        n,
        &options,
        &ForwardOptions {
            press: Some(&watch),
            ..Default::default()
        },
        false,
    )
    .expect("generate");
    let seen = watch.seen.lock().expect("lock").clone();
    (n, seen)
}

#[test]
fn decoding_keeps_every_layer_between_target_and_target_plus_interval() {
    check_band(
        "decoding(knorm, compression_interval=16, target_size=64)",
        200,
    );
}

#[test]
fn cam_keeps_the_same_band_while_merging() {
    check_band("cam(knorm, compression_interval=16, target_size=64)", 60);
}

/// Through `steps` generated tokens, every layer holds 64..=79 entries once compression began.
fn check_band(expr: &str, steps: usize) {
    let (n, seen) = decode(expr, None, steps);
    assert_eq!(seen.len(), 30 * steps, "one record per layer and forward");
    for &(layer, last, len) in &seen {
        let forward = last + 1 - (n + 18); // 0: the question, then one per generated token
        if forward < 15 {
            // before the first compression the context and the new tokens accumulate
            assert_eq!(len, n + 18 + forward, "layer {layer} forward {forward}");
        } else {
            assert!(
                (64..=79).contains(&len),
                "layer {layer} forward {forward}: {len}"
            );
        }
    }
}

#[test]
fn compression_ratio_decoding_keeps_half_of_all_tokens_seen() {
    let (_, seen) = decode(
        "compression_ratio_decoding(knorm, compression_interval=8)",
        Some(0.5),
        40,
    );
    let mut compressions = 0;
    for layer in 0..30 {
        let own: Vec<_> = seen.iter().filter(|s| s.0 == layer).collect();
        for w in own.windows(2) {
            let ((_, _, before), (_, last, after)) = (*w[0], *w[1]);
            if after < before {
                compressions += 1;
                // ⌊(p + 1) · (1 − 0.5)⌋ with p the last position seen
                assert_eq!(
                    after,
                    ((last + 1) as f64 * 0.5) as usize,
                    "layer {layer} at position {last}"
                );
            }
        }
    }
    assert!(compressions >= 30 * 4, "{compressions} compressions");
}

#[test]
fn decoding_presses_answer_one_question_per_context() {
    let files = ModelFiles::open(&common::default_model_dir()).expect("open");
    let model = files.load_model::<B>(&Default::default()).expect("load");
    let pipe = Pipeline::new(&model, &files.tokenizer, files.eos_token_ids.clone());
    let golden = common::golden("presses_r0.5.json");
    let press = build::<B>(
        "prefill_decoding(snapkv, decoding(knorm, compression_interval=4, target_size=600))",
        Some(0.5),
    )
    .expect("press");
    let request = Request::new(golden["context"].as_str().expect("context"))
        .question(golden["question"].as_str().expect("question"))
        .max_new_tokens(12);
    let out = pipe
        .run(&request, Some(press.as_ref()))
        .expect("one question");
    assert!(!out.answers[0].is_empty());
    // the context as SnapKV left it (decoding then works on top of it)
    assert!(out.cache_lengths.iter().all(|&l| l == 643));
    let two = request.clone().question("And again?");
    let err = pipe
        .run(&two, Some(press.as_ref()))
        .expect_err("two questions");
    assert!(err.to_string().contains("one question"), "{err}");
}
