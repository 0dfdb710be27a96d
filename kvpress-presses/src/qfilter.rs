//! QFilterPress (kvpress `qfilter`): a learned direction per layer and KV head (the "Q-filter",
//! the principal direction of that head's queries) projected on the keys approximates the
//! attention they will get. Paper: Q-Filters, arXiv 2503.02812.
//!
//! Score of entry `i` of KV head `h` in layer `l`: `−⟨f_{l,h}, k_i⟩` (post-RoPE keys).
//!
//! **Artefact**: kvpress downloads the filters from the Hugging Face hub (`nthngdy/<model>_qfilt`);
//! here they are read from a local safetensors file given as `qfilter(path='…')`, holding one
//! tensor `q_filters` of shape `[layers, kv_heads, head_dim]` (F32, F16 or BF16) — the
//! `q_filters` parameter of the hub's checkpoint, saved with `safetensors.torch.save_file`.

use std::path::Path;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::artifacts::Artifact;
use kvpress_core::error::{CoreError, Result};
use kvpress_core::{LayerInputs, Scorer};

/// The Q-filter scorer with its filters.
#[derive(Debug, Clone)]
pub struct QFilter {
    /// `[layers][kv_heads · head_dim]` filters.
    filters: Vec<Vec<f32>>,
    kv_heads: usize,
    head_dim: usize,
}

impl QFilter {
    /// Filters `[layers, kv_heads, head_dim]` given directly.
    pub fn new(filters: Vec<f32>, shape: [usize; 3]) -> Result<Self> {
        let [layers, kv_heads, head_dim] = shape;
        if filters.len() != layers * kv_heads * head_dim || filters.is_empty() {
            return Err(CoreError::Invalid {
                name: "q_filters",
                detail: format!("{} values for shape {shape:?}", filters.len()),
            });
        }
        Ok(Self {
            filters: filters
                .chunks(kv_heads * head_dim)
                .map(<[f32]>::to_vec)
                .collect(),
            kv_heads,
            head_dim,
        })
    }

    /// Reads the `q_filters` tensor of a safetensors file.
    pub fn load(path: &Path) -> Result<Self> {
        let file = Artifact::open(path, "qfilter")?;
        let shape = file
            .shape("q_filters")
            .map(<[usize]>::to_vec)
            .unwrap_or_default();
        let [l, h, d] = shape[..] else {
            return Err(CoreError::Invalid {
                name: "qfilter",
                detail: format!(
                    "{} needs a tensor `q_filters` of shape [layers, kv_heads, head_dim]",
                    path.display()
                ),
            });
        };
        Self::new(file.tensor("q_filters", &[l, h, d])?.to_vec(), [l, h, d])
    }
}

impl<B: Backend> Scorer<B> for QFilter {
    /// `[1, h_kv, n]` = −⟨filter, key⟩.
    fn score(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        _values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let [_, h_kv, n, d] = keys.dims();
        let filters = self
            .filters
            .get(inputs.layer)
            .ok_or_else(|| CoreError::Invalid {
                name: "qfilter",
                detail: format!(
                    "the filters cover {} layers, the model has more (layer {})",
                    self.filters.len(),
                    inputs.layer
                ),
            })?;
        if h_kv != self.kv_heads || d != self.head_dim {
            return Err(CoreError::Invalid {
                name: "qfilter",
                detail: format!(
                    "filters for {} KV heads of {}, the model has {h_kv} of {d}",
                    self.kv_heads, self.head_dim
                ),
            });
        }
        let f = Tensor::<B, 4>::from_data(
            TensorData::new(filters.clone(), [1, h_kv, d, 1]),
            &keys.device(),
        );
        Ok(keys.clone().matmul(f).neg().reshape([1, h_kv, n]))
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::Fixture;

    #[test]
    fn scores_are_minus_the_projection_on_the_filter() {
        let mut f = Fixture::new(1, 2, 2, 2);
        f.keys = Tensor::from_data(
            TensorData::new(
                vec![1.0f32, 2.0, 3.0, 4.0, 1.0, 0.0, 0.0, 1.0],
                [1, 2, 2, 2],
            ),
            &Default::default(),
        );
        // head 0 filter [1, 0], head 1 filter [0, 2]
        let q = QFilter::new(vec![1.0, 0.0, 0.0, 2.0], [1, 2, 2]).expect("filters");
        let s: Vec<f32> = q
            .score(&f.inputs(), &f.keys, &f.keys)
            .expect("score")
            .into_data()
            .to_vec()
            .expect("f32");
        assert_eq!(s, vec![-1.0, -3.0, -0.0, -2.0]);
        let mut bad = f;
        bad.layer = 3;
        assert!(q.score(&bad.inputs(), &bad.keys, &bad.keys).is_err());
    }
}
