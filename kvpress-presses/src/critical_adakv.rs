//! CriticalAdaKVPress (kvpress `critical_adakv`): AdaKV's head-wise budgets with CriticalKV's
//! two-stage selection inside each head. Paper: arXiv 2502.03805.
//!
//! 1. AdaKV: forced = protected ∪ each head's top `⌊α · n_kept⌋`; head `h`'s budget `B_h` is
//!    its share of the best `h_kv · n_kept` entries of the layer.
//! 2. Stage 1: each head also forces its top `⌊B_h · first_stage_ratio⌋` entries.
//! 3. Stage 2: each head keeps its forced entries and then the highest
//!    `(score + ε) · ‖W_O v‖₁`, `B_h` in all.
//!
//! The cache goes ragged and holds exactly the kept entries (kvpress only masks).

use burn::tensor::backend::Backend;
use kvpress_core::error::Result;
use kvpress_core::press::{check_ratio, host_scores, kept_count};
use kvpress_core::{LayerCache, LayerInputs, Press, Scorer};

use crate::adakv::{check_alpha, head_wise_selection};
use crate::critical_kv::{
    check_first_stage_ratio, force_top, value_output_norms, weighted_selection,
};

/// The CriticalAdaKV press over scorer `S` (defaults `alpha_safeguard = 0.2`,
/// `epsilon = 1e-4`, `first_stage_ratio = 0.5`).
#[derive(Debug, Clone)]
pub struct CriticalAdaKv<S> {
    /// The inner scorer.
    pub scorer: S,
    /// Fraction of the layer's entries removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// AdaKV's per-head safeguard, in `[0, 1]`.
    pub alpha_safeguard: f64,
    /// Added to the inner score before the value weighting.
    pub epsilon: f64,
    /// Share of each head's budget chosen by the inner score alone, in `[0, 1]`.
    pub first_stage_ratio: f64,
}

impl<S> CriticalAdaKv<S> {
    /// CriticalAdaKV over `scorer` at `compression_ratio` with kvpress's defaults.
    pub fn new(scorer: S, compression_ratio: f64) -> Result<Self> {
        check_ratio(compression_ratio)?;
        Ok(Self {
            scorer,
            compression_ratio,
            alpha_safeguard: 0.2,
            epsilon: 1e-4,
            first_stage_ratio: 0.5,
        })
    }
}

impl<B: Backend, S: Scorer<B>> Press<B> for CriticalAdaKv<S> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        check_alpha(self.alpha_safeguard)?;
        check_first_stage_ratio(self.first_stage_ratio)?;
        if self.compression_ratio == 0.0 {
            return Ok(());
        }
        let Some((ref keys, ref values)) = cache.keys_values()? else {
            return Ok(());
        };
        let n = keys.dims()[2];
        let scores = host_scores(&self.scorer, inputs, keys, values)?;
        let n_kept = kept_count(n, self.compression_ratio);
        let (mut forced, adakv) = head_wise_selection(&scores, n_kept, self.alpha_safeguard);
        let budgets: Vec<usize> = adakv.iter().map(Vec::len).collect();
        let norms = value_output_norms(values, inputs.weights.o_proj)?;
        let kept = scores
            .rows
            .iter()
            .zip(&norms)
            .zip(forced.iter_mut().zip(&budgets))
            .map(|((row, norm), (flags, &budget))| {
                force_top(
                    row,
                    flags,
                    (budget as f64 * self.first_stage_ratio) as usize,
                );
                weighted_selection(row, norm, flags, self.epsilon, budget)
            })
            .collect::<Vec<_>>();
        cache.keep(&kept)
    }
}
