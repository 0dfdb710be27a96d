//! The decoder against transformers on the default model (`../shared/golden/model.json`):
//! token ids, rendered chat text, top-5 next-token logits, 20 greedy tokens and the top-2
//! logits of every decoding step.

mod common;

use common::B;

use common::ids;

use kvpress_models::generate::{GenerationOptions, generate, top_k};
use kvpress_models::{ChatMessage, ModelFiles};

const TOLERANCE: f64 = 1e-3;

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("float"))
        .collect()
}

#[test]
fn matches_transformers_on_all_golden_prompts() {
    let golden = common::golden("model.json");
    let files = ModelFiles::open(&common::default_model_dir()).expect("open default model");
    let device = Default::default();
    let model = files.load_model::<B>(&device).expect("load");
    let mut worst = 0f64;
    for prompt in golden["prompts"].as_array().expect("prompts") {
        let name = prompt["name"].as_str().expect("name");
        let text = prompt["text"].as_str().expect("text");
        let plain = files.tokenizer.encode(text, false).expect("encode");
        assert_eq!(plain, ids(&prompt["ids_plain"]), "{name}: plain ids");
        let chat_text = files
            .tokenizer
            .apply_chat_template(&[ChatMessage::user(text)], true)
            .expect("chat template");
        assert_eq!(
            chat_text,
            prompt["chat_text"].as_str().expect("chat_text"),
            "{name}: chat text"
        );
        let chat = files.tokenizer.encode(&chat_text, false).expect("encode");
        assert_eq!(chat, ids(&prompt["ids_chat"]), "{name}: chat ids");

        for (kind, prompt_ids) in [("plain", &plain), ("chat", &chat)] {
            let options = GenerationOptions {
                max_new_tokens: 20,
                eos_token_ids: files.eos_token_ids.clone(),
                ignore_eos: true,
                ..Default::default()
            };
            let out = generate(&model, prompt_ids, &options, true).expect("generate");
            for attn in ["sdpa", "eager"] {
                let want = &prompt["results"][attn][kind];
                let top5 = top_k(&out.prompt_logits, 5);
                let want_ids = ids(&want["top5"]["ids"]);
                let want_vals = floats(&want["top5"]["values"]);
                assert_eq!(
                    top5.iter().map(|t| t.0).collect::<Vec<_>>(),
                    want_ids,
                    "{name}/{kind}/{attn}: top-5 ids"
                );
                for ((_, got), want) in top5.iter().zip(&want_vals) {
                    let dev = (*got as f64 - want).abs();
                    worst = worst.max(dev);
                    assert!(
                        dev <= TOLERANCE,
                        "{name}/{kind}/{attn}: top-5 logit {got} vs {want}"
                    );
                }
                assert_eq!(
                    out.tokens,
                    ids(&want["greedy20_ids"]),
                    "{name}/{kind}/{attn}: greedy tokens"
                );
                let steps = want["step_top2"].as_array().expect("steps");
                assert_eq!(
                    out.step_logits.len(),
                    steps.len(),
                    "{name}/{kind}: step count"
                );
                for (i, (logits, step)) in out.step_logits.iter().zip(steps).enumerate() {
                    let top2 = top_k(logits, 2);
                    assert_eq!(
                        top2.iter().map(|t| t.0).collect::<Vec<_>>(),
                        ids(&step["ids"]),
                        "{name}/{kind}/{attn}: step {i} top-2 ids"
                    );
                    for ((_, got), want) in top2.iter().zip(floats(&step["values"])) {
                        let dev = (*got as f64 - want).abs();
                        worst = worst.max(dev);
                        assert!(
                            dev <= TOLERANCE,
                            "{name}/{kind}/{attn}: step {i} logit {got} vs {want}"
                        );
                    }
                }
            }
            let text = files.tokenizer.decode(&out.tokens, false).expect("decode");
            assert_eq!(
                text,
                prompt["results"]["sdpa"][kind]["greedy20_text"]
                    .as_str()
                    .expect("text"),
                "{name}/{kind}: text"
            );
        }
    }
    eprintln!("largest logit deviation from transformers: {worst:e}");
}
