//! Where a model's parameters come from: safetensors checkpoints, GGUF files or memory.
//!
//! Every source hands out tensors under their Hugging Face names and layouts (Linear weights
//! `[out, in]`), dequantized or converted to `f32` on the host.

use std::collections::HashMap;

use crate::error::{ModelError, Result};

/// A tensor on the host, row-major `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor from its shape and values; fails if the counts differ.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(ModelError::Input(format!(
                "tensor of shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }
}

/// A store of named parameters (HF names).
pub trait WeightSource {
    /// The tensor `name`, converted to `f32`.
    fn tensor(&self, name: &str) -> Result<HostTensor>;
    /// Whether `name` exists.
    fn contains(&self, name: &str) -> bool;
    /// Every tensor name, sorted.
    fn names(&self) -> Vec<String>;
}

/// Parameters held in memory (random test models, converted checkpoints).
#[derive(Debug, Default, Clone)]
pub struct MemoryWeights {
    tensors: HashMap<String, HostTensor>,
}

impl MemoryWeights {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: HostTensor) {
        self.tensors.insert(name.into(), tensor);
    }

    /// Removes a tensor.
    pub fn remove(&mut self, name: &str) -> Option<HostTensor> {
        self.tensors.remove(name)
    }
}

impl WeightSource for MemoryWeights {
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tensors.keys().cloned().collect();
        names.sort();
        names
    }
}
