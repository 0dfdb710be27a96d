//! HF checkpoint directories: sharded safetensors with an index, F16/BF16 storage, tied and
//! untied LM heads, transformers-5 style configs and generation configs.

mod common;

use std::collections::HashMap;
use std::path::Path;

use kvpress_models::config::{Architecture, LlamaConfig};
use kvpress_models::llama::ForwardOptions;
use kvpress_models::testing::{random_weights, tiny_config};
use kvpress_models::weights::{HostTensor, MemoryWeights, WeightSource};
use kvpress_models::{Llama, ModelFiles};
use safetensors::tensor::{Dtype, TensorView};

use common::B;

/// Stores `t` as `dtype` and returns the bytes and the values as read back.
fn encode(t: &HostTensor, dtype: Dtype) -> (Vec<u8>, Vec<f32>) {
    match dtype {
        Dtype::F16 => {
            let h: Vec<half::f16> = t.data.iter().map(|&x| half::f16::from_f32(x)).collect();
            (
                h.iter().flat_map(|x| x.to_le_bytes()).collect(),
                h.iter().map(|x| x.to_f32()).collect(),
            )
        }
        Dtype::BF16 => {
            let h: Vec<half::bf16> = t.data.iter().map(|&x| half::bf16::from_f32(x)).collect();
            (
                h.iter().flat_map(|x| x.to_le_bytes()).collect(),
                h.iter().map(|x| x.to_f32()).collect(),
            )
        }
        _ => (
            t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            t.data.clone(),
        ),
    }
}

/// Writes `weights` as two shards (F16 then BF16) plus an index; returns the weights as stored.
fn write_sharded(dir: &Path, weights: &MemoryWeights) -> MemoryWeights {
    let names = weights.names();
    let (first, second) = names.split_at(names.len() / 2);
    let mut stored = MemoryWeights::new();
    let mut map = serde_json::Map::new();
    for (file, part, dtype) in [
        ("model-00001-of-00002.safetensors", first, Dtype::F16),
        ("model-00002-of-00002.safetensors", second, Dtype::BF16),
    ] {
        let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = part
            .iter()
            .map(|name| {
                let t = weights.tensor(name).expect("tensor");
                let (bytes, values) = encode(&t, dtype);
                stored.insert(
                    name.clone(),
                    HostTensor::new(t.shape.clone(), values).expect("shape"),
                );
                map.insert(name.clone(), file.into());
                (name.clone(), t.shape, bytes)
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = encoded
            .iter()
            .map(|(n, shape, bytes)| {
                (
                    n.clone(),
                    TensorView::new(dtype, shape.clone(), bytes).expect("view"),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None::<HashMap<String, String>>, &dir.join(file))
            .expect("write shard");
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).expect("index");
    stored
}

fn outputs(model: &Llama<B>) -> burn::tensor::Tensor<B, 3> {
    let ids = [3u32, 14, 15, 92, 65, 35];
    let positions: Vec<usize> = (0..ids.len()).collect();
    model
        .forward(
            &ids,
            &positions,
            &mut model.new_cache(),
            &ForwardOptions::default(),
        )
        .expect("forward")
}

fn check_dir(config: LlamaConfig, transformers5: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let weights = random_weights(&config, 11);
    let stored = write_sharded(dir.path(), &weights);
    let mut json = serde_json::to_value(&config).expect("json");
    if transformers5 {
        let obj = json.as_object_mut().expect("object");
        obj.remove("rope_theta");
        obj.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "default", "rope_theta": 10000.0}),
        );
    }
    common::write_config_and_tokenizer(dir.path(), &json);
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": [1, 2]}"#,
    )
    .expect("gen");
    let files = ModelFiles::open(dir.path()).expect("open");
    assert_eq!(files.eos_token_ids, vec![1, 2]);
    let loaded = files.load_model::<B>(&Default::default()).expect("load");
    let expected =
        Llama::<B>::load(config.clone(), &stored, &Default::default()).expect("load expected");
    let diff = (outputs(&loaded) - outputs(&expected))
        .abs()
        .max()
        .into_scalar();
    assert_eq!(diff, 0.0, "{:?}", config.model_type);
}

#[test]
fn sharded_half_precision_tied_llama() {
    let config = tiny_config(Architecture::Llama);
    assert!(config.tie_word_embeddings);
    check_dir(config, false);
}

#[test]
fn sharded_half_precision_untied_qwen3_with_transformers5_config() {
    let config = tiny_config(Architecture::Qwen3);
    assert!(!config.tie_word_embeddings);
    check_dir(config, true);
}

#[test]
fn an_index_naming_a_missing_shard_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = tiny_config(Architecture::Llama);
    common::write_config_and_tokenizer(dir.path(), &serde_json::to_value(&config).expect("json"));
    let index = r#"{"weight_map": {"model.norm.weight": "model-00001-of-00001.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).expect("index");
    let err = ModelFiles::open(dir.path())
        .expect_err("missing shard")
        .to_string();
    assert!(err.contains("model-00001-of-00001.safetensors"), "{err}");
}
