//! The quantized cache on the default model: the pass-key context of
//! `../shared/golden/presses_r0.5.json` answered from int8 and int4 caches, first-token logits
//! against the f32 cache, and quantization combined with presses (prefill, shared prefill and
//! decoding-time).

mod common;

use kvpress_core::{KvBits, KvQuantization, Press};
use kvpress_models::ModelFiles;
use kvpress_models::generate::{GenerationOptions, continue_generation};
use kvpress_models::llama::ForwardOptions;
use kvpress_models::pipeline::{Pipeline, Request};
use kvpress_presses::registry::build;

use common::B;

/// Logits after the question, from a context prefilled into the pipeline's cache.
fn first_token_logits(
    pipe: &Pipeline<'_, B>,
    model: &kvpress_models::Llama<B>,
    request: &Request,
) -> Vec<f32> {
    let prompt = pipe.prompt(request).expect("prompt");
    let mut cache = pipe.prefill(&prompt.context_ids, None).expect("prefill");
    let start = cache.next_position();
    let options = GenerationOptions {
        max_new_tokens: 0,
        ..Default::default()
    };
    continue_generation(
        model,
        &mut cache,
        &prompt.question_ids[0],
        start,
        &options,
        &ForwardOptions::default(),
        false,
    )
    .expect("question")
    .prompt_logits
}

#[test]
fn quantized_caches_answer_the_pass_key() {
    let golden = common::golden("presses_r0.5.json");
    let files = ModelFiles::open(&common::default_model_dir()).expect("open");
    let model = files.load_model::<B>(&Default::default()).expect("load");
    let request = Request::new(golden["context"].as_str().expect("context"))
        .question(golden["question"].as_str().expect("question"))
        .max_new_tokens(24);
    let answer = golden["no_press"]["answer"].as_str().expect("answer");
    let passkey = golden["passkey"].as_str().expect("passkey");
    let full = Pipeline::new(&model, &files.tokenizer, files.eos_token_ids.clone());
    let reference = first_token_logits(&full, &model, &request);

    let int8 = Pipeline::new(&model, &files.tokenizer, files.eos_token_ids.clone())
        .with_kv_quantization(Some(KvQuantization::new(KvBits::Int8)));
    let logits = first_token_logits(&int8, &model, &request);
    let diff = reference
        .iter()
        .zip(&logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 0.05, "int8 first-token logits differ by {diff}");
    let out = int8.run(&request, None).expect("int8 run");
    assert_eq!(out.answers, vec![answer.to_string()]);
    // 1287 tokens: 128 per head in f32, the rest as int8 codes + f16 scale/zero per 64 channels
    let expected = (1287.0 - 128.0) * (64.0 + 4.0) / 256.0 + 128.0;
    let measured = out.cache_bytes as f64 / out.uncompressed_bytes as f64 * 1287.0;
    assert!(
        (measured - expected).abs() < 1e-6,
        "{measured} vs {expected}"
    );

    let int4 = Pipeline::new(&model, &files.tokenizer, files.eos_token_ids.clone())
        .with_kv_quantization(Some(KvQuantization::new(KvBits::Int4)));
    let out = int4.run(&request, None).expect("int4 run");
    assert!(
        out.answers[0].contains(passkey),
        "int4 answer {:?}",
        out.answers
    );
}

#[test]
fn presses_evict_before_quantizing_and_shared_prefill_matches() {
    let golden = common::golden("presses_r0.5.json");
    let files = ModelFiles::open(&common::default_model_dir()).expect("open");
    let model = files.load_model::<B>(&Default::default()).expect("load");
    let context: String = golden["context"]
        .as_str()
        .expect("context")
        .split_whitespace()
        .take(300)
        .collect::<Vec<_>>()
        .join(" ");
    let request = Request::new(&context)
        .question("Who repaired the lanterns?")
        .max_new_tokens(8);
    let quantization = KvQuantization {
        residual: 32,
        ..KvQuantization::new(KvBits::Int4)
    };
    let pipe = Pipeline::new(&model, &files.tokenizer, files.eos_token_ids.clone())
        .with_kv_quantization(Some(quantization));
    let knorm = build::<B>("knorm", Some(0.5)).expect("knorm");
    let adakv = build::<B>("adakv(expected_attention)", Some(0.5)).expect("adakv");
    let presses: Vec<Option<&dyn Press<B>>> =
        vec![None, Some(knorm.as_ref()), Some(adakv.as_ref())];
    let shared = pipe.run_shared(&request, &presses).expect("shared");
    for (press, together) in presses.iter().zip(&shared) {
        let alone = pipe.run(&request, *press).expect("run");
        assert_eq!(alone.answers, together.answers);
        assert_eq!(alone.tokens_per_head, together.tokens_per_head);
        assert_eq!(alone.cache_bytes, together.cache_bytes);
    }
    // knorm keeps half of the entries, all quantized but each head's last 32
    let n = shared[0].context_tokens;
    let kept = n - n / 2;
    let full_bytes = shared[0].uncompressed_bytes as f64;
    let expected = ((kept - 32) as f64 * (32.0 + 4.0) / 256.0 + 32.0) / n as f64;
    let measured = shared[1].cache_bytes as f64 / full_bytes;
    assert!(
        (measured - expected).abs() < 1e-9,
        "{measured} vs {expected}"
    );
    // a head-wise budget keeps different counts per head, quantized the same way
    assert!(
        shared[2]
            .tokens_per_head
            .iter()
            .flatten()
            .any(|&k| k != kept)
    );

    // a decoding-time press evicts quantized entries as they are
    let decoding = build::<B>(
        "decoding(knorm, compression_interval=4, target_size=64)",
        None,
    )
    .expect("decoding");
    let out = pipe
        .run(&request.clone().max_new_tokens(12), Some(decoding.as_ref()))
        .expect("decoding press over a quantized cache");
    assert_eq!(out.answers.len(), 1);
}
