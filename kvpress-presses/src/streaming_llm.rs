//! StreamingLLMPress (kvpress `streaming_llm`): keep the first `n_sink` tokens (attention sinks)
//! and the most recent ones. Paper: arXiv 2309.17453.
//!
//! kvpress zeroes the scores of positions `n_sink .. n_sink + n_pruned`; here the sinks are
//! protected and every other entry scores its cache index (later = higher), which keeps exactly
//! the same set: the sinks and the last `n_kept − n_sink` tokens.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::error::{CoreError, Result};
use kvpress_core::{LayerInputs, Scorer};

/// Sinks-and-recent scorer (default `n_sink = 4`, as kvpress).
#[derive(Debug, Clone, Copy)]
pub struct StreamingLlm {
    /// First tokens always kept.
    pub n_sink: usize,
}

impl Default for StreamingLlm {
    fn default() -> Self {
        Self { n_sink: 4 }
    }
}

impl<B: Backend> Scorer<B> for StreamingLlm {
    /// `[1, h_kv, n]`: entry `i` scores `i`.
    fn score(
        &self,
        _inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        _values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let [b, h, n, _] = keys.dims();
        if n <= self.n_sink {
            return Err(CoreError::Invalid {
                name: "n_sink",
                detail: format!(
                    "streaming_llm keeps {} sink tokens but the context has only {n}",
                    self.n_sink
                ),
            });
        }
        let row: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let data: Vec<f32> = (0..b * h).flat_map(|_| row.iter().copied()).collect();
        Ok(Tensor::from_data(
            TensorData::new(data, [b, h, n]),
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
    use crate::test_support::{Fixture, kept_positions};
    use kvpress_core::ScorerPress;

    #[test]
    fn keeps_sinks_and_the_most_recent_tokens() {
        let f = Fixture::new(1, 2, 12, 4);
        // 12 entries at ratio 0.5: keep 6 = 4 sinks + the last 2
        let kept = kept_positions(
            &f,
            &ScorerPress::new(StreamingLlm::default(), 0.5).expect("press"),
        );
        assert_eq!(kept, vec![vec![0, 1, 2, 3, 10, 11]; 2]);
    }

    #[test]
    fn a_context_not_longer_than_the_sinks_is_an_error() {
        let f = Fixture::new(1, 1, 4, 4);
        let err = StreamingLlm::default()
            .score(&f.inputs(), &f.keys, &f.keys)
            .expect_err("too short");
        assert!(err.to_string().contains("sink"), "{err}");
    }
}
