//! Malformed files and inputs produce errors that name the problem, never panics.

mod common;

use std::path::Path;

use common::Meta;

use kvpress_models::config::Architecture;
use kvpress_models::llama::ForwardOptions;
use kvpress_models::loading::gguf::GgufFile;
use kvpress_models::loading::safetensors::write_f32;
use kvpress_models::testing::{random_weights, tiny_config};
use kvpress_models::weights::{HostTensor, WeightSource};
use kvpress_models::{Llama, ModelError, ModelFiles};

use common::B;

/// Writes a complete tiny HF directory and returns the path of its safetensors file.
fn write_hf_dir(dir: &Path) -> std::path::PathBuf {
    let config = tiny_config(Architecture::Llama);
    let weights = random_weights(&config, 9);
    let tensors: Vec<(String, HostTensor)> = weights
        .names()
        .into_iter()
        .map(|n| {
            let t = weights.tensor(&n).expect("tensor");
            (n, t)
        })
        .collect();
    let st = dir.join("model.safetensors");
    write_f32(&st, &tensors).expect("write");
    common::write_config_and_tokenizer(dir, &serde_json::to_value(&config).expect("json"));
    st
}

fn open_err(path: &Path) -> String {
    match ModelFiles::open(path) {
        Ok(_) => panic!("{} should not open", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_complete_tiny_directory_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_hf_dir(dir.path());
    let files = ModelFiles::open(dir.path()).expect("opens");
    files.load_model::<B>(&Default::default()).expect("loads");
    assert_eq!(
        files.tokenizer.encode("ab", false).expect("encode"),
        vec![2]
    );
}

#[test]
fn truncated_safetensors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = write_hf_dir(dir.path());
    let bytes = std::fs::read(&st).expect("read");
    std::fs::write(&st, &bytes[..bytes.len() - 1000]).expect("truncate");
    let err = open_err(dir.path());
    assert!(
        err.contains("truncated") && err.contains("model.safetensors"),
        "{err}"
    );
}

#[test]
fn corrupted_safetensors_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = write_hf_dir(dir.path());
    let mut bytes = std::fs::read(&st).expect("read");
    bytes[8..16].copy_from_slice(b"not json");
    std::fs::write(&st, &bytes).expect("corrupt");
    let err = open_err(dir.path());
    assert!(err.contains("invalid safetensors file"), "{err}");
}

#[test]
fn config_missing_a_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_hf_dir(dir.path());
    let path = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    v.as_object_mut()
        .expect("object")
        .remove("num_attention_heads");
    std::fs::write(&path, v.to_string()).expect("write");
    let err = open_err(dir.path());
    assert!(
        err.contains("num_attention_heads") && err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn config_with_inconsistent_heads() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_hf_dir(dir.path());
    let path = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    v["num_key_value_heads"] = 3.into();
    std::fs::write(&path, v.to_string()).expect("write");
    let err = open_err(dir.path());
    assert!(err.contains("num_key_value_heads"), "{err}");
}

#[test]
fn missing_tokenizer() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_hf_dir(dir.path());
    std::fs::remove_file(dir.path().join("tokenizer.json")).expect("remove");
    let err = open_err(dir.path());
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn missing_model_path() {
    let err = open_err(Path::new("/nonexistent/model"));
    assert!(err.contains("/nonexistent/model"), "{err}");
}

#[test]
fn tensor_of_the_wrong_shape() {
    let config = tiny_config(Architecture::Llama);
    let mut weights = random_weights(&config, 1);
    let name = "model.layers.1.self_attn.k_proj.weight";
    weights.insert(
        name,
        HostTensor::new(vec![16, 64], vec![0.0; 16 * 64]).expect("shape"),
    );
    let err = Llama::<B>::load(config, &weights, &Default::default()).expect_err("must fail");
    assert!(
        matches!(&err, ModelError::TensorShape { name: n, .. } if n == name),
        "{err}"
    );
    assert!(err.to_string().contains("[32, 64]"), "{err}");
}

#[test]
fn missing_tensor() {
    let config = tiny_config(Architecture::Llama);
    let mut weights = random_weights(&config, 1);
    weights.remove("model.norm.weight");
    let err = Llama::<B>::load(config, &weights, &Default::default()).expect_err("must fail");
    assert!(err.to_string().contains("model.norm.weight"), "{err}");
}

#[test]
fn prompt_longer_than_max_position_embeddings() {
    let config = tiny_config(Architecture::Llama);
    let m = Llama::<B>::load(
        config.clone(),
        &random_weights(&config, 1),
        &Default::default(),
    )
    .expect("load");
    let n = config.max_position_embeddings + 1;
    let ids = vec![1u32; n];
    let positions: Vec<usize> = (0..n).collect();
    let err = m
        .forward(
            &ids,
            &positions,
            &mut m.new_cache(),
            &ForwardOptions::default(),
        )
        .expect_err("too long");
    assert!(err.to_string().contains("max_position_embeddings"), "{err}");
    let err = m
        .forward(&[], &[], &mut m.new_cache(), &ForwardOptions::default())
        .expect_err("empty");
    assert!(err.to_string().contains("empty"), "{err}");
}

/// A small GGUF: one `general.architecture` key and one 2×32 tensor of type `tensor_type`.
fn gguf_bytes(magic: &[u8; 4], tensor_type: u32) -> Vec<u8> {
    common::gguf_file(
        magic,
        &[("general.architecture", Meta::Str("llama"))],
        &[(
            "token_embd.weight",
            vec![32, 2],
            tensor_type,
            vec![0u8; 64 * 4],
        )],
    )
}

fn gguf_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, bytes).expect("write");
    GgufFile::open(&path).expect_err("must fail").to_string()
}

#[test]
fn a_valid_small_gguf_parses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, gguf_bytes(b"GGUF", 0)).expect("write");
    let file = GgufFile::open(&path).expect("parses");
    assert_eq!(file.tensors.len(), 1);
    assert_eq!(
        file.dequantize("token_embd.weight").expect("tensor").shape,
        vec![2, 32]
    );
}

#[test]
fn gguf_with_wrong_magic() {
    let err = gguf_err(&gguf_bytes(b"GGUX", 0));
    assert!(err.contains("magic"), "{err}");
}

#[test]
fn gguf_with_truncated_tensor_table() {
    let bytes = gguf_bytes(b"GGUF", 0);
    // cut inside the tensor entry (after its name)
    let cut = 4 + 4 + 8 + 8 + (8 + 20) + 4 + (8 + 5) + (8 + 17) + 6;
    let err = gguf_err(&bytes[..cut]);
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn gguf_with_truncated_data() {
    let bytes = gguf_bytes(b"GGUF", 0);
    let err = gguf_err(&bytes[..bytes.len() - 10]);
    assert!(
        err.contains("truncated") && err.contains("token_embd.weight"),
        "{err}"
    );
}

#[test]
fn gguf_with_unknown_quantization_type() {
    let err = gguf_err(&gguf_bytes(b"GGUF", 99));
    assert!(err.contains("ggml type 99"), "{err}");
}

#[test]
fn gguf_with_absurd_counts() {
    let mut bytes = gguf_bytes(b"GGUF", 0);
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = gguf_err(&bytes);
    assert!(err.contains("tensor count"), "{err}");
}
