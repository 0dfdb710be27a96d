//! Shared helpers of the integration tests: the default model (fetched on first use) and the
//! reference outputs in `../shared/golden`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use kvpress_models::default_model::{cache_root, default_gguf_path, ensure_default_model};

/// The backend the integration tests run on: flex, or the CUDA device when built with
/// `--features cuda` (`scripts/gpu-check.sh`).
#[cfg(feature = "cuda")]
pub type B = burn::backend::Cuda;
/// The backend the integration tests run on: flex, or the CUDA device when built with
/// `--features cuda` (`scripts/gpu-check.sh`).
#[cfg(not(feature = "cuda"))]
pub type B = burn::backend::Flex;

/// The golden directory: `$KVPRESS_GOLDEN`, else `<workspace>/../shared/golden`.
pub fn golden_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("KVPRESS_GOLDEN") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden")
}

/// Reads a golden JSON file.
pub fn golden(name: &str) -> serde_json::Value {
    let path = golden_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e} (set KVPRESS_GOLDEN)", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// The converted default model directory, fetched once per test binary.
pub fn default_model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        ensure_default_model(&mut |_| {}).unwrap_or_else(|e| panic!("default model: {e}"))
    })
    .clone()
}

/// The verified GGUF of the default model.
pub fn default_gguf() -> PathBuf {
    default_model_dir();
    default_gguf_path(&cache_root())
}

/// A minimal tokenizer.json: byte-level BPE over the tokens `a`, `b` and `ab`.
pub const TINY_TOKENIZER: &str = r#"{"version":"1.0","added_tokens":[],"normalizer":null,
"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
"post_processor":null,"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},
"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]}}"#;

/// Writes `config.json` and the tiny `tokenizer.json` into `dir`.
pub fn write_config_and_tokenizer(dir: &std::path::Path, config: &serde_json::Value) {
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    std::fs::write(dir.join("tokenizer.json"), TINY_TOKENIZER).expect("tokenizer");
}

/// A metadata value for [`gguf_file`].
pub enum Meta<'a> {
    /// A string (type 8).
    Str(&'a str),
    /// A u32 (type 4).
    U32(u32),
    /// A bool (type 7).
    Bool(bool),
    /// An array of strings.
    Strs(Vec<&'a str>),
    /// An array of i32 (type 5).
    I32s(Vec<i32>),
}

fn gguf_string(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

/// Serialises a GGUF v3 file: metadata, then tensors given as
/// `(name, ggml dims fastest first, ggml type, raw bytes)`.
pub fn gguf_file(
    magic: &[u8; 4],
    meta: &[(&str, Meta<'_>)],
    tensors: &[(&str, Vec<u64>, u32, Vec<u8>)],
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(magic);
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        gguf_string(&mut b, key);
        match value {
            Meta::Str(s) => {
                b.extend(8u32.to_le_bytes());
                gguf_string(&mut b, s);
            }
            Meta::U32(v) => {
                b.extend(4u32.to_le_bytes());
                b.extend(v.to_le_bytes());
            }
            Meta::Bool(v) => {
                b.extend(7u32.to_le_bytes());
                b.push(u8::from(*v));
            }
            Meta::Strs(items) => {
                b.extend(9u32.to_le_bytes());
                b.extend(8u32.to_le_bytes());
                b.extend((items.len() as u64).to_le_bytes());
                for s in items {
                    gguf_string(&mut b, s);
                }
            }
            Meta::I32s(items) => {
                b.extend(9u32.to_le_bytes());
                b.extend(5u32.to_le_bytes());
                b.extend((items.len() as u64).to_le_bytes());
                for v in items {
                    b.extend(v.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0u64;
    for (name, dims, kind, data) in tensors {
        gguf_string(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(kind.to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    for (_, _, _, data) in tensors {
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.extend(data);
    }
    b
}
