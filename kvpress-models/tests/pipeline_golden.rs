//! The pipeline against kvpress's `kv-press-text-generation` on the default model
//! (`../shared/golden/presses_r0.5.json`): the context/question split and token ids, and the
//! uncompressed answer.

mod common;

use common::B;

use common::ids;

use kvpress_models::ModelFiles;
use kvpress_models::pipeline::{Pipeline, Request};

#[test]
fn split_ids_and_uncompressed_answer_match_kvpress() {
    let golden = common::golden("presses_r0.5.json");
    let files = ModelFiles::open(&common::default_model_dir()).expect("open");
    let model = files.load_model::<B>(&Default::default()).expect("load");
    let pipe = Pipeline::new(&model, &files.tokenizer, files.eos_token_ids.clone());
    let request = Request::new(golden["context"].as_str().expect("context"))
        .question(golden["question"].as_str().expect("question"))
        .max_new_tokens(24);

    let prompt = pipe.prompt(&request).expect("prompt");
    assert_eq!(prompt.context_ids, ids(&golden["context_ids"]));
    assert_eq!(prompt.question_ids, vec![ids(&golden["question_ids"])]);

    let out = pipe.run(&request, None).expect("run");
    assert_eq!(
        out.answers,
        vec![
            golden["no_press"]["answer"]
                .as_str()
                .expect("answer")
                .to_string()
        ]
    );
    let lengths: Vec<usize> = golden["no_press"]["cache_seq_len_per_layer"]
        .as_array()
        .expect("lengths")
        .iter()
        .map(|v| v.as_u64().expect("len") as usize)
        .collect();
    assert_eq!(out.cache_lengths, lengths);
    assert_eq!(out.context_tokens, 1287);
}

#[test]
fn several_questions_reuse_one_context_and_match_separate_runs() {
    let golden = common::golden("presses_r0.5.json");
    let files = ModelFiles::open(&common::default_model_dir()).expect("open");
    let model = files.load_model::<B>(&Default::default()).expect("load");
    let pipe = Pipeline::new(&model, &files.tokenizer, files.eos_token_ids.clone());
    // A shorter context keeps the test quick.
    let context = first_words(&golden, 400);
    let q1 = "Who remembered the long road to the harbour?";
    let q2 = "What did the ferryman paint?";
    let both = pipe
        .run(
            &Request::new(&context)
                .question(q1)
                .question(q2)
                .max_new_tokens(12),
            None,
        )
        .expect("run");
    let first = pipe
        .run(
            &Request::new(&context).question(q1).max_new_tokens(12),
            None,
        )
        .expect("run");
    let second = pipe
        .run(
            &Request::new(&context).question(q2).max_new_tokens(12),
            None,
        )
        .expect("run");
    assert_eq!(
        both.answers,
        vec![first.answers[0].clone(), second.answers[0].clone()]
    );
}

#[test]
fn empty_and_overlong_contexts_are_clear_errors() {
    let files = ModelFiles::open(&common::default_model_dir()).expect("open");
    let model = files.load_model::<B>(&Default::default()).expect("load");
    let pipe = Pipeline::new(&model, &files.tokenizer, files.eos_token_ids.clone());
    let err = pipe
        .run(&Request::new("   "), None)
        .expect_err("empty")
        .to_string();
    assert!(err.contains("context is empty"), "{err}");
    let long = "word ".repeat(9000);
    let err = pipe
        .run(&Request::new(long.clone()), None)
        .expect_err("too long")
        .to_string();
    assert!(err.contains("max_context_length"), "{err}");
    // Truncation makes it fit, as in kvpress.
    let mut request = Request::new(long).max_new_tokens(2);
    request.max_context_length = Some(64);
    let prompt = pipe.prompt(&request).expect("prompt");
    assert_eq!(prompt.context_ids.len(), 64);
}

/// One shared prefill serves several presses (none, a scorer, a head-wise press, KVzip's extra
/// forwards, a decoding press) exactly as separate runs do: same answers, same kept entries per
/// head, same bytes.
#[test]
fn shared_prefill_matches_separate_runs() {
    let golden = common::golden("presses_r0.5.json");
    let files = ModelFiles::open(&common::default_model_dir()).expect("open");
    let model = files.load_model::<B>(&Default::default()).expect("load");
    let pipe = Pipeline::new(&model, &files.tokenizer, files.eos_token_ids.clone());
    let context = first_words(&golden, 300);
    let request = Request::new(context)
        .question(golden["question"].as_str().expect("question"))
        .max_new_tokens(12);
    let expressions = [
        "knorm",
        "snapkv",
        "adakv(expected_attention)",
        "kvzip",
        "decoding(knorm, compression_interval=4, target_size=64)",
    ];
    let built: Vec<_> = expressions
        .iter()
        .map(|e| kvpress_presses::registry::build::<B>(e, Some(0.5)).expect(e))
        .collect();
    let mut presses: Vec<Option<&dyn kvpress_core::Press<B>>> = vec![None];
    presses.extend(built.iter().map(|p| Some(p.as_ref())));

    let shared = pipe.run_shared(&request, &presses).expect("shared");
    assert_eq!(shared.len(), presses.len());
    for (press, out) in presses.iter().zip(&shared) {
        let solo = pipe.run(&request, *press).expect("solo");
        assert_eq!(out.answers, solo.answers);
        assert_eq!(out.tokens_per_head, solo.tokens_per_head);
        assert_eq!(out.cache_bytes, solo.cache_bytes);
        assert_eq!(out.uncompressed_bytes, solo.uncompressed_bytes);
    }
    // the presses did compress, and differently
    assert!(shared[1].cache_bytes < shared[0].cache_bytes);
    assert_ne!(shared[1].tokens_per_head, shared[3].tokens_per_head);
}

/// The first `n` words of the golden press context (a shorter context keeps tests quick).
fn first_words(golden: &serde_json::Value, n: usize) -> String {
    golden["context"]
        .as_str()
        .expect("context")
        .split(' ')
        .take(n)
        .collect::<Vec<_>>()
        .join(" ")
}
