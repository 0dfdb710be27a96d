//! # kvpress-models
//!
//! The Llama family on burn and everything needed to run it: config, weights from HF
//! safetensors directories or GGUF files, tokenizer, chat template, greedy generation, and the
//! default model (SmolLM2-135M-Instruct) fetched from the Python package registry.

pub mod chat;
pub mod config;
pub mod convert;
pub mod default_model;
pub mod error;
pub mod generate;
pub mod llama;
pub mod loading;
pub mod pipeline;
pub mod testing;
pub mod tokenizer;
pub mod weights;

pub use chat::ChatMessage;
pub use config::LlamaConfig;
pub use error::{ModelError, Result};
pub use llama::Llama;
pub use loading::ModelFiles;
pub use tokenizer::TextTokenizer;
