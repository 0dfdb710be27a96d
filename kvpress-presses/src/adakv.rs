//! AdaKVPress (kvpress `adakv`): head-wise budgets. All KV heads of a layer compete for the
//! layer's budget of `h_kv · n_kept` entries under any scorer; a safeguard keeps at least
//! `⌊α · n_kept⌋` entries in every head. Paper: arXiv 2407.11550.
//!
//! kvpress only masks the evicted entries (the memory stays); here the cache goes ragged and
//! holds exactly the kept entries, so the bytes drop by the compression ratio.
//!
//! With `n_kept = max(1, ⌊n(1 − r)⌋)`: each head's top `⌊α·n_kept⌋` entries and the scorer's
//! protected entries are forced; the remaining places go to the best scores over all heads.

use burn::tensor::backend::Backend;
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::{HostScores, check_ratio, host_scores, kept_count, ranked};
use kvpress_core::{LayerCache, LayerInputs, Press, Scorer, top_k_flattened};

/// The AdaKV press over scorer `S` (default `alpha_safeguard = 0.2`).
#[derive(Debug, Clone)]
pub struct AdaKv<S> {
    /// The scorer ranking entries inside and across heads.
    pub scorer: S,
    /// Fraction of the layer's entries removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// Fraction of a head's even share it keeps whatever the other heads score, in `[0, 1]`.
    pub alpha_safeguard: f64,
}

impl<S> AdaKv<S> {
    /// AdaKV over `scorer` at `compression_ratio`, with kvpress's safeguard 0.2.
    pub fn new(scorer: S, compression_ratio: f64) -> Result<Self> {
        check_ratio(compression_ratio)?;
        Ok(Self {
            scorer,
            compression_ratio,
            alpha_safeguard: 0.2,
        })
    }
}

/// Checks a safeguard fraction (`[0, 1]`).
pub fn check_alpha(alpha: f64) -> Result<()> {
    if (0.0..=1.0).contains(&alpha) {
        Ok(())
    } else {
        Err(CoreError::Invalid {
            name: "alpha_safeguard",
            detail: format!("must be in [0, 1], got {alpha}"),
        })
    }
}

/// Per head, the entries forced by AdaKV's safeguard: the scorer's protected entries and the
/// head's top `⌊α · n_kept⌋` entries.
pub fn safeguarded(scores: &HostScores, n_kept: usize, alpha: f64) -> Vec<Vec<bool>> {
    let n_safe = (n_kept as f64 * alpha) as usize;
    let mut forced = scores.protected_per_head();
    for (row, flags) in scores.rows.iter().zip(&mut forced) {
        for i in ranked(row, &scores.protected).into_iter().take(n_safe) {
            flags[i] = true;
        }
    }
    forced
}

/// AdaKV's selection: the forced entries ([`safeguarded`]) and each head's kept indices
/// (ascending) out of the layer's `h_kv · n_kept` places.
pub fn head_wise_selection(
    scores: &HostScores,
    n_kept: usize,
    alpha: f64,
) -> (Vec<Vec<bool>>, Vec<Vec<usize>>) {
    let forced = safeguarded(scores, n_kept, alpha);
    let kept = top_k_flattened(&scores.rows, &forced, scores.rows.len() * n_kept);
    (forced, kept)
}

impl<B: Backend, S: Scorer<B>> Press<B> for AdaKv<S> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        check_alpha(self.alpha_safeguard)?;
        if self.compression_ratio == 0.0 {
            return Ok(());
        }
        let Some((ref keys, ref values)) = cache.keys_values()? else {
            return Ok(());
        };
        let n = keys.dims()[2];
        let scores = host_scores(&self.scorer, inputs, keys, values)?;
        let n_kept = kept_count(n, self.compression_ratio);
        let (_, kept) = head_wise_selection(&scores, n_kept, self.alpha_safeguard);
        cache.keep(&kept)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::{Fixture, kept_positions};
    use burn::tensor::{Tensor, TensorData};

    /// Scores given by hand, one row per head.
    struct Fixed(Vec<Vec<f32>>);

    impl<B: Backend> Scorer<B> for Fixed {
        fn score(
            &self,
            _inputs: &LayerInputs<'_, B>,
            keys: &Tensor<B, 4>,
            _values: &Tensor<B, 4>,
        ) -> Result<Tensor<B, 3>> {
            let [_, h, n, _] = keys.dims();
            let flat: Vec<f32> = self.0.iter().flatten().copied().collect();
            Ok(Tensor::from_data(
                TensorData::new(flat, [1, h, n]),
                &keys.device(),
            ))
        }
    }

    #[test]
    fn heads_share_the_layer_budget_with_a_safeguard() {
        let f = Fixture::new(1, 2, 10, 4);
        // head 0 scores high everywhere, head 1 low except one entry
        let scores = Fixed(vec![
            vec![0.9, 0.8, 0.85, 0.7, 0.95, 0.6, 0.75, 0.65, 0.99, 0.5],
            vec![0.1, 0.2, 0.05, 0.3, 0.15, 0.01, 0.02, 0.03, 0.04, 0.97],
        ]);
        // ratio 0.5: n_kept = 5, budget 10 over both heads; safeguard ⌊0.2·5⌋ = 1 per head
        let press = AdaKv::new(scores, 0.5).expect("press");
        let kept = kept_positions(&f, &press);
        // head 1 keeps its best (0.97, also its safeguard); head 0 takes the other 9 places
        assert_eq!(kept[1], vec![9]);
        assert_eq!(kept[0], vec![0, 1, 2, 3, 4, 5, 6, 7, 8]);
        // alpha = 1: every head keeps exactly its even share
        let mut press = press;
        press.alpha_safeguard = 1.0;
        let kept = kept_positions(&f, &press);
        assert_eq!(kept[0], vec![0, 1, 2, 4, 8]);
        assert_eq!(kept[1], vec![0, 1, 3, 4, 9]);
    }

    #[test]
    fn the_ragged_cache_holds_only_the_kept_entries() {
        let f = Fixture::new(1, 2, 10, 4);
        let scores = Fixed(vec![vec![1.0; 10], (0..10).map(|i| -(i as f32)).collect()]);
        let mut cache = LayerCache::default();
        cache
            .append(f.keys.clone(), f.keys.clone(), &f.positions)
            .expect("append");
        let before = cache.bytes();
        AdaKv::new(scores, 0.5)
            .expect("press")
            .compress(&f.inputs(), &mut cache)
            .expect("compress");
        // head 1's safeguard (its score 0 at position 0) and 9 of head 0's ties, lowest first
        assert_eq!(cache.tokens_per_head(), vec![9, 1]);
        assert_eq!(cache.positions()[1], vec![0]);
        assert!(cache.is_ragged());
        // 10 of 20 entries: exactly half the bytes
        assert_eq!(cache.bytes() * 2, before);
    }
}
