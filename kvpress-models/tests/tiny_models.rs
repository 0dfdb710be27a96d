//! Properties of the decoder on tiny random-weight models of every supported architecture.

mod common;

use common::B;

use burn::tensor::Tensor;
use kvpress_models::Llama;
use kvpress_models::config::{Architecture, LlamaConfig};
use kvpress_models::llama::ForwardOptions;
use kvpress_models::testing::{random_weights, tiny_config};
use kvpress_models::weights::{HostTensor, MemoryWeights, WeightSource};

const ARCHS: [Architecture; 4] = [
    Architecture::Llama,
    Architecture::Mistral,
    Architecture::Qwen2,
    Architecture::Qwen3,
];

fn model(config: &LlamaConfig, weights: &MemoryWeights) -> Llama<B> {
    Llama::load(config.clone(), weights, &Default::default()).expect("load")
}

fn full_forward(model: &Llama<B>, ids: &[u32]) -> Tensor<B, 3> {
    let mut cache = model.new_cache();
    let positions: Vec<usize> = (0..ids.len()).collect();
    model
        .forward(ids, &positions, &mut cache, &ForwardOptions::default())
        .expect("forward")
}

fn max_diff(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f32 {
    (a - b).abs().max().into_scalar()
}

fn tokens(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 31 + salt * 7 + 3) % 97)
        .collect()
}

#[test]
fn shapes_of_hidden_states_and_logits() {
    for arch in ARCHS {
        let config = tiny_config(arch);
        let m = model(&config, &random_weights(&config, 1));
        let h = full_forward(&m, &tokens(10, 0));
        assert_eq!(h.dims(), [1, 10, 64], "{arch:?}");
        let logits = m.logits(h.reshape([10, 64]));
        assert_eq!(logits.dims(), [10, 97], "{arch:?}");
    }
}

#[test]
fn a_token_never_depends_on_later_tokens() {
    for arch in ARCHS {
        let config = tiny_config(arch);
        let m = model(&config, &random_weights(&config, 2));
        let a = tokens(12, 0);
        let mut b = a.clone();
        for t in b.iter_mut().skip(7) {
            *t = (*t + 5) % 97;
        }
        let ha = full_forward(&m, &a);
        let hb = full_forward(&m, &b);
        let same = max_diff(ha.clone().narrow(1, 0, 7), hb.clone().narrow(1, 0, 7));
        assert_eq!(same, 0.0, "{arch:?}: prefix changed");
        assert!(
            max_diff(ha.narrow(1, 7, 5), hb.narrow(1, 7, 5)) > 1e-4,
            "{arch:?}: suffix must change"
        );
    }
}

/// Duplicates each KV head's rows so that a plain multi-head model computes the same function.
fn repeat_kv_heads(w: &MemoryWeights, config: &LlamaConfig) -> MemoryWeights {
    let mut out = w.clone();
    let (d, h, kv) = (
        config.head_dim(),
        config.num_attention_heads,
        config.num_kv_heads(),
    );
    let g = h / kv;
    for l in 0..config.num_hidden_layers {
        for proj in ["k_proj", "v_proj"] {
            for suffix in ["weight", "bias"] {
                let name = format!("model.layers.{l}.self_attn.{proj}.{suffix}");
                if !w.contains(&name) {
                    continue;
                }
                let t = w.tensor(&name).expect("tensor");
                let cols = if suffix == "weight" { t.shape[1] } else { 1 };
                let mut data = Vec::with_capacity(t.data.len() * g);
                for head in 0..h {
                    let src = head / g;
                    data.extend_from_slice(&t.data[src * d * cols..(src + 1) * d * cols]);
                }
                let shape = if suffix == "weight" {
                    vec![h * d, cols]
                } else {
                    vec![h * d]
                };
                out.insert(name, HostTensor::new(shape, data).expect("shape"));
            }
        }
    }
    out
}

#[test]
fn grouped_query_attention_equals_explicit_head_repetition() {
    for arch in ARCHS {
        let config = tiny_config(arch);
        let weights = random_weights(&config, 3);
        let gqa = model(&config, &weights);
        let mut mha_config = config.clone();
        mha_config.num_key_value_heads = Some(config.num_attention_heads);
        let mha = model(&mha_config, &repeat_kv_heads(&weights, &config));
        let ids = tokens(9, 1);
        let diff = max_diff(full_forward(&gqa, &ids), full_forward(&mha, &ids));
        assert!(diff < 1e-5, "{arch:?}: {diff}");
    }
}

#[test]
fn chunked_attention_equals_unchunked() {
    for arch in ARCHS {
        let config = tiny_config(arch);
        let mut m = model(&config, &random_weights(&config, 4));
        let ids = tokens(33, 2);
        let whole = full_forward(&m, &ids);
        m.set_attention_chunk(4 * 20); // a few query rows at a time
        let chunked = full_forward(&m, &ids);
        let diff = max_diff(whole, chunked);
        assert!(diff < 1e-5, "{arch:?}: {diff}");
    }
}

#[test]
fn prefill_then_decode_equals_one_full_forward() {
    for arch in ARCHS {
        let mut config = tiny_config(arch);
        if arch == Architecture::Mistral {
            config.sliding_window = Some(6); // exercise the window across decode steps
        }
        let m = model(&config, &random_weights(&config, 5));
        let ids = tokens(14, 3);
        let full = full_forward(&m, &ids);
        let mut cache = m.new_cache();
        let split = 10;
        let positions: Vec<usize> = (0..split).collect();
        let pre = m
            .forward(
                &ids[..split],
                &positions,
                &mut cache,
                &ForwardOptions::default(),
            )
            .expect("prefill");
        assert!(
            max_diff(pre, full.clone().narrow(1, 0, split)) < 1e-5,
            "{arch:?}: prefill"
        );
        for (i, &t) in ids.iter().enumerate().skip(split) {
            let step = m
                .forward(&[t], &[i], &mut cache, &ForwardOptions::default())
                .expect("decode");
            let diff = max_diff(step, full.clone().narrow(1, i, 1));
            assert!(diff < 1e-5, "{arch:?}: decode step {i}: {diff}");
        }
        assert_eq!(cache.lengths(), vec![14; config.num_hidden_layers]);
    }
}

#[test]
fn sliding_window_changes_long_range_outputs_only() {
    let mut config = tiny_config(Architecture::Mistral);
    let weights = random_weights(&config, 6);
    let ids = tokens(20, 4);
    let full = full_forward(&model(&config, &weights), &ids);
    config.sliding_window = Some(8);
    let windowed = full_forward(&model(&config, &weights), &ids);
    // the same values up to rounding: without a window the prefill takes the fused causal
    // kernel, with one the masked path (measured 1.1e-6 apart)
    assert!(
        max_diff(
            full.clone().narrow(1, 0, 8),
            windowed.clone().narrow(1, 0, 8)
        ) < 1e-5
    );
    assert!(max_diff(full.narrow(1, 8, 12), windowed.narrow(1, 8, 12)) > 1e-4);
}
