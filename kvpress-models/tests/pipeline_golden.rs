//! The pipeline against kvpress's `kv-press-text-generation` on the default model
//! (`../shared/golden/presses_r0.5.json`): the context/question split and token ids, and the
//! uncompressed answer.

mod common;

use common::ids;

use burn::backend::Flex;
use kvpress_models::ModelFiles;
use kvpress_models::pipeline::{Pipeline, Request};

#[test]
fn split_ids_and_uncompressed_answer_match_kvpress() {
    let golden = common::golden("presses_r0.5.json");
    let files = ModelFiles::open(&common::default_model_dir()).expect("open");
    let model = files.load_model::<Flex>(&Default::default()).expect("load");
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
    let model = files.load_model::<Flex>(&Default::default()).expect("load");
    let pipe = Pipeline::new(&model, &files.tokenizer, files.eos_token_ids.clone());
    // A shorter context keeps the test quick: the first 400 words.
    let context: String = golden["context"]
        .as_str()
        .expect("context")
        .split(' ')
        .take(400)
        .collect::<Vec<_>>()
        .join(" ");
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
    let model = files.load_model::<Flex>(&Default::default()).expect("load");
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
