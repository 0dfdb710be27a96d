//! Presses against kvpress on the default model (`../shared/golden/presses_r0.5.json`): the kept
//! positions of every layer and KV head, the cache length per layer and the answer.

mod common;

use burn::backend::Flex;
use kvpress_core::{LayerInputs, Press, Scorer, ScorerPress};
use kvpress_models::ModelFiles;
use kvpress_models::pipeline::{Pipeline, Request};
use kvpress_presses::knorm::Knorm;

type B = Flex;

/// Positions set in a kvpress bitmask (byte j, bit b = position 8j + b).
fn positions_of(hex: &str) -> Vec<usize> {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    (0..bytes.len() * 8)
        .filter(|p| bytes[p / 8] >> (p % 8) & 1 == 1)
        .collect()
}

/// Scores of the uncompressed layer `l`, head `h`, by `scorer`.
fn full_scores(
    pipe: &Pipeline<'_, B>,
    model: &kvpress_models::Llama<B>,
    ids: &[u32],
    scorer: &dyn Scorer<B>,
    l: usize,
    h: usize,
) -> Vec<f32> {
    let cache = pipe.prefill(ids, None).expect("prefill");
    let (keys, values) = cache.layer(l).expect("layer").keys_values().expect("kv");
    let positions: Vec<usize> = (0..ids.len()).collect();
    let dummy_hidden = burn::tensor::Tensor::<B, 3>::zeros([1, 1, 1], &Default::default());
    let dummy_queries = burn::tensor::Tensor::<B, 4>::zeros([1, 1, 1, 1], &Default::default());
    let inputs = LayerInputs {
        layer: l,
        num_layers: model.config().num_hidden_layers,
        hidden_states: &dummy_hidden,
        queries: &dummy_queries,
        positions: &positions,
        rope: model.rope(),
    };
    let scores = scorer.score(&inputs, keys, values).expect("score");
    let n = ids.len();
    let all: Vec<f32> = scores.into_data().to_vec().expect("f32");
    all[h * n..(h + 1) * n].to_vec()
}

/// For heads whose kept sets differ, checks that every disputed position ties (within float
/// rounding) with the selection threshold, and prints them.
fn check_ties_only(
    pipe: &Pipeline<'_, B>,
    model: &kvpress_models::Llama<B>,
    ids: &[u32],
    scorer: &dyn Scorer<B>,
    differing: &[(usize, usize, Vec<usize>, Vec<usize>)],
) {
    for (l, h, mine, theirs) in differing {
        let scores = full_scores(pipe, model, ids, scorer, *l, *h);
        let mut sorted = scores.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let threshold = sorted[mine.len() - 1];
        let disputed: Vec<usize> = mine
            .iter()
            .filter(|p| !theirs.contains(p))
            .chain(theirs.iter().filter(|p| !mine.contains(p)))
            .copied()
            .collect();
        for p in &disputed {
            let dev = (scores[*p] - threshold).abs();
            assert!(
                dev <= 1e-5 * threshold.abs().max(1.0),
                "layer {l} head {h}: position {p} (score {}) is not a tie with the threshold {threshold}",
                scores[*p]
            );
        }
        eprintln!(
            "layer {l} head {h}: {} positions differ, all tied at score {threshold}: {disputed:?}",
            disputed.len()
        );
    }
}

fn check_press(name: &str, press: &dyn Press<B>, scorer: &dyn Scorer<B>) {
    let golden = common::golden("presses_r0.5.json");
    let want = &golden["results"][name]["0.5"];
    let files = ModelFiles::open(&common::default_model_dir()).expect("open");
    let model = files.load_model::<B>(&Default::default()).expect("load");
    let pipe = Pipeline::new(&model, &files.tokenizer, files.eos_token_ids.clone());
    let request = Request::new(golden["context"].as_str().expect("context"))
        .question(golden["question"].as_str().expect("question"))
        .max_new_tokens(24);
    let prompt = pipe.prompt(&request).expect("prompt");
    let cache = pipe
        .prefill(&prompt.context_ids, Some(press))
        .expect("prefill");
    let mut differing = Vec::new();
    for (l, layer) in want["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .enumerate()
    {
        let got = cache.layer(l).expect("layer").positions();
        for (h, hex) in layer["kept_mask_hex"]
            .as_array()
            .expect("masks")
            .iter()
            .enumerate()
        {
            let mut mine = got[h].clone();
            mine.sort_unstable();
            let theirs = positions_of(hex.as_str().expect("hex"));
            assert_eq!(
                mine.len(),
                theirs.len(),
                "{name}: layer {l} head {h} keeps a different count"
            );
            if mine != theirs {
                differing.push((l, h, mine, theirs));
            }
        }
    }
    check_ties_only(&pipe, &model, &prompt.context_ids, scorer, &differing);
    let lengths: Vec<usize> = want["cache_seq_len_per_layer"]
        .as_array()
        .expect("lengths")
        .iter()
        .map(|v| v.as_u64().expect("len") as usize)
        .collect();
    assert_eq!(cache.lengths(), lengths, "{name}: cache lengths");
    let out = pipe.run(&request, Some(press)).expect("run");
    assert_eq!(
        out.answers[0],
        want["answer"].as_str().expect("answer"),
        "{name}: answer"
    );
}

#[test]
fn knorm_keeps_what_kvpress_keeps() {
    check_press(
        "KnormPress",
        &ScorerPress::new(Knorm, 0.5).expect("press"),
        &Knorm,
    );
}
