//! RandomPress (kvpress `random`): uniform random scores, a baseline. Seeded: the scores of a
//! layer depend only on `(seed, layer, head, entry)`, so runs are reproducible whatever the call
//! order (kvpress reseeds a torch generator on every call instead, so its draws differ).

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::error::Result;
use kvpress_core::{LayerInputs, Scorer};

/// Uniform scores in `[0, 1)` from a splitmix64 stream keyed by seed and layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomScores {
    /// The seed.
    pub seed: u64,
}

/// The splitmix64 finaliser: a well-mixed 64-bit value from `z`.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl<B: Backend> Scorer<B> for RandomScores {
    /// `[1, h_kv, n]` uniform scores.
    fn score(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        _values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let [b, h, n, _] = keys.dims();
        let base = splitmix(self.seed ^ splitmix(inputs.layer as u64));
        let data: Vec<f32> = (0..(b * h * n) as u64)
            .map(|i| (splitmix(base.wrapping_add(i)) >> 40) as f32 / (1u64 << 24) as f32)
            .collect();
        Ok(Tensor::from_data(
            TensorData::new(data, [b, h, n]),
            &keys.device(),
        ))
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::{Fixture, kept_positions};
    use kvpress_core::ScorerPress;

    #[test]
    fn seeded_counts_and_determinism() {
        let f = Fixture::new(1, 3, 40, 4);
        let press = |seed| ScorerPress::new(RandomScores { seed }, 0.25).expect("press");
        let a = kept_positions(&f, &press(42));
        assert!(a.iter().all(|h| h.len() == 30));
        assert_eq!(a, kept_positions(&f, &press(42)));
        assert_ne!(a, kept_positions(&f, &press(43)));
        let scores: Vec<f32> = RandomScores { seed: 1 }
            .score(&f.inputs(), &f.keys, &f.keys)
            .expect("score")
            .into_data()
            .to_vec()
            .expect("f32");
        assert!(scores.iter().all(|s| (0.0..1.0).contains(s)));
    }
}
