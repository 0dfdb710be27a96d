//! The text side of a model: the HF `tokenizer.json` (through the `tokenizers` crate), the
//! special tokens of `tokenizer_config.json` and the chat template.

use std::path::Path;

use serde_json::Value;

use crate::chat::{ChatMessage, ChatTemplate};
use crate::error::{ModelError, Result};

/// Tokenizer, special tokens and chat template of one model.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
    chat_template: Option<ChatTemplate>,
    model_max_length: Option<usize>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

impl TextTokenizer {
    /// Builds from a `tokenizer.json` value, a `tokenizer_config.json` value and an optional
    /// template that overrides the one in the config (`chat_template.jinja`).
    pub fn from_values(
        tokenizer_json: &Value,
        config: &Value,
        template: Option<String>,
    ) -> Result<Self> {
        let text = serde_json::to_string(tokenizer_json)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let inner: tokenizers::Tokenizer = text
            .parse()
            .map_err(|e| ModelError::Tokenizer(format!("cannot build the tokenizer: {e}")))?;
        let bos_token = token_string(config.get("bos_token"));
        let eos_token = token_string(config.get("eos_token"));
        let template = template.or_else(|| match config.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(String::from),
            _ => None,
        });
        let chat_template = template
            .map(|t| ChatTemplate::new(&t, bos_token.as_deref(), eos_token.as_deref()))
            .transpose()?;
        let model_max_length = config
            .get("model_max_length")
            .and_then(Value::as_f64)
            .filter(|v| *v < 1e15)
            .map(|v| v as usize);
        Ok(Self {
            inner,
            bos_token,
            eos_token,
            chat_template,
            model_max_length,
        })
    }

    /// Loads `tokenizer.json`, `tokenizer_config.json` (optional) and `chat_template.jinja`
    /// (optional) from an HF directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::Tokenizer(format!(
                "{} is missing: the model directory needs an HF tokenizer.json",
                path.display()
            )));
        }
        let read_json = |p: &Path| -> Result<Value> {
            let text = std::fs::read_to_string(p).map_err(|e| ModelError::io(p, e))?;
            serde_json::from_str(&text)
                .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", p.display())))
        };
        let tokenizer = read_json(&path)?;
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            read_json(&config_path)?
        } else {
            Value::Object(Default::default())
        };
        let template_path = dir.join("chat_template.jinja");
        let template = if template_path.is_file() {
            Some(
                std::fs::read_to_string(&template_path)
                    .map_err(|e| ModelError::io(&template_path, e))?,
            )
        } else {
            None
        };
        Self::from_values(&tokenizer, &config, template)
    }

    /// Token ids of `text`; `add_special_tokens` runs the post-processor (e.g. adds BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| ModelError::Tokenizer(format!("encoding failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::Tokenizer(format!("decoding failed: {e}")))
    }

    /// Id of a token string, if in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The BOS token string.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The EOS token string.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// `model_max_length` of the tokenizer config.
    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }

    /// Whether a chat template is available.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Renders `messages` with the chat template.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.chat_template
            .as_ref()
            .ok_or_else(|| ModelError::ChatTemplate("this tokenizer has no chat template".into()))?
            .render(messages, add_generation_prompt)
    }
}
