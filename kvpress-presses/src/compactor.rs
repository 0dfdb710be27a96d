//! CompactorPress (kvpress `compactor`): blends key-cloud leverage (geometry) with non-causal
//! chunked attention: `s = β · z_leverage + z_attention`, computed on the context without its
//! first `sink_size_start` and last `sink_size_end` tokens, which are protected. kvpress takes
//! `β = blending`, or the compression ratio when unset (the registry does the same).
//! Paper: arXiv 2507.08143.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::error::Result;
use kvpress_core::press::z_scores;
use kvpress_core::{LayerInputs, Scorer};

use crate::leverage::Leverage;
use crate::non_causal_attention::NonCausalAttention;

/// The Compactor scorer (defaults: sinks 8 and 4, chunks of 256, sketch of 48, β = 0.35).
#[derive(Debug, Clone, Copy)]
pub struct Compactor {
    /// First tokens protected.
    pub sink_size_start: usize,
    /// Last tokens protected.
    pub sink_size_end: usize,
    /// Chunk of the non-causal attention.
    pub chunk_size: usize,
    /// Columns of the leverage sketch.
    pub sketch_dimension: usize,
    /// Weight of the leverage term.
    pub blending: f64,
}

impl Default for Compactor {
    fn default() -> Self {
        Self {
            sink_size_start: 8,
            sink_size_end: 4,
            chunk_size: 256,
            sketch_dimension: 48,
            blending: 0.35,
        }
    }
}

impl Compactor {
    /// Protected tokens at the start and the end of a context of `n`.
    fn edges(&self, n: usize) -> (usize, usize) {
        let left = self.sink_size_start.min(n);
        (left, self.sink_size_end.min(n - left))
    }
}

impl<B: Backend> Scorer<B> for Compactor {
    /// `[1, h_kv, n]`; the protected edges score 0.
    fn score(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let [_, h_kv, n, _] = keys.dims();
        let (left, right) = self.edges(n);
        let len = n - left - right;
        let mut out = vec![0f32; h_kv * n];
        if len > 0 {
            let hidden = inputs.hidden_states.clone().narrow(1, left, len);
            let queries = inputs.queries.clone().narrow(2, left, len);
            let pre = inputs.queries_pre_rope.clone().narrow(2, left, len);
            let sub = LayerInputs {
                hidden_states: &hidden,
                queries: &queries,
                queries_pre_rope: &pre,
                positions: &inputs.positions[left..left + len],
                ..*inputs
            };
            let (k, v) = (
                keys.clone().narrow(2, left, len),
                values.clone().narrow(2, left, len),
            );
            let leverage = Leverage {
                sketch_dimension: self.sketch_dimension,
            };
            let mut z_lev: Vec<f32> = leverage.raw(&sub, &k)?.into_iter().flatten().collect();
            z_scores(&mut z_lev);
            let attention = NonCausalAttention {
                chunk_size: self.chunk_size,
            };
            let mut z_att: Vec<f32> = attention
                .raw(&queries, &k, &v)?
                .into_iter()
                .flatten()
                .collect();
            z_scores(&mut z_att);
            for h in 0..h_kv {
                for i in 0..len {
                    let j = h * len + i;
                    out[h * n + left + i] = self.blending as f32 * z_lev[j] + z_att[j];
                }
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(out, [1, h_kv, n]),
            &keys.device(),
        ))
    }

    fn protected(&self, _inputs: &LayerInputs<'_, B>, n: usize) -> Result<Vec<bool>> {
        let (left, right) = self.edges(n);
        Ok((0..n).map(|i| i < left || i >= n - right).collect())
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::{Fixture, kept_positions};
    use kvpress_core::ScorerPress;

    #[test]
    fn the_edges_are_kept_and_the_blend_decides_the_rest() {
        let f = Fixture::new(2, 2, 60, 8);
        let kept = kept_positions(
            &f,
            &ScorerPress::new(Compactor::default(), 0.5).expect("press"),
        );
        for head in &kept {
            assert_eq!(head.len(), 30);
            assert!((0..8).chain(56..60).all(|p| head.contains(&p)), "{head:?}");
        }
        // β = 0: the attention term alone
        let c = Compactor {
            blending: 0.0,
            ..Default::default()
        };
        let s: Vec<f32> = c
            .score(&f.inputs(), &f.keys, &f.keys)
            .expect("score")
            .into_data()
            .to_vec()
            .expect("f32");
        let mut want: Vec<f32> = NonCausalAttention::default()
            .raw(
                &f.queries.clone().narrow(2, 8, 48),
                &f.keys.clone().narrow(2, 8, 48),
                &f.keys.clone().narrow(2, 8, 48),
            )
            .expect("raw")
            .into_iter()
            .flatten()
            .collect();
        z_scores(&mut want);
        assert!((s[8] - want[0]).abs() < 1e-5 && (s[60 + 8] - want[48]).abs() < 1e-5);
    }
}
