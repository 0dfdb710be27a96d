//! KnormPress (kvpress `knorm`): keys with a small L2 norm tend to draw attention; keep them.
//!
//! Score of entry `i` of a KV head: `−‖k_i‖₂` over the head dimension (RoPE preserves norms, so
//! pre- or post-RoPE keys give the same score). Paper: arXiv 2406.11430.

use burn::tensor::{Tensor, backend::Backend};
use kvpress_core::error::Result;
use kvpress_core::{LayerInputs, Scorer, moments};

/// The key-norm scorer; wrap it in [`kvpress_core::ScorerPress`] to get the press.
#[derive(Debug, Clone, Copy, Default)]
pub struct Knorm;

impl<B: Backend> Scorer<B> for Knorm {
    /// `[1, h_kv, n, d]` keys → `[1, h_kv, n]` scores.
    fn score(
        &self,
        _inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        _values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        Ok(moments::row_norms(keys).neg())
    }

    fn scores_are_per_token(&self) -> bool {
        true
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::{Fixture, kept_positions};
    use burn::tensor::TensorData;
    use kvpress_core::ScorerPress;

    #[test]
    fn keeps_the_smallest_norms_of_each_head() {
        let mut f = Fixture::new(1, 2, 4, 2);
        // head 0 norms: 5, 1, 3, 2 ; head 1 norms: 1, 4, 2, 0 (keys along one channel, d = 2)
        let data = vec![
            5., 0., 1., 0., 3., 0., 0., 2., 1., 0., 0., 4., 2., 0., 0., 0.,
        ];
        f.keys = Tensor::from_data(TensorData::new(data, [1, 2, 4, 2]), &Default::default());
        let scores: Vec<f32> = Knorm
            .score(&f.inputs(), &f.keys, &f.keys)
            .expect("score")
            .into_data()
            .to_vec()
            .expect("f32");
        assert_eq!(scores, vec![-5., -1., -3., -2., -1., -4., -2., -0.]);
        let kept = kept_positions(&f, &ScorerPress::new(Knorm, 0.5).expect("ratio"));
        assert_eq!(kept, vec![vec![1, 3], vec![0, 3]]);
    }
}
