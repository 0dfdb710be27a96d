//! Shared helpers of the integration tests: the default model (fetched on first use) and the
//! reference outputs in `../shared/golden`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use kvpress_models::default_model::{cache_root, default_gguf_path, ensure_default_model};

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
