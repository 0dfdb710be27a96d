//! ObservedAttentionPress (kvpress `observed_attention`): the attention each key actually
//! received during prefill, averaged over the queries that could see it (H2O-style, one shot).
//! Paper: arXiv 2306.14048.
//!
//! Score of key `j` of KV head `k`: `mean_{h ∈ group(k)} (Σ_i A[h, i, j]) / (n − j)` with `A` the
//! causal softmax attention of the prefill. kvpress needs eager attention and its `n × n`
//! weights; here the column sums are accumulated chunk by chunk
//! ([`kvpress_core::attention::attention_column_sums`]), so only `chunk × n` scores exist at once.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::attention::attention_column_sums;
use kvpress_core::error::{CoreError, Result};
use kvpress_core::{LayerInputs, Scorer};

/// Score elements formed at once while summing attention columns (64 MiB in f32).
const MAX_SCORE_ELEMENTS: usize = 1 << 24;

/// The observed-attention scorer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObservedAttention;

impl<B: Backend> Scorer<B> for ObservedAttention {
    /// `[1, h_kv, n]` mean attention received per visible query.
    fn score(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        _values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let [_, h_kv, n, d] = keys.dims();
        if inputs.queries.dims()[2] != n {
            return Err(CoreError::Invalid {
                name: "observed_attention",
                detail: format!(
                    "needs the queries of the whole prefill ({n} keys, {} queries)",
                    inputs.queries.dims()[2]
                ),
            });
        }
        let sums = attention_column_sums(
            inputs.queries,
            keys,
            (d as f32).powf(-0.5),
            MAX_SCORE_ELEMENTS,
        )?;
        let g = sums.len() / h_kv;
        let mut out = Vec::with_capacity(h_kv * n);
        for group in sums.chunks(g) {
            out.extend((0..n).map(|j| {
                let total: f32 = group.iter().map(|row| row[j]).sum();
                total / g as f32 / (n - j) as f32
            }));
        }
        Ok(Tensor::from_data(
            TensorData::new(out, [1, h_kv, n]),
            &keys.device(),
        ))
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::Fixture;
    use burn::tensor::TensorData;

    #[test]
    fn identical_keys_share_attention_evenly() {
        // With all keys equal, query i spreads 1/(i+1) over keys 0..=i, so key j receives
        // Σ_{i≥j} 1/(i+1) from n − j queries.
        let (n, d) = (4, 2);
        let mut f = Fixture::new(2, 1, n, d);
        f.keys = Tensor::from_data(
            TensorData::new(vec![1.0f32; n * d], [1, 1, n, d]),
            &Default::default(),
        );
        let got: Vec<f32> = ObservedAttention
            .score(&f.inputs(), &f.keys, &f.keys)
            .expect("score")
            .into_data()
            .to_vec()
            .expect("f32");
        let h = |j: usize| (j..n).map(|i| 1.0 / (i + 1) as f32).sum::<f32>() / (n - j) as f32;
        // key 0: (1 + 1/2 + 1/3 + 1/4)/4; key 3: (1/4)/1
        let want = [h(0), h(1), h(2), h(3)];
        assert!((want[0] - 25.0 / 48.0).abs() < 1e-6);
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
}
