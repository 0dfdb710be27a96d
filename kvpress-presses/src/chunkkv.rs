//! ChunkKVPress (kvpress `chunkkv`): keeps whole contiguous chunks of `chunk_length` tokens —
//! the same chunks in every head — chosen by the mean over the chunk of the scores summed over
//! the heads. Paper: arXiv 2502.00299.
//!
//! With `N = ⌊n / C⌋` full chunks and a remainder `r` (one more, partial chunk), the best
//! `max(1, ⌊(N + [r > 0]) · (1 − ratio)⌋)` chunks are kept, so the realised ratio can differ
//! from `ratio` when the partial chunk is selected. Chunks holding a protected entry rank first.
//! Contexts shorter than one chunk fall back to the plain scorer press.

use burn::tensor::backend::Backend;
use kvpress_core::error::Result;
use kvpress_core::press::{check_positive, check_ratio, host_scores, kept_count, ranked};
use kvpress_core::{LayerCache, LayerInputs, Press, Scorer, keep_top_scored};

/// The ChunkKV press over scorer `S` (default `chunk_length = 20`).
#[derive(Debug, Clone)]
pub struct ChunkKv<S> {
    /// The scorer.
    pub scorer: S,
    /// Fraction of chunks removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// Tokens per chunk.
    pub chunk_length: usize,
}

impl<S> ChunkKv<S> {
    /// ChunkKV over `scorer` at `compression_ratio` with kvpress's chunk length 20.
    pub fn new(scorer: S, compression_ratio: f64) -> Result<Self> {
        check_ratio(compression_ratio)?;
        Ok(Self {
            scorer,
            compression_ratio,
            chunk_length: 20,
        })
    }
}

impl<B: Backend, S: Scorer<B>> Press<B> for ChunkKv<S> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        check_positive("chunk_length", self.chunk_length)?;
        if self.compression_ratio == 0.0 {
            return Ok(());
        }
        let Some((ref keys, ref values)) = cache.keys_values()? else {
            return Ok(());
        };
        let [_, h_kv, n, _] = keys.dims();
        let c = self.chunk_length;
        if n < c {
            return keep_top_scored(&self.scorer, inputs, cache, |n| {
                kept_count(n, self.compression_ratio)
            });
        }
        let scores = host_scores(&self.scorer, inputs, keys, values)?;
        let chunks = n.div_ceil(c);
        let mut chunk_scores = vec![0f32; chunks];
        let mut chunk_forced = vec![false; chunks];
        for (chunk, (score, forced)) in chunk_scores.iter_mut().zip(&mut chunk_forced).enumerate() {
            let range = chunk * c..((chunk + 1) * c).min(n);
            let total: f32 = scores
                .rows
                .iter()
                .map(|row| row[range.clone()].iter().sum::<f32>())
                .sum();
            *score = total / range.len() as f32;
            *forced = range
                .clone()
                .any(|i| scores.protected.get(i).copied().unwrap_or(false));
        }
        let mut best = ranked(&chunk_scores, &chunk_forced);
        best.truncate(kept_count(chunks, self.compression_ratio));
        best.sort_unstable();
        let tokens: Vec<usize> = best
            .iter()
            .flat_map(|&chunk| chunk * c..((chunk + 1) * c).min(n))
            .collect();
        cache.keep(&vec![tokens; h_kv])
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::knorm::Knorm;
    use crate::test_support::{Fixture, kept_positions};
    use burn::tensor::{Tensor, TensorData};

    #[test]
    fn whole_chunks_with_the_best_mean_score_are_kept() {
        // key norms 1..=10 (one channel of d = 2) in chunks of 3 → [1,2,3] [4,5,6] [7,8,9] [10]
        let mut f = Fixture::new(1, 2, 10, 2);
        // head 0 holds 1..=10, head 1 half of that (layout [1, h, n, 2])
        let data: Vec<f32> = (1..=10)
            .map(|x| x as f32)
            .chain((1..=10).map(|x| 0.5 * x as f32))
            .flat_map(|x| [x, 0.0])
            .collect();
        f.keys = Tensor::from_data(TensorData::new(data, [1, 2, 10, 2]), &Default::default());
        let mut press = ChunkKv::new(Knorm, 0.5).expect("press");
        press.chunk_length = 3;
        // Knorm scores −|x|·1.5 summed over heads; chunk means −3, −7.5, −12, −15: keep
        // ⌊4 · 0.5⌋ = 2 chunks, the first two, in every head
        let kept = kept_positions(&f, &press);
        assert_eq!(kept, vec![vec![0, 1, 2, 3, 4, 5]; 2]);
    }
}
