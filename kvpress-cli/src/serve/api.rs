//! The request and response bodies of `kvpress serve` (OpenAI's chat/completions format with
//! kvpress extensions) and its JSON errors.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// An error answered as `{"error": {"message", "type"}}` with a status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    /// A 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
        }
    }

    /// Another status and error type.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.status.as_u16()}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// A message's content: a string, or OpenAI's list of typed parts (text parts are joined).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a multi-part content.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    /// The text of the content.
    ///
    /// # Errors
    /// When a part is not text.
    pub fn text(&self) -> Result<String, ApiError> {
        match self {
            Content::Text(t) => Ok(t.clone()),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.clone()),
                    (kind, _) => Err(ApiError::invalid(format!(
                        "content parts of type '{kind}' are not supported (text only)"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|parts| parts.join("")),
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Content,
}

/// The kvpress extensions shared by every generating request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Compression {
    /// A press expression (`snapkv`, `adakv(expected_attention)`); none: no compression.
    #[serde(default)]
    pub press: Option<String>,
    /// The outer press's compression ratio, in [0, 1).
    #[serde(default)]
    pub compression_ratio: Option<f64>,
    /// Quantized cache storage: `int8`, `int4` or `int2`.
    #[serde(default)]
    pub kv_quant: Option<String>,
    /// A context stored by `POST /v1/contexts`: its compressed cache answers the question.
    #[serde(default)]
    pub context_id: Option<String>,
}

/// How a generating request decodes (shared by chat and text completions).
#[derive(Debug, Clone, Deserialize)]
pub struct Decoding {
    #[serde(default, alias = "max_completion_tokens")]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub stream: bool,
    /// Generate `max_tokens` even past the end-of-sequence token (vLLM's extension).
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(flatten)]
    pub compression: Compression,
}

/// `POST /v1/chat/completions` (`model` and other OpenAI fields are accepted and ignored: the
/// server has one model).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub decoding: Decoding,
}

/// `POST /v1/completions`: the prompt is the compressed context; the model continues it, or
/// answers `question` (a kvpress extension) about it.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub question: Option<String>,
    #[serde(flatten)]
    pub decoding: Decoding,
}

/// `POST /v1/contexts`: compress a context once, ask about it many times.
#[derive(Debug, Clone, Deserialize)]
pub struct ContextRequest {
    pub context: String,
    #[serde(flatten)]
    pub compression: Compression,
}

/// `POST /v1/inspect` (the web page): the answer with and without compression and what was kept.
#[derive(Debug, Clone, Deserialize)]
pub struct InspectRequest {
    pub context: String,
    pub question: String,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(flatten)]
    pub compression: Compression,
}

/// What a compressed context holds, reported in `usage` and by `/v1/contexts`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CacheUsage {
    /// Context tokens (before compression).
    pub context_tokens: usize,
    /// Entries kept per KV head, averaged over layers and heads.
    pub kept_tokens: f64,
    /// Bytes the compressed cache holds.
    pub cache_bytes: usize,
    /// Bytes the same context takes uncompressed (f32, every entry).
    pub cache_bytes_uncompressed: usize,
}

/// The `usage` block of a completion.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    #[serde(flatten)]
    pub cache: CacheUsage,
}
