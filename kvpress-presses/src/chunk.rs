//! ChunkPress (kvpress `chunk`): compress each fixed-size chunk of the context on its own, so
//! that compression is spread uniformly over the sequence (the FINCH idea).
//!
//! For each chunk `[i, i + C)` the scorer sees only the chunk's hidden states, queries, keys and
//! values, and the chunk keeps `max(1, ⌊len·(1 − r)⌋)` entries. As in kvpress, the chunk's
//! queries are rotated as if the chunk ended at the end of the sequence (kvpress hands scorers
//! the full sequence's last RoPE rows), so window scorers behave exactly as there.

use burn::tensor::backend::Backend;
use kvpress_core::error::Result;
use kvpress_core::press::{check_positive, check_ratio, kept_count};
use kvpress_core::{LayerCache, LayerInputs, Press, RotaryEmbedding, Scorer, top_scored_indices};

/// Chunk-wise compression around any scorer (default chunk length 1024).
#[derive(Debug, Clone)]
pub struct Chunk<S> {
    /// The scorer applied to each chunk.
    pub scorer: S,
    /// Fraction of each chunk's entries removed.
    pub compression_ratio: f64,
    /// Tokens per chunk.
    pub chunk_length: usize,
}

impl<S> Chunk<S> {
    /// A chunked press with kvpress's default chunk length (1024).
    pub fn new(scorer: S, compression_ratio: f64) -> Result<Self> {
        check_ratio(compression_ratio)?;
        Ok(Self {
            scorer,
            compression_ratio,
            chunk_length: 1024,
        })
    }
}

impl<B: Backend, S: Scorer<B>> Press<B> for Chunk<S> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        if self.compression_ratio == 0.0 {
            return Ok(());
        }
        check_positive("chunk_length", self.chunk_length)?;
        let Some((ref keys, ref values)) = cache.keys_values()? else {
            return Ok(());
        };
        let [_, h_kv, n, _] = keys.dims();
        let device = keys.device();
        let mut kept: Vec<Vec<usize>> = vec![Vec::new(); h_kv];
        for start in (0..n).step_by(self.chunk_length) {
            let len = self.chunk_length.min(n - start);
            let hidden = inputs.hidden_states.clone().narrow(1, start, len);
            let pre = inputs.queries_pre_rope.clone().narrow(2, start, len);
            let positions: Vec<usize> = (n - len..n).collect();
            let (cos, sin) = inputs.rope.cos_sin::<B>(&positions, &device);
            let queries = RotaryEmbedding::apply(pre.clone(), &cos, &sin);
            let chunk_inputs = LayerInputs {
                layer: inputs.layer,
                num_layers: inputs.num_layers,
                hidden_states: &hidden,
                queries: &queries,
                queries_pre_rope: &pre,
                positions: &positions,
                ..*inputs
            };
            let (k, v) = (
                keys.clone().narrow(2, start, len),
                values.clone().narrow(2, start, len),
            );
            let chosen = top_scored_indices(&self.scorer, &chunk_inputs, &k, &v, |m| {
                kept_count(m, self.compression_ratio)
            })?;
            for (head, idx) in kept.iter_mut().zip(chosen) {
                head.extend(idx.into_iter().map(|i| start + i));
            }
        }
        cache.keep(&kept)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::knorm::Knorm;
    use crate::test_support::{Fixture, kept_positions};

    #[test]
    fn each_chunk_keeps_its_share() {
        let f = Fixture::new(1, 2, 10, 4);
        let mut press = Chunk::new(Knorm, 0.5).expect("press");
        press.chunk_length = 4; // chunks of 4, 4, 2 keep 2, 2, 1
        let kept = kept_positions(&f, &press);
        for head in &kept {
            assert_eq!(head.len(), 5);
            assert_eq!(head.iter().filter(|&&p| p < 4).count(), 2);
            assert_eq!(head.iter().filter(|&&p| (4..8).contains(&p)).count(), 2);
            assert_eq!(head.iter().filter(|&&p| p >= 8).count(), 1);
        }
    }
}
