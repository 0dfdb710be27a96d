//! Presses against kvpress on the default model (`../shared/golden/presses_r0.5.json`): the kept
//! positions of every layer and KV head, the cache length per layer and the answer.
//!
//! Kept sets must be equal; the only allowed difference is between entries whose scores tie
//! (within float rounding) at the selection threshold, and each such case is printed.

mod common;

use std::sync::Mutex;

use burn::backend::Flex;
use burn::tensor::Tensor;
use kvpress_core::error::Result;
use kvpress_core::{LayerInputs, Press, Scorer, ScorerPress};
use kvpress_models::ModelFiles;
use kvpress_models::pipeline::{Pipeline, Request};
use kvpress_presses::adakv::AdaKv;
use kvpress_presses::chunk::Chunk;
use kvpress_presses::composed::Composed;
use kvpress_presses::critical_kv::CriticalKv;
use kvpress_presses::expected_attention::ExpectedAttention;
use kvpress_presses::keydiff::KeyDiff;
use kvpress_presses::knorm::Knorm;
use kvpress_presses::observed_attention::ObservedAttention;
use kvpress_presses::pyramidkv::PyramidKv;
use kvpress_presses::random::RandomScores;
use kvpress_presses::snapkv::SnapKv;
use kvpress_presses::streaming_llm::StreamingLlm;
use kvpress_presses::think::Think;
use kvpress_presses::tova::Tova;

type B = Flex;

/// One layer's scores `[h_kv][n]` and protected mask.
type LayerScores = (Vec<Vec<f32>>, Vec<bool>);

/// Delegates to a scorer and records, per layer, its scores `[h_kv][n]` and protected mask.
struct Recording<S> {
    inner: S,
    scores: Mutex<Vec<LayerScores>>,
}

impl<S: Scorer<B>> Scorer<B> for Recording<S> {
    fn score(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let scores = self.inner.score(inputs, keys, values)?;
        let n = keys.dims()[2];
        let flat: Vec<f32> = scores.clone().into_data().to_vec().expect("f32");
        let protected = self.inner.protected(inputs, n)?;
        let rows = flat.chunks(n).map(<[f32]>::to_vec).collect();
        self.scores.lock().expect("lock").push((rows, protected));
        Ok(scores)
    }

    fn protected(&self, inputs: &LayerInputs<'_, B>, n: usize) -> Result<Vec<bool>> {
        self.inner.protected(inputs, n)
    }
}

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

/// The golden file, the default model and the golden request (max 24 new tokens).
struct Setup {
    golden: serde_json::Value,
    files: ModelFiles,
    model: kvpress_models::Llama<B>,
}

impl Setup {
    fn new() -> Self {
        let files = ModelFiles::open(&common::default_model_dir()).expect("open");
        let model = files.load_model::<B>(&Default::default()).expect("load");
        Self {
            golden: common::golden("presses_r0.5.json"),
            files,
            model,
        }
    }

    fn pipeline(&self) -> Pipeline<'_, B> {
        Pipeline::new(
            &self.model,
            &self.files.tokenizer,
            self.files.eos_token_ids.clone(),
        )
    }

    fn request(&self) -> Request {
        Request::new(self.golden["context"].as_str().expect("context"))
            .question(self.golden["question"].as_str().expect("question"))
            .max_new_tokens(24)
    }

    /// kvpress's result for press configuration `name` at ratio 0.5.
    fn want(&self, name: &str) -> &serde_json::Value {
        &self.golden["results"][name]["0.5"]
    }
}

/// kvpress's cache length per layer.
fn lengths_of(want: &serde_json::Value) -> Vec<usize> {
    want["cache_seq_len_per_layer"]
        .as_array()
        .expect("lengths")
        .iter()
        .map(|v| v.as_u64().expect("len") as usize)
        .collect()
}

/// Compares the kept positions of every layer and head with kvpress's (equal counts required);
/// `on_difference(layer, head, ours, theirs)` judges heads whose sets differ.
fn compare_kept(
    name: &str,
    want: &serde_json::Value,
    cache: &kvpress_core::KvCache<B>,
    mut on_difference: impl FnMut(usize, usize, &[usize], &[usize]),
) {
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
                on_difference(l, h, &mine, &theirs);
            }
        }
    }
    if cache
        .layer(0)
        .is_some_and(kvpress_core::LayerCache::is_ragged)
    {
        // kvpress masks head-wise evictions and keeps every slot; ours holds only the kept
        // entries: 2 tensors × head_dim × 4 bytes each.
        let per_entry = 2 * 64 * 4;
        let held = cache.bytes() as f64;
        let kept = (cache.entries() * per_entry) as f64;
        assert!(
            (held - kept).abs() <= 0.01 * kept,
            "{name}: {held} bytes held for {kept} bytes of kept entries"
        );
        let full = (cache.num_layers() * 3 * 1287 * per_entry) as f64;
        eprintln!(
            "{name}: cache holds {held} bytes, {:.3} of the uncompressed {full}",
            held / full
        );
    } else {
        assert_eq!(cache.lengths(), lengths_of(want), "{name}: cache lengths");
    }
}

/// Runs the golden question with `press` and compares the answer with kvpress's (when kvpress
/// produced one: it cannot decode per-layer lengths under sdpa, e.g. for PyramidKV).
fn check_answer(setup: &Setup, name: &str, press: &dyn Press<B>) {
    let out = setup
        .pipeline()
        .run(&setup.request(), Some(press))
        .expect("run");
    let ragged = out
        .tokens_per_head
        .iter()
        .any(|heads| heads.iter().any(|&n| n != heads[0]));
    if ragged {
        // n_kept = 643 of 1287 entries per head on average
        let ratio = out.cache_bytes as f64 / out.uncompressed_bytes as f64;
        assert!(
            (ratio - 643.0 / 1287.0).abs() < 1e-6,
            "{name}: bytes ratio {ratio}"
        );
    } else {
        assert_eq!(out.cache_lengths, lengths_of(setup.want(name)));
    }
    match setup.want(name)["answer"].as_str() {
        Some(answer) => assert_eq!(out.answers[0], answer, "{name}: answer"),
        None => assert!(!out.answers[0].is_empty()),
    }
}

/// A scorer press: kept sets equal kvpress's except between entries that tie (within float
/// rounding) at the selection threshold, which are printed; same answer.
fn check_press<S: Scorer<B>>(name: &str, scorer: S) {
    let setup = Setup::new();
    let pipe = setup.pipeline();
    let prompt = pipe.prompt(&setup.request()).expect("prompt");
    let press = ScorerPress::new(
        Recording {
            inner: scorer,
            scores: Mutex::new(Vec::new()),
        },
        0.5,
    )
    .expect("press");
    let cache = pipe
        .prefill(&prompt.context_ids, Some(&press))
        .expect("prefill");
    let recorded = press.scorer.scores.lock().expect("lock").clone();
    compare_kept(name, setup.want(name), &cache, |l, h, mine, theirs| {
        // Every disputed entry must tie with the lowest kept unprotected score.
        let (scores, protected) = &recorded[l];
        let row = &scores[h];
        let free = |p: &usize| !protected.get(*p).copied().unwrap_or(false);
        let threshold = mine
            .iter()
            .filter(|p| free(p))
            .map(|&p| row[p])
            .fold(f32::INFINITY, f32::min);
        let disputed: Vec<usize> = mine
            .iter()
            .filter(|p| !theirs.contains(p))
            .chain(theirs.iter().filter(|p| !mine.contains(p)))
            .copied()
            .collect();
        for p in &disputed {
            assert!(
                free(p),
                "{name}: layer {l} head {h}: protected position {p} differs"
            );
            let dev = (row[*p] - threshold).abs();
            assert!(
                dev <= 1e-5 * threshold.abs().max(1e-3),
                "{name}: layer {l} head {h}: position {p} (score {}) is not a tie with the threshold {threshold}",
                row[*p]
            );
        }
        eprintln!(
            "{name}: layer {l} head {h}: {} positions differ, all tied at {threshold}: {disputed:?}",
            disputed.len()
        );
    });
    check_answer(&setup, name, &press);
}

/// Kept sets and lengths equal kvpress's exactly; same answer.
fn check_exact(name: &str, press: &dyn Press<B>) {
    let setup = Setup::new();
    let pipe = setup.pipeline();
    let prompt = pipe.prompt(&setup.request()).expect("prompt");
    let cache = pipe
        .prefill(&prompt.context_ids, Some(press))
        .expect("prefill");
    compare_kept(name, setup.want(name), &cache, |l, h, mine, theirs| {
        assert_eq!(mine, theirs, "{name}: layer {l} head {h}");
    });
    check_answer(&setup, name, press);
}

#[test]
fn knorm_keeps_what_kvpress_keeps() {
    check_press("KnormPress", Knorm);
}

#[test]
fn streaming_llm_keeps_what_kvpress_keeps() {
    check_press("StreamingLLMPress", StreamingLlm::default());
}

#[test]
fn snapkv_keeps_what_kvpress_keeps() {
    check_press("SnapKVPress", SnapKv::default());
}

#[test]
fn tova_keeps_what_kvpress_keeps() {
    check_press("TOVAPress", Tova);
}

#[test]
fn keydiff_keeps_what_kvpress_keeps() {
    check_press("KeyDiffPress", KeyDiff);
}

#[test]
fn expected_attention_keeps_what_kvpress_keeps() {
    check_press("ExpectedAttentionPress", ExpectedAttention::default());
}

#[test]
fn pyramidkv_keeps_what_kvpress_keeps() {
    check_exact("PyramidKVPress", &PyramidKv::new(0.5).expect("press"));
}

#[test]
fn chunk_snapkv_keeps_what_kvpress_keeps() {
    check_exact(
        "ChunkPress(SnapKVPress)",
        &Chunk::new(SnapKv::default(), 0.5).expect("press"),
    );
}

#[test]
fn think_gives_kvpress_answer() {
    check_exact("ThinKPress", &Think::new(0.5).expect("press"));
}

#[test]
fn composed_snapkv_think_keeps_what_kvpress_keeps() {
    let composed = Composed::<B> {
        presses: vec![
            Box::new(ScorerPress::new(SnapKv::default(), 0.5).expect("snapkv")),
            Box::new(Think::new(0.25).expect("think")),
        ],
    };
    check_exact("ComposedPress([SnapKVPress, ThinKPress(0.25)])", &composed);
}

#[test]
fn random_keeps_kvpress_counts_deterministically() {
    let setup = Setup::new();
    let pipe = setup.pipeline();
    let prompt = pipe.prompt(&setup.request()).expect("prompt");
    let press = ScorerPress::new(RandomScores { seed: 42 }, 0.5).expect("press");
    let first = pipe
        .prefill(&prompt.context_ids, Some(&press))
        .expect("prefill");
    let second = pipe
        .prefill(&prompt.context_ids, Some(&press))
        .expect("prefill");
    assert_eq!(
        first.lengths(),
        lengths_of(setup.want("RandomPress(seed=42)"))
    );
    for l in 0..first.num_layers() {
        let (a, b) = (
            first.layer(l).expect("layer"),
            second.layer(l).expect("layer"),
        );
        assert_eq!(a.positions(), b.positions(), "layer {l}");
    }
}

#[test]
fn observed_attention_keeps_what_kvpress_keeps() {
    check_press("ObservedAttentionPress", ObservedAttention);
}

#[test]
fn critical_kv_keeps_what_kvpress_keeps() {
    let inner = ExpectedAttention {
        use_vnorm: false,
        ..Default::default()
    };
    check_exact(
        "CriticalKVPress(ExpectedAttentionPress(use_vnorm=False))",
        &CriticalKv::new(inner, 0.5).expect("press"),
    );
}

#[test]
fn adakv_expected_attention_keeps_what_kvpress_masks_and_frees_the_memory() {
    check_exact(
        "AdaKVPress(ExpectedAttentionPress)",
        &AdaKv::new(ExpectedAttention::default(), 0.5).expect("press"),
    );
}

#[test]
fn adakv_snapkv_keeps_what_kvpress_masks_and_frees_the_memory() {
    check_exact(
        "AdaKVPress(SnapKVPress)",
        &AdaKv::new(SnapKv::default(), 0.5).expect("press"),
    );
}
