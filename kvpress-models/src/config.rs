//! A serde mirror of Hugging Face `config.json` for the Llama family (Llama 2/3/3.1/3.2,
//! SmolLM2, Mistral, Qwen2/2.5, Qwen3), validated on load.

use std::path::Path;

use kvpress_core::RopeScaling;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ModelError, Result};

/// The architectures this port implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3/3.1/3.2, SmolLM2 (`model_type: llama`).
    Llama,
    /// Mistral (sliding-window attention when configured).
    Mistral,
    /// Qwen2 / Qwen2.5: biases on q/k/v.
    Qwen2,
    /// Qwen3: per-head RMSNorm on q and k.
    Qwen3,
}

/// Fields of `config.json` that the decoder uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `model_type` (`llama`, `mistral`, `qwen2`, `qwen3`).
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// `architectures`, e.g. `["LlamaForCausalLM"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// Residual stream width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); defaults to `num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Head dimension; defaults to `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Longest supported context.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base (transformers 4 layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// RoPE scaling (transformers 4 layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// RoPE base and scaling (transformers 5 layout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    /// `lm_head` shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o projections (Llama option; Qwen2 always has q/k/v biases).
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// MLP activation; only `silu` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Mistral sliding window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Qwen2's switch for the sliding window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// BOS id(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<Value>,
    /// EOS id(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<Value>,
}

fn default_model_type() -> String {
    "llama".into()
}
fn default_max_positions() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}

impl LlamaConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let config: Self = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: Some(path.to_path_buf()),
            detail: e.to_string(),
        })?;
        config.validate().map_err(|e| match e {
            ModelError::Config { detail, .. } => ModelError::Config {
                path: Some(path.to_path_buf()),
                detail,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Checks that the numbers are consistent.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ModelError::config(format!("{name} must be positive")));
            }
        }
        let kv = self.num_kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return Err(ModelError::config(format!(
                "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({kv})",
                self.num_attention_heads
            )));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(ModelError::config(format!(
                "hidden_size ({}) is not divisible by num_attention_heads ({}) and no head_dim is given",
                self.hidden_size, self.num_attention_heads
            )));
        }
        let d = self.head_dim();
        if d == 0 || !d.is_multiple_of(2) {
            return Err(ModelError::config(format!(
                "head_dim must be even and positive, got {d}"
            )));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(ModelError::config(format!(
                "rms_norm_eps must be positive, got {}",
                self.rms_norm_eps
            )));
        }
        if self.hidden_act != "silu" {
            return Err(ModelError::config(format!(
                "hidden_act `{}` is not supported (only silu)",
                self.hidden_act
            )));
        }
        self.architecture()?;
        self.rope()?;
        Ok(())
    }

    /// Which variant of the decoder this config describes.
    pub fn architecture(&self) -> Result<Architecture> {
        match self.model_type.as_str() {
            "llama" | "smollm2" | "smollm" => Ok(Architecture::Llama),
            "mistral" => Ok(Architecture::Mistral),
            "qwen2" => Ok(Architecture::Qwen2),
            "qwen3" => Ok(Architecture::Qwen3),
            other => Err(ModelError::config(format!(
                "model_type `{other}` is not supported (llama, mistral, qwen2, qwen3)"
            ))),
        }
    }

    /// Key/value heads.
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether q/k/v projections carry a bias.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || matches!(self.architecture(), Ok(Architecture::Qwen2))
    }

    /// Whether the output projection carries a bias.
    pub fn o_bias(&self) -> bool {
        self.attention_bias
            && !matches!(
                self.architecture(),
                Ok(Architecture::Qwen2 | Architecture::Qwen3)
            )
    }

    /// Sliding window in effect, if any.
    pub fn effective_sliding_window(&self) -> Option<usize> {
        match self.architecture() {
            Ok(Architecture::Mistral) => self.sliding_window,
            Ok(Architecture::Qwen2 | Architecture::Qwen3)
                if self.use_sliding_window == Some(true) =>
            {
                self.sliding_window
            }
            _ => None,
        }
    }

    /// EOS ids listed in the config.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        ids_of(self.eos_token_id.as_ref())
    }

    /// RoPE base and scaling, from either the transformers 4 or 5 layout.
    pub fn rope(&self) -> Result<(f64, RopeScaling)> {
        let params = self.rope_parameters.as_ref().and_then(Value::as_object);
        let theta = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or(self.rope_theta)
            .unwrap_or(10000.0);
        let scaling = match (
            params,
            self.rope_scaling.as_ref().and_then(Value::as_object),
        ) {
            (_, Some(s)) => Some(s),
            (Some(p), None) => Some(p),
            (None, None) => None,
        };
        let Some(s) = scaling else {
            return Ok((theta, RopeScaling::None));
        };
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let num = |k: &str| s.get(k).and_then(Value::as_f64);
        let need = |k: &str| {
            num(k).ok_or_else(|| ModelError::config(format!("rope scaling `{kind}` needs `{k}`")))
        };
        let original = num("original_max_position_embeddings");
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: need("factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: need("factor")?,
                low_freq_factor: need("low_freq_factor")?,
                high_freq_factor: need("high_freq_factor")?,
                original_max_position_embeddings: need("original_max_position_embeddings")?,
            },
            "yarn" => RopeScaling::Yarn {
                factor: need("factor")?,
                attention_factor: num("attention_factor"),
                beta_fast: num("beta_fast").unwrap_or(32.0),
                beta_slow: num("beta_slow").unwrap_or(1.0),
                mscale: num("mscale"),
                mscale_all_dim: num("mscale_all_dim"),
                original_max_position_embeddings: original
                    .unwrap_or(self.max_position_embeddings as f64),
                truncate: s.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            },
            other => {
                return Err(ModelError::config(format!(
                    "rope scaling type `{other}` is not supported (default, linear, llama3, yarn)"
                )));
            }
        };
        Ok((theta, scaling))
    }
}

/// Reads an id or a list of ids from a JSON value.
pub(crate) fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 100, "rope_theta": 10000.0
        })
    }

    fn parse(v: Value) -> Result<LlamaConfig> {
        let c: LlamaConfig =
            serde_json::from_value(v).map_err(|e| ModelError::config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn missing_field_is_named() {
        let mut v = base();
        v.as_object_mut().expect("object").remove("hidden_size");
        let err = parse(v).expect_err("must fail").to_string();
        assert!(err.contains("hidden_size"), "{err}");
    }

    #[test]
    fn inconsistent_heads_are_rejected() {
        let mut v = base();
        v["num_key_value_heads"] = 3.into();
        let err = parse(v).expect_err("must fail").to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");
    }

    #[test]
    fn reads_transformers5_rope_parameters() {
        let mut v = base();
        v.as_object_mut().expect("object").remove("rope_theta");
        v["rope_parameters"] = serde_json::json!({"rope_theta": 100000.0, "rope_type": "default"});
        let c = parse(v).expect("valid");
        assert_eq!(c.rope().expect("rope"), (100000.0, RopeScaling::None));
    }

    #[test]
    fn unknown_rope_type_is_rejected() {
        let mut v = base();
        v["rope_scaling"] = serde_json::json!({"rope_type": "dynamic", "factor": 2.0});
        assert!(parse(v).is_err());
    }
}
