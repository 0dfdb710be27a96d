//! ExpectedAttentionPress (kvpress `expected_attention` scorer): the softmax attention each key
//! is expected to receive from future queries, modelled as a Gaussian fitted on the context's
//! own queries, optionally weighted by the value norm. Paper: arXiv 2510.00636.
//!
//! For one layer with `n` tokens, `T = n − n_sink`:
//! 1. `Q` = pre-RoPE queries of tokens `n_sink..n` (`[1, h_q, T, d]`); `μ = mean_t Q_t`,
//!    `Σ = (1/T) Σ_t (Q_t − μ)(Q_t − μ)ᵀ`. In decoding, the buffered recent queries instead.
//! 2. `R̄` = RoPE rotation averaged over the `n_future_positions` positions after the last
//!    query (`n ..` in a prefill; true absolute positions in decoding);
//!    `μ' = R̄ μ`, `Σ' = R̄ Σ R̄ᵀ`.
//! 3. For non-sink keys `k_i` of the head's KV group: `z_i = μ'·k_i/√d + k_iᵀ Σ' k_i / (2d)`
//!    (covariance term optional), `a = softmax_i(z)`, averaged over the query heads of the group.
//! 4. With `use_vnorm`: `s_i = (a_i + ε)·‖v_i‖₂`. The `n_sink` first entries are protected.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::to_host;
use kvpress_core::{LayerInputs, Scorer, activation, moments};

/// The expected-attention scorer (defaults as kvpress).
#[derive(Debug, Clone, Copy)]
pub struct ExpectedAttention {
    /// Future positions the rotation is averaged over (512).
    pub n_future_positions: usize,
    /// First tokens always kept and left out of the statistics (4).
    pub n_sink: usize,
    /// Include the covariance term (true).
    pub use_covariance: bool,
    /// Weight by the value norm (true).
    pub use_vnorm: bool,
    /// Added to the attention before the value weighting (0).
    pub epsilon: f64,
}

impl Default for ExpectedAttention {
    fn default() -> Self {
        Self {
            n_future_positions: 512,
            n_sink: 4,
            use_covariance: true,
            use_vnorm: true,
            epsilon: 0.0,
        }
    }
}

impl ExpectedAttention {
    /// Steps 2–4 for query statistics `mean` (`[1, h_q, 1, d]`) and `cov` (`[1, h_q, d, d]`,
    /// used when `use_covariance`), future positions from `next`: `[1, h_kv, n]` scores, the
    /// sinks at 0.
    pub fn score_with_statistics<B: Backend>(
        &self,
        rope: &kvpress_core::RotaryEmbedding,
        keys: &Tensor<B, 4>,
        values: &Tensor<B, 4>,
        mean: Tensor<B, 4>,
        cov: Option<Tensor<B, 4>>,
        next: usize,
    ) -> Result<Tensor<B, 3>> {
        let [_, h_kv, n, d] = keys.dims();
        let h = mean.dims()[1];
        let sink = self.n_sink;
        if n <= sink || h_kv == 0 || !h.is_multiple_of(h_kv) {
            return Err(CoreError::Invalid {
                name: "n_sink",
                detail: format!(
                    "expected_attention keeps {sink} sink tokens but the context has only {n}"
                ),
            });
        }
        let t = n - sink;
        let device = keys.device();
        // 2.–3. Logits of the non-sink keys under the queries' Gaussian rotated on average to
        //    the positions after the last query, [1, h_kv, g, T]: μ'·k/√d + kᵀ(R̄ΣR̄ᵀ)k/2d
        //    per query head of the group (the g query heads of a KV group read its keys
        //    together, in place).
        let future: Vec<usize> = (next..next + self.n_future_positions.max(1)).collect();
        let keys = keys.clone().narrow(2, sink, t);
        let cov = cov.filter(|_| self.use_covariance);
        let scales = ((d as f32).powf(-0.5), 1.0 / (2 * d) as f32);
        let logits = moments::gaussian_logits(rope, &future, &keys, &mean, cov.as_ref(), scales);
        // 4. on the host, where the scores go next: (a + ε)·‖v‖, the sinks at 0
        let mut attention = to_host(activation::grouped_softmax_mean(logits))?; // [h_kv, T]
        if self.use_vnorm {
            let norms = to_host(moments::row_norms(&values.clone().narrow(2, sink, t)))?;
            for (a, norm) in attention.iter_mut().zip(norms) {
                *a = (*a + self.epsilon as f32) * norm;
            }
        }
        let mut scores = vec![0f32; h_kv * n];
        for (row, a) in scores.chunks_exact_mut(n).zip(attention.chunks_exact(t)) {
            row[sink..].copy_from_slice(a);
        }
        Ok(Tensor::from_data(
            TensorData::new(scores, [1, h_kv, n]),
            &device,
        ))
    }
}

impl<B: Backend> Scorer<B> for ExpectedAttention {
    /// `[1, h_kv, n]`; the sinks score 0 and are protected.
    fn score(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let [_, h_kv, n, _] = keys.dims();
        let sink = self.n_sink;
        if n <= sink {
            return Err(CoreError::Invalid {
                name: "n_sink",
                detail: format!(
                    "expected_attention keeps {sink} sink tokens but the context has only {n}"
                ),
            });
        }
        let queries = inputs.queries_pre_rope;
        let [_, h, m, _] = queries.dims();
        if m > n || m != inputs.positions.len() || h % h_kv != 0 {
            return Err(CoreError::Shape {
                context: "expected_attention",
                detail: format!("queries {:?} for keys {:?}", queries.dims(), keys.dims()),
            });
        }
        // 1. Gaussian statistics of the queries at hand (the context's in a prefill, the
        //    buffered recent ones in decoding), sink positions excluded.
        let first = inputs
            .positions
            .iter()
            .position(|&p| p >= sink)
            .unwrap_or(m);
        if first == m {
            return Err(CoreError::Invalid {
                name: "n_sink",
                detail: "expected_attention has no query beyond the sinks to model".into(),
            });
        }
        let q = queries.clone().narrow(2, first, m - first); // [1, h, T_q, d]
        // μ = Σq/T, Σ = Σqqᵀ/T − μμᵀ
        let (mean, cov) = moments::row_moments(&q); // [1, h, 1, d], [1, h, d, d]
        let cov = self.use_covariance.then_some(cov);
        let next = inputs.positions.iter().max().map_or(n, |&p| p + 1);
        self.score_with_statistics(inputs.rope, keys, values, mean, cov, next)
    }

    fn protected(&self, _inputs: &LayerInputs<'_, B>, n: usize) -> Result<Vec<bool>> {
        Ok((0..n).map(|i| i < self.n_sink).collect())
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::Fixture;

    /// With one future position and no covariance, the logits are the dot products of the keys
    /// with the mean query rotated to that position: check against that, computed by hand.
    #[test]
    fn mean_term_equals_rotated_mean_query_dot_keys() {
        let f = Fixture::new(1, 1, 7, 4);
        let scorer = ExpectedAttention {
            n_future_positions: 1,
            n_sink: 2,
            use_covariance: false,
            use_vnorm: false,
            epsilon: 0.0,
        };
        let got: Vec<f32> = scorer
            .score(&f.inputs(), &f.keys, &f.keys)
            .expect("score")
            .into_data()
            .to_vec()
            .expect("f32");
        let q: Vec<f32> = f.queries.clone().into_data().to_vec().expect("f32");
        let k: Vec<f32> = f.keys.clone().into_data().to_vec().expect("f32");
        // mean of queries 2..7, rotated to position 7 with rotate_half RoPE
        let mut mean = [0f32; 4];
        for t in 2..7 {
            for c in 0..4 {
                mean[c] += q[t * 4 + c] / 5.0;
            }
        }
        let (cos, sin) = f.rope.cos_sin_host(&[7]);
        let rotated: Vec<f32> = (0..4)
            .map(|c| {
                let other = if c < 2 { -mean[c + 2] } else { mean[c - 2] };
                mean[c] * cos[c] + other * sin[c]
            })
            .collect();
        let logits: Vec<f32> = (2..7)
            .map(|i| (0..4).map(|c| rotated[c] * k[i * 4 + c]).sum::<f32>() / 2.0)
            .collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = logits.iter().map(|z| (z - max).exp()).sum();
        assert_eq!(&got[..2], &[0.0, 0.0]);
        for (i, z) in logits.iter().enumerate() {
            let want = (z - max).exp() / total;
            assert!(
                (got[2 + i] - want).abs() < 1e-5,
                "{i}: {} vs {want}",
                got[2 + i]
            );
        }
    }
}
