//! KeyDiffPress (kvpress `keydiff`): keep the keys least aligned with the average key direction.
//! Paper: arXiv 2504.15364.
//!
//! Per KV head: anchor `a = mean_i k_i / ‖k_i‖` (not re-normalised); score
//! `s_i = −cos(k_i, a) = −(k_i · a) / max(‖k_i‖ ‖a‖, 1e-8)`.

use burn::tensor::{Tensor, backend::Backend};
use kvpress_core::error::Result;
use kvpress_core::{LayerInputs, Scorer, moments};

/// The KeyDiff scorer.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyDiff;

impl<B: Backend> Scorer<B> for KeyDiff {
    /// `[1, h_kv, n, d]` keys → `[1, h_kv, n]` scores.
    fn score(
        &self,
        _inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        _values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let [b, h, n, _] = keys.dims();
        let norms = moments::row_norms(keys).reshape([b, h, n, 1]);
        let unit = keys.clone() / norms.clone().clamp_min(1e-12);
        let anchor = unit.mean_dim(2); // [b, h, 1, d]
        let anchor_norm = (anchor.clone() * anchor.clone()).sum_dim(3).sqrt(); // [b, h, 1, 1]
        let dots = (keys.clone() * anchor).sum_dim(3); // [b, h, n, 1]
        let cos = dots / (norms * anchor_norm).clamp_min(1e-8);
        Ok(cos.neg().reshape([b, h, n]))
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::Fixture;
    use burn::tensor::TensorData;

    #[test]
    fn scores_are_minus_the_cosine_to_the_mean_direction() {
        let mut f = Fixture::new(1, 1, 3, 2);
        // keys (1,0), (0,2), (3,0): unit mean = ((1+0+1)/3, (0+1+0)/3) = (2/3, 1/3)
        f.keys = Tensor::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 2.0, 3.0, 0.0], [1, 1, 3, 2]),
            &Default::default(),
        );
        let got: Vec<f32> = KeyDiff
            .score(&f.inputs(), &f.keys, &f.keys)
            .expect("score")
            .into_data()
            .to_vec()
            .expect("f32");
        let a_norm = (5.0f32 / 9.0).sqrt();
        let want = [
            -(2.0 / 3.0) / a_norm,
            -(1.0 / 3.0) / a_norm,
            -(2.0 / 3.0) / a_norm,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
}
