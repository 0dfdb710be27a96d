//! Opening a model from disk: an HF checkpoint directory or a GGUF file.

pub mod gguf;
pub mod safetensors;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use serde_json::Value;

use crate::config::{LlamaConfig, ids_of};
use crate::error::{ModelError, Result};
use crate::llama::Llama;
use crate::tokenizer::TextTokenizer;
use crate::weights::WeightSource;
use gguf::{GgufFile, GgufWeights};
use safetensors::SafetensorsWeights;

/// What `--model` points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPath {
    /// A directory with `config.json`, safetensors and tokenizer files.
    HfDir(PathBuf),
    /// A `.gguf` file.
    Gguf(PathBuf),
}

impl ModelPath {
    /// Classifies `path`, failing with a clear message if it is neither.
    pub fn detect(path: &Path) -> Result<Self> {
        if path.is_dir() {
            if !path.join("config.json").is_file() {
                return Err(ModelError::Config {
                    path: Some(path.join("config.json")),
                    detail: "the model directory has no config.json".into(),
                });
            }
            Ok(Self::HfDir(path.to_path_buf()))
        } else if path.is_file() {
            Ok(Self::Gguf(path.to_path_buf()))
        } else {
            Err(ModelError::Input(format!(
                "{} does not exist: --model takes an HF checkpoint directory or a .gguf file",
                path.display()
            )))
        }
    }
}

/// The pieces of a model before the weights are put on a device.
pub struct ModelFiles {
    /// The config.
    pub config: LlamaConfig,
    /// The parameters.
    pub weights: Box<dyn WeightSource>,
    /// Tokenizer and chat template.
    pub tokenizer: TextTokenizer,
    /// Ids that end generation (`generation_config.json`, else `config.json`, else the tokenizer's eos).
    pub eos_token_ids: Vec<u32>,
    /// A short name for reports (directory or file stem).
    pub name: String,
}

impl std::fmt::Debug for ModelFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFiles")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("eos_token_ids", &self.eos_token_ids)
            .finish_non_exhaustive()
    }
}

impl ModelFiles {
    /// Opens an HF directory or a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        match ModelPath::detect(path)? {
            ModelPath::HfDir(dir) => Self::open_hf_dir(&dir),
            ModelPath::Gguf(file) => Self::open_gguf(&file),
        }
    }

    fn open_hf_dir(dir: &Path) -> Result<Self> {
        let config = LlamaConfig::from_file(&dir.join("config.json"))?;
        let weights = SafetensorsWeights::open_dir(dir)?;
        let tokenizer = TextTokenizer::from_dir(dir)?;
        let gen_path = dir.join("generation_config.json");
        let mut eos = Vec::new();
        if gen_path.is_file() {
            let text =
                std::fs::read_to_string(&gen_path).map_err(|e| ModelError::io(&gen_path, e))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
                path: Some(gen_path.clone()),
                detail: e.to_string(),
            })?;
            eos = ids_of(v.get("eos_token_id"));
        }
        if eos.is_empty() {
            eos = config.eos_token_ids();
        }
        if eos.is_empty() {
            eos.extend(tokenizer.eos_token().and_then(|t| tokenizer.token_to_id(t)));
        }
        Ok(Self {
            config,
            weights: Box::new(weights),
            tokenizer,
            eos_token_ids: eos,
            name: name_of(dir),
        })
    }

    fn open_gguf(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let config = file.config()?;
        let (tok_json, tok_config) = gguf::tokenizer_json(&file)?;
        let tokenizer = TextTokenizer::from_values(&tok_json, &tok_config, None)?;
        let eos_token_ids = config.eos_token_ids();
        Ok(Self {
            config,
            weights: Box::new(GgufWeights::new(file)?),
            tokenizer,
            eos_token_ids,
            name: name_of(path),
        })
    }

    /// Puts the weights on `device`.
    pub fn load_model<B: Backend>(&self, device: &B::Device) -> Result<Llama<B>> {
        Llama::load(self.config.clone(), self.weights.as_ref(), device)
    }
}

fn name_of(path: &Path) -> String {
    path.file_stem()
        .or_else(|| path.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}
