//! Tiny random-weight models for tests and benchmarks (no download needed).

use crate::config::{Architecture, LlamaConfig};
use crate::weights::{HostTensor, MemoryWeights};

/// A small config of the given architecture: 2 layers, 4 query heads over 2 KV heads, d = 16.
pub fn tiny_config(arch: Architecture) -> LlamaConfig {
    let model_type = match arch {
        Architecture::Llama => "llama",
        Architecture::Mistral => "mistral",
        Architecture::Qwen2 => "qwen2",
        Architecture::Qwen3 => "qwen3",
    };
    LlamaConfig {
        model_type: model_type.into(),
        architectures: Vec::new(),
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        head_dim: None,
        vocab_size: 97,
        max_position_embeddings: 256,
        rms_norm_eps: 1e-5,
        rope_theta: Some(10000.0),
        rope_scaling: None,
        rope_parameters: None,
        tie_word_embeddings: arch == Architecture::Llama,
        attention_bias: false,
        mlp_bias: false,
        hidden_act: "silu".into(),
        sliding_window: None,
        use_sliding_window: None,
        bos_token_id: None,
        eos_token_id: None,
    }
}

/// Deterministic pseudo-random numbers (splitmix64), uniform in `[-scale, scale)`.
fn values(seed: &mut u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Random weights (HF names and layouts) for `config`, reproducible from `seed`.
pub fn random_weights(config: &LlamaConfig, seed: u64) -> MemoryWeights {
    let mut s = seed;
    let mut w = MemoryWeights::new();
    let (h, d) = (config.hidden_size, config.head_dim());
    let (nq, nkv, ff) = (
        config.num_attention_heads,
        config.num_kv_heads(),
        config.intermediate_size,
    );
    let mut put =
        |w: &mut MemoryWeights, name: String, shape: Vec<usize>, scale: f32, offset: f32| {
            let n = shape.iter().product();
            let data = values(&mut s, n, scale)
                .into_iter()
                .map(|x| x + offset)
                .collect();
            w.insert(name, HostTensor { shape, data });
        };
    put(
        &mut w,
        "model.embed_tokens.weight".into(),
        vec![config.vocab_size, h],
        1.0,
        0.0,
    );
    put(&mut w, "model.norm.weight".into(), vec![h], 0.1, 1.0);
    if !config.tie_word_embeddings {
        put(
            &mut w,
            "lm_head.weight".into(),
            vec![config.vocab_size, h],
            0.2,
            0.0,
        );
    }
    let qwen3 = config.architecture().ok() == Some(Architecture::Qwen3);
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let proj = 1.0 / (h as f32).sqrt();
        for (name, out, inp) in [
            ("self_attn.q_proj", nq * d, h),
            ("self_attn.k_proj", nkv * d, h),
            ("self_attn.v_proj", nkv * d, h),
            ("self_attn.o_proj", h, nq * d),
            ("mlp.gate_proj", ff, h),
            ("mlp.up_proj", ff, h),
            ("mlp.down_proj", h, ff),
        ] {
            put(
                &mut w,
                format!("{p}.{name}.weight"),
                vec![out, inp],
                proj * 1.5,
                0.0,
            );
        }
        if config.qkv_bias() {
            for (name, out) in [("q_proj", nq * d), ("k_proj", nkv * d), ("v_proj", nkv * d)] {
                put(
                    &mut w,
                    format!("{p}.self_attn.{name}.bias"),
                    vec![out],
                    0.1,
                    0.0,
                );
            }
        }
        if qwen3 {
            put(
                &mut w,
                format!("{p}.self_attn.q_norm.weight"),
                vec![d],
                0.1,
                1.0,
            );
            put(
                &mut w,
                format!("{p}.self_attn.k_norm.weight"),
                vec![d],
                0.1,
                1.0,
            );
        }
        put(
            &mut w,
            format!("{p}.input_layernorm.weight"),
            vec![h],
            0.1,
            1.0,
        );
        put(
            &mut w,
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            0.1,
            1.0,
        );
    }
    w
}
