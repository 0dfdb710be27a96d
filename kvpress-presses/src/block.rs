//! BlockPress (kvpress `block`): block-wise streaming eviction. Each head starts with its first
//! `n_kept` entries; blocks of `block_size` tokens join one at a time, and the candidates are
//! re-scored and cut back to the best `n_kept`. Paper: arXiv 2504.15364 (KeyDiff).
//!
//! The scorer sees, for one head at a time, the candidates' keys/values `[1, 1, m, d]`, the
//! queries of that head's query group at the candidates `[1, g, m, d]`, their hidden states and
//! positions — exact for every scorer that scores a KV head from its own group (kvpress slices
//! the hidden features per head instead, which is exact only for hidden-state-free scorers).
//! TOVA then averages over the group rather than over all heads.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::{check_positive, check_ratio, kept_count};
use kvpress_core::{LayerCache, LayerInputs, Press, Scorer, top_scored_indices};

/// The Block press over scorer `S` (default `block_size = 128`).
#[derive(Debug, Clone)]
pub struct Block<S> {
    /// The scorer.
    pub scorer: S,
    /// Fraction of entries removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// Tokens added per step.
    pub block_size: usize,
}

impl<S> Block<S> {
    /// Block over `scorer` at `compression_ratio` with kvpress's block size 128.
    pub fn new(scorer: S, compression_ratio: f64) -> Result<Self> {
        check_ratio(compression_ratio)?;
        Ok(Self {
            scorer,
            compression_ratio,
            block_size: 128,
        })
    }
}

impl<S> Block<S> {
    /// The best `n_kept` of `candidates` (ascending cache indices) of KV head `head`.
    fn select<B: Backend>(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        values: &Tensor<B, 4>,
        head: usize,
        candidates: &[usize],
        n_kept: usize,
    ) -> Result<Vec<usize>>
    where
        S: Scorer<B>,
    {
        let device = keys.device();
        let h_kv = keys.dims()[1];
        let g = inputs.queries.dims()[1] / h_kv;
        let ids: Vec<i64> = candidates.iter().map(|&i| i as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [candidates.len()]), &device);
        let gather = |t: &Tensor<B, 4>, first: usize, count: usize| {
            t.clone().narrow(1, first, count).select(2, idx.clone())
        };
        let hidden = inputs.hidden_states.clone().select(1, idx.clone());
        let queries = gather(inputs.queries, head * g, g);
        let pre = gather(inputs.queries_pre_rope, head * g, g);
        let positions: Vec<usize> = candidates.iter().map(|&i| inputs.positions[i]).collect();
        let sub = LayerInputs {
            hidden_states: &hidden,
            queries: &queries,
            queries_pre_rope: &pre,
            positions: &positions,
            ..*inputs
        };
        let (k, v) = (gather(keys, head, 1), gather(values, head, 1));
        let best = top_scored_indices(&self.scorer, &sub, &k, &v, |_| n_kept)?;
        Ok(best[0].iter().map(|&i| candidates[i]).collect())
    }
}

impl<B: Backend, S: Scorer<B>> Press<B> for Block<S> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        check_positive("block_size", self.block_size)?;
        if self.compression_ratio == 0.0 {
            return Ok(());
        }
        let Some((ref keys, ref values)) = cache.keys_values()? else {
            return Ok(());
        };
        let [_, h_kv, n, _] = keys.dims();
        if inputs.positions.len() != n {
            return Err(CoreError::Invalid {
                name: "block",
                detail: format!(
                    "needs the inputs of the whole prefill ({n} entries, {} tokens)",
                    inputs.positions.len()
                ),
            });
        }
        let n_kept = kept_count(n, self.compression_ratio);
        let step = self.block_size.min(n);
        let kept = (0..h_kv)
            .map(|head| {
                let mut kept: Vec<usize> = (0..n_kept).collect();
                for start in (n_kept..n).step_by(step) {
                    let candidates: Vec<usize> = kept
                        .iter()
                        .copied()
                        .chain(start..(start + step).min(n))
                        .collect();
                    kept = self.select(inputs, keys, values, head, &candidates, n_kept)?;
                }
                Ok(kept)
            })
            .collect::<Result<Vec<_>>>()?;
        cache.keep(&kept)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::knorm::Knorm;
    use crate::snapkv::SnapKv;
    use crate::test_support::{Fixture, kept_positions};
    use kvpress_core::ScorerPress;

    #[test]
    fn a_pointwise_scorer_gives_the_global_top_k_for_any_block_size() {
        let f = Fixture::new(2, 3, 40, 8);
        let global = kept_positions(&f, &ScorerPress::new(Knorm, 0.6).expect("press"));
        for block_size in [1, 2, 5, 7, 16, 128] {
            let mut press = Block::new(Knorm, 0.6).expect("press");
            press.block_size = block_size;
            assert_eq!(
                kept_positions(&f, &press),
                global,
                "block size {block_size}"
            );
        }
    }

    #[test]
    fn a_window_scorer_keeps_the_last_window() {
        let f = Fixture::new(2, 2, 40, 8);
        let snapkv = SnapKv {
            window_size: 4,
            kernel_size: 3,
        };
        let mut press = Block::new(snapkv, 0.5).expect("press");
        press.block_size = 8;
        for head in kept_positions(&f, &press) {
            assert_eq!(head.len(), 20);
            assert!((36..40).all(|p| head.contains(&p)), "{head:?}");
        }
    }
}
