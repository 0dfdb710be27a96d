//! NonCausalAttnPress (kvpress `non_causal_attention`): bidirectional attention inside fixed
//! chunks; a key's importance is the total attention it receives from all queries of its chunk,
//! times its value norm, smoothed and standardised. Paper: Compactor, arXiv 2507.08143.
//!
//! Queries and keys (RoPE applied, keys repeated to the query heads) are zero-padded to a
//! multiple of `chunk_size`; per chunk `softmax(Q Kᵀ)` (no `1/√d`, padded key logits at
//! `−1e-9`, as kvpress: padding is effectively not masked); column sums over the chunk's
//! queries, cropped to `n`, averaged over the group, times `‖v_i‖₂`, average-pooled (width 3,
//! zero padding counted) and z-scored over the whole layer.

use burn::tensor::{Tensor, TensorData, activation::softmax, backend::Backend};
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::{to_host, z_scores};
use kvpress_core::{LayerInputs, Scorer, moments};

use crate::snapkv::average_pool;

/// The non-causal chunked attention scorer (default `chunk_size = 256`).
#[derive(Debug, Clone, Copy)]
pub struct NonCausalAttention {
    /// Tokens per chunk.
    pub chunk_size: usize,
}

impl Default for NonCausalAttention {
    fn default() -> Self {
        Self { chunk_size: 256 }
    }
}

impl NonCausalAttention {
    /// Raw (not standardised) scores `h_kv` rows of `n`.
    pub fn raw<B: Backend>(
        &self,
        queries: &Tensor<B, 4>,
        keys: &Tensor<B, 4>,
        values: &Tensor<B, 4>,
    ) -> Result<Vec<Vec<f32>>> {
        let [_, h_kv, n, d] = keys.dims();
        let [_, h, m, _] = queries.dims();
        let c = self.chunk_size;
        if c == 0 || m != n || h % h_kv != 0 {
            return Err(CoreError::Invalid {
                name: "non_causal_attention",
                detail: format!(
                    "needs a positive chunk_size and the prefill's queries ({m} for {n} keys)"
                ),
            });
        }
        let g = h / h_kv;
        let chunks = n.div_ceil(c);
        let padded = chunks * c;
        let device = keys.device();
        let pad = |t: Tensor<B, 4>, heads: usize| {
            if padded == n {
                t
            } else {
                Tensor::cat(
                    vec![t, Tensor::zeros([1, heads, padded - n, d], &device)],
                    2,
                )
            }
        };
        let q = pad(queries.clone(), h).reshape([h * chunks, c, d]);
        let k = pad(
            keys.clone()
                .unsqueeze_dim::<5>(2)
                .expand([1, h_kv, g, n, d])
                .reshape([1, h, n, d]),
            h,
        )
        .reshape([h * chunks, c, d]);
        let mut bias = vec![0f32; chunks * c];
        for b in bias.iter_mut().skip(n) {
            *b = -1e-9;
        }
        let bias = Tensor::<B, 2>::from_data(TensorData::new(bias, [chunks, c]), &device)
            .reshape([1, chunks, 1, c]);
        let logits = q.matmul(k.swap_dims(1, 2)).reshape([h, chunks, c, c]) + bias;
        let columns = softmax(logits, 3)
            .sum_dim(2)
            .reshape([h, padded])
            .narrow(1, 0, n)
            .reshape([h_kv, g, n])
            .mean_dim(1)
            .reshape([h_kv, n]);
        let v_norms = moments::row_norms(values).reshape([h_kv, n]);
        let weighted = to_host(columns * v_norms)?;
        // average pool of width 3 with zero padding counted
        Ok(weighted.chunks(n).map(|row| average_pool(row, 3)).collect())
    }
}

impl<B: Backend> Scorer<B> for NonCausalAttention {
    /// `[1, h_kv, n]` z-scores.
    fn score(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let [_, h_kv, n, _] = keys.dims();
        let mut flat: Vec<f32> = self
            .raw(inputs.queries, keys, values)?
            .into_iter()
            .flatten()
            .collect();
        z_scores(&mut flat);
        Ok(Tensor::from_data(
            TensorData::new(flat, [1, h_kv, n]),
            &keys.device(),
        ))
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::Fixture;

    #[test]
    fn zero_queries_spread_attention_evenly_inside_chunks() {
        // zero queries: every key of a chunk of c gets 1/c from each of the chunk's c rows,
        // so column sums are 1 (the padded keys of the last chunk take their share too)
        let mut f = Fixture::new(1, 1, 6, 2);
        f.queries = Tensor::zeros([1, 1, 6, 2], &Default::default());
        let values = Tensor::ones([1, 1, 6, 2], &Default::default());
        let raw = NonCausalAttention { chunk_size: 4 }
            .raw(&f.queries, &f.keys, &values)
            .expect("raw");
        // ‖v‖ = √2; pooled: ends see one zero neighbour
        let s2 = 2f32.sqrt();
        let want = [2.0 * s2 / 3.0, s2, s2, s2, s2, 2.0 * s2 / 3.0];
        for (a, b) in raw[0].iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{:?}", raw[0]);
        }
    }
}
