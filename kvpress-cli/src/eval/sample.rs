//! One evaluation row in kvpress's column layout.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One question about one context, with its reference answers (kvpress's dataset columns:
/// `context, question, answer_prefix, answer(s), task, max_new_tokens`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Sample {
    /// The long text that is compressed.
    pub context: String,
    /// The question (never compressed unless the evaluation is query-aware).
    pub question: String,
    /// Text the answer starts with.
    pub answer_prefix: String,
    /// Reference answers (kvpress's `answer` / `answers` column: one string or a list).
    pub answers: Vec<String>,
    /// The task the row belongs to; metrics are computed per task.
    pub task: String,
    /// Tokens generated at most for this row.
    pub max_new_tokens: usize,
    /// Dataset-specific columns (`all_classes`, `length`, `needle`, `options`, ...), as read.
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A sample with the model's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Prediction {
    /// The evaluated row (its `context` may be empty when read back from `predictions.csv`).
    pub sample: Sample,
    /// The generated answer.
    pub predicted_answer: String,
}
