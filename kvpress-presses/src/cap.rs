//! CapPress (kvpress `cap`, CAPKV): a token is valuable when its key is aligned with an anchor
//! of the expected future queries and its value direction is not already covered by the other
//! tokens (a log-det leverage proxy). Paper: arXiv 2604.25975.
//!
//! Per query head `h`, without the `n_sink` sinks: `μ` = mean of the pre-RoPE queries rotated by
//! ExpectedAttention's averaged rotation `R̄` (the `n_future_positions` after the last query);
//! `c_i = cos(μ, k_i)`, `w_i = exp(τ c_i − max τ c)`; `A = I + Σ_i (w_i + ε) v_i v_iᵀ`;
//! `s_i = w_i · v_iᵀ A⁻¹ v_i`; averaged over the group; sinks protected.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::to_host;
use kvpress_core::{LayerInputs, Scorer};

use crate::leverage::{cholesky, inverse_quadratic};

/// The CAP scorer (defaults as kvpress: τ = 5, 512 future positions, 4 sinks, ε = 1e-6).
#[derive(Debug, Clone, Copy)]
pub struct Cap {
    /// Sharpness of the alignment weights.
    pub tau: f64,
    /// Future positions the rotation is averaged over.
    pub n_future_positions: usize,
    /// First tokens always kept.
    pub n_sink: usize,
    /// Added to the weights in the capacity matrix.
    pub epsilon: f64,
}

impl Default for Cap {
    fn default() -> Self {
        Self {
            tau: 5.0,
            n_future_positions: 512,
            n_sink: 4,
            epsilon: 1e-6,
        }
    }
}

impl<B: Backend> Scorer<B> for Cap {
    /// `[1, h_kv, n]`; the sinks score 0 and are protected.
    fn score(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let [_, h_kv, n, d] = keys.dims();
        let sink = self.n_sink;
        let [_, h, m, _] = inputs.queries_pre_rope.dims();
        let first = inputs
            .positions
            .iter()
            .position(|&p| p >= sink)
            .unwrap_or(m);
        if n <= sink || first == m || h % h_kv != 0 {
            return Err(CoreError::Invalid {
                name: "n_sink",
                detail: format!("cap keeps {sink} sink tokens and needs more than that, got {n}"),
            });
        }
        let g = h / h_kv;
        let t = n - sink;
        let next = inputs.positions.iter().max().map_or(n, |&p| p + 1);
        let future: Vec<usize> = (next..next + self.n_future_positions.max(1)).collect();
        let r = inputs.rope.averaged_rotation::<B>(&future, &keys.device());
        let mean = inputs
            .queries_pre_rope
            .clone()
            .narrow(2, first, m - first)
            .mean_dim(2)
            .reshape([h, d]);
        let anchors = to_host(mean.matmul(r.transpose()))?; // (R̄ μ)ᵀ per head
        let ks = to_host(keys.clone().narrow(2, sink, t))?;
        let vs = to_host(values.clone().narrow(2, sink, t))?;
        let mut out = vec![0f32; h_kv * n];
        for head in 0..h {
            let kv = head / g;
            let mu = &anchors[head * d..(head + 1) * d];
            let mu_norm = mu.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            let rows = |data: &[f32], i: usize| {
                let base = (kv * t + i) * d;
                data[base..base + d]
                    .iter()
                    .map(|&x| x as f64)
                    .collect::<Vec<f64>>()
            };
            let cos: Vec<f64> = (0..t)
                .map(|i| {
                    let k = rows(&ks, i);
                    let k_norm = k.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
                    let dot: f64 = k.iter().zip(mu).map(|(a, &b)| a * b as f64).sum();
                    (dot / (k_norm * mu_norm as f64)).clamp(-1.0, 1.0)
                })
                .collect();
            let top = cos.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = cos.iter().map(|c| (self.tau * (c - top)).exp()).collect();
            let mut a = vec![0f64; d * d];
            for i in 0..d {
                a[i * d + i] = 1.0;
            }
            for (i, wi) in w.iter().enumerate() {
                let v = rows(&vs, i);
                for x in 0..d {
                    for y in 0..d {
                        a[x * d + y] += (wi + self.epsilon) * v[x] * v[y];
                    }
                }
            }
            let l = cholesky(&a, d).ok_or_else(|| CoreError::Invalid {
                name: "cap",
                detail: "the capacity matrix is not positive definite".into(),
            })?;
            for (i, wi) in w.iter().enumerate() {
                let s = wi * inverse_quadratic(&l, d, &rows(&vs, i));
                out[kv * n + sink + i] += (s / g as f64) as f32;
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(out, [1, h_kv, n]),
            &keys.device(),
        ))
    }

    fn protected(&self, _inputs: &LayerInputs<'_, B>, n: usize) -> Result<Vec<bool>> {
        Ok((0..n).map(|i| i < self.n_sink).collect())
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::Fixture;

    #[test]
    fn one_token_scores_its_leverage_in_the_capacity_matrix() {
        // one head, no sinks, one token: w = 1, A = I + (1 + ε) v vᵀ, s = vᵀ A⁻¹ v
        // = ‖v‖² / (1 + (1 + ε)‖v‖²) (Sherman–Morrison); v = [3, 4] → 25 / 26
        let mut f = Fixture::new(1, 1, 1, 2);
        let values = Tensor::from_data(
            TensorData::new(vec![3.0f32, 4.0], [1, 1, 1, 2]),
            &Default::default(),
        );
        f.keys = values.clone();
        let cap = Cap {
            n_sink: 0,
            epsilon: 0.0,
            ..Default::default()
        };
        let s: Vec<f32> = cap
            .score(&f.inputs(), &f.keys, &values)
            .expect("score")
            .into_data()
            .to_vec()
            .expect("f32");
        assert!((s[0] - 25.0 / 26.0).abs() < 1e-5, "{s:?}");
    }
}
