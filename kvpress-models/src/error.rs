//! Errors of model loading, tokenization and generation.

use std::path::PathBuf;

/// An error from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `config.json` (or GGUF metadata) is missing a field or is inconsistent.
    #[error("invalid model config{}: {detail}", path_suffix(.path))]
    Config {
        /// The file, when there is one.
        path: Option<PathBuf>,
        /// What is wrong.
        detail: String,
    },
    /// A safetensors file is malformed.
    #[error("invalid safetensors file {path}: {detail}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A GGUF file is malformed or uses something unsupported.
    #[error("invalid GGUF file {path}: {detail}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("tensor `{0}` is missing from the checkpoint")]
    MissingTensor(String),
    /// A tensor has a shape that does not fit the config.
    #[error("tensor `{name}` has shape {found:?}, the config implies {expected:?}")]
    TensorShape {
        /// HF tensor name.
        name: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// The tokenizer is missing or cannot be built.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// The input does not fit the model.
    #[error("{0}")]
    Input(String),
    /// Fetching the default model failed.
    #[error("fetching the default model: {0}")]
    Fetch(String),
    /// An error from the core primitives.
    #[error(transparent)]
    Core(#[from] kvpress_core::CoreError),
}

fn path_suffix(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

impl ModelError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A config error without a file.
    pub fn config(detail: impl Into<String>) -> Self {
        Self::Config {
            path: None,
            detail: detail.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
