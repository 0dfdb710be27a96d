//! TOVAPress (kvpress `tova`): the attention of the last token, averaged over all query heads,
//! decides; every KV head keeps the same tokens, and the last token is always kept.
//! Paper: arXiv 2401.06104.
//!
//! Score of key `j < n − 1`: `mean_h A[h, j]` over all `h_q` heads, where `A` is the last query's
//! softmax attention over all `n` keys.

use burn::tensor::{Tensor, backend::Backend};
use kvpress_core::attention::window_attention;
use kvpress_core::error::{CoreError, Result};
use kvpress_core::{LayerInputs, Scorer};

/// The TOVA scorer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tova;

impl<B: Backend> Scorer<B> for Tova {
    /// `[1, h_kv, n]`, the same row for every KV head; the last entry scores 0 and is protected.
    fn score(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        _values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let [_, h_kv, n, d] = keys.dims();
        if n < 2 {
            return Err(CoreError::Invalid {
                name: "context",
                detail: format!("tova needs at least 2 tokens, got {n}"),
            });
        }
        let probs = window_attention(inputs.queries, keys, 1, (d as f32).powf(-0.5))?;
        let h = probs.dims()[1];
        let mean = probs.narrow(3, 0, n - 1).reshape([1, h, n - 1]).mean_dim(1);
        let last = Tensor::<B, 3>::zeros([1, 1, 1], &keys.device());
        Ok(Tensor::cat(vec![mean, last], 2).expand([1, h_kv, n]))
    }

    fn protected(&self, _inputs: &LayerInputs<'_, B>, n: usize) -> Result<Vec<bool>> {
        Ok((0..n).map(|i| i + 1 == n).collect())
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::{Fixture, kept_positions};
    use kvpress_core::ScorerPress;

    #[test]
    fn every_head_keeps_the_same_tokens_and_the_last_one() {
        let f = Fixture::new(2, 3, 10, 8);
        let kept = kept_positions(&f, &ScorerPress::new(Tova, 0.5).expect("press"));
        assert!(kept.iter().all(|h| h == &kept[0]), "{kept:?}");
        assert!(kept[0].contains(&9));
        assert_eq!(kept[0].len(), 5);
    }
}
