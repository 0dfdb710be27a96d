//! `kvpress convert`: a GGUF file to an HF checkpoint directory (f32 safetensors).

use std::path::Path;

use serde_json::json;

use crate::error::{ModelError, Result};
use crate::loading::gguf::{GgufFile, GgufWeights, tokenizer_json};
use crate::loading::safetensors::write_f32;
use crate::weights::WeightSource;

/// Converts `gguf` into `out_dir` (created if needed): `config.json`, `model.safetensors`,
/// `tokenizer.json`, `tokenizer_config.json` (with the chat template), `generation_config.json`.
/// `progress(done, total)` is called after each tensor.
pub fn convert_gguf(
    gguf: &Path,
    out_dir: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let file = GgufFile::open(gguf)?;
    let config = file.config()?;
    let (tokenizer, tokenizer_config) = tokenizer_json(&file)?;
    let weights = GgufWeights::new(file)?;
    std::fs::create_dir_all(out_dir).map_err(|e| ModelError::io(out_dir, e))?;
    let names = weights.names();
    let mut tensors = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        tensors.push((name.clone(), weights.tensor(name)?));
        progress(i + 1, names.len());
    }
    write_f32(&out_dir.join("model.safetensors"), &tensors)?;
    let write = |name: &str, value: &serde_json::Value| -> Result<()> {
        let path = out_dir.join(name);
        let text =
            serde_json::to_string_pretty(value).map_err(|e| ModelError::Input(e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| ModelError::io(&path, e))
    };
    let config_json =
        serde_json::to_value(&config).map_err(|e| ModelError::Input(e.to_string()))?;
    write("config.json", &config_json)?;
    write("tokenizer.json", &tokenizer)?;
    write("tokenizer_config.json", &tokenizer_config)?;
    write(
        "generation_config.json",
        &json!({"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}),
    )?;
    Ok(())
}
