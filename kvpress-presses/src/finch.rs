//! FinchPress (kvpress `finch`): prompt-guided SnapKV. The observation window is exactly the
//! question, compressed together with the context (`kvpress generate --query-aware`); attention
//! rows are renormalised by their position, and the kept keys are re-rotated to contiguous
//! positions. Paper: FINCH (TACL 2024).
//!
//! With `w` question tokens at the end of the prefill: `A` the causal attention of the question
//! rows over the `n − w` earlier keys; with `normalize_scores`, row `i` is multiplied by
//! `n − w + i` (the number of keys it sees); the score is the mean over the rows and the query
//! group; the question is protected. Without `chunk_length` the top `⌊n(1 − r)⌋` entries are
//! kept; with it, each chunk of that length keeps `max(1, ⌊len(1 − r)⌋)`.
//!
//! kvpress finds the question through a delimiter token added to the vocabulary; here the
//! pipeline tells the press how many trailing tokens are the question (or `window_size=` sets it).

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::attention::window_attention;
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::{check_ratio, kept_count, to_host, top_k_per_head};
use kvpress_core::{LayerCache, LayerInputs, Press};

use crate::key_rerotation::rerotate_to_front;

/// The FINCH press (defaults: no chunks, normalised scores, re-rotated keys).
#[derive(Debug, Clone, Copy)]
pub struct Finch {
    /// Fraction of entries removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// Select per chunk of this length (must exceed `w / (1 − r)`).
    pub chunk_length: Option<usize>,
    /// Weight each question row by its position.
    pub normalize_scores: bool,
    /// Move the kept keys to positions `0..kept`.
    pub rerotate_keys: bool,
    /// The question length, when the pipeline does not give it.
    pub window_size: Option<usize>,
}

impl Finch {
    /// FINCH at `compression_ratio` with kvpress's defaults.
    pub fn new(compression_ratio: f64) -> Result<Self> {
        check_ratio(compression_ratio)?;
        Ok(Self {
            compression_ratio,
            chunk_length: None,
            normalize_scores: true,
            rerotate_keys: true,
            window_size: None,
        })
    }

    /// `[h_kv][n]` scores (the question's entries at 0) for window `w`.
    fn scores<B: Backend>(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        w: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let [_, h_kv, n, d] = keys.dims();
        let mut probs = window_attention(inputs.queries, keys, w, (d as f32).powf(-0.5))?;
        let h = probs.dims()[1];
        if self.normalize_scores {
            let weights: Vec<f32> = (0..w).map(|i| (n - w + i) as f32).collect();
            probs = probs
                * Tensor::<B, 4>::from_data(TensorData::new(weights, [1, 1, w, 1]), &keys.device());
        }
        let mean = probs
            .narrow(3, 0, n - w)
            .mean_dim(2)
            .reshape([h_kv, h / h_kv, n - w])
            .mean_dim(1)
            .reshape([h_kv * (n - w)]);
        Ok(to_host(mean)?
            .chunks(n - w)
            .map(|row| {
                let mut row = row.to_vec();
                row.resize(n, 0.0);
                row
            })
            .collect())
    }
}

impl<B: Backend> Press<B> for Finch {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        if self.compression_ratio == 0.0 {
            return Ok(());
        }
        let w = match (self.window_size, inputs.question_tokens) {
            (Some(w), _) => w,
            (None, q) if q > 0 => q,
            _ => {
                return Err(CoreError::Invalid {
                    name: "finch",
                    detail: "finch needs the question inside the compressed context: use \
                             --query-aware (or give window_size=N)"
                        .into(),
                });
            }
        };
        let Some((ref keys, _)) = cache.keys_values()? else {
            return Ok(());
        };
        let n = keys.dims()[2];
        if w == 0 || w >= n {
            return Err(CoreError::Invalid {
                name: "finch",
                detail: format!("a question of {w} tokens needs a longer context than {n}"),
            });
        }
        let rows = self.scores(inputs, keys, w)?;
        let protected: Vec<bool> = (0..n).map(|i| i + w >= n).collect();
        let kept = match self.chunk_length {
            None => top_k_per_head(&rows, &protected, kept_count(n, self.compression_ratio)),
            Some(c) => {
                if (c as f64) <= w as f64 / (1.0 - self.compression_ratio) {
                    return Err(CoreError::Invalid {
                        name: "chunk_length",
                        detail: format!(
                            "must exceed window / (1 − ratio) = {:.1}",
                            w as f64 / (1.0 - self.compression_ratio)
                        ),
                    });
                }
                let mut kept = vec![Vec::new(); rows.len()];
                for start in (0..n).step_by(c) {
                    let len = c.min(n - start);
                    let part: Vec<Vec<f32>> = rows
                        .iter()
                        .map(|r| r[start..start + len].to_vec())
                        .collect();
                    let chosen = top_k_per_head(
                        &part,
                        &protected[start..start + len],
                        kept_count(len, self.compression_ratio),
                    );
                    for (head, idx) in kept.iter_mut().zip(chosen) {
                        head.extend(idx.into_iter().map(|i| start + i));
                    }
                }
                kept
            }
        };
        cache.keep(&kept)?;
        if self.rerotate_keys {
            rerotate_to_front(inputs, cache)?;
        }
        Ok(())
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::Fixture;

    #[test]
    fn the_question_is_kept_and_keys_move_to_the_front() {
        let f = Fixture::new(2, 2, 30, 8);
        let mut press = Finch::new(0.5).expect("press");
        press.rerotate_keys = false;
        let mut cache = LayerCache::default();
        cache
            .append(f.keys.clone(), f.keys.clone(), &f.positions)
            .expect("append");
        let mut inputs = f.inputs();
        inputs.question_tokens = 6;
        press.compress(&inputs, &mut cache).expect("compress");
        for head in cache.positions() {
            assert_eq!(head.len(), 15);
            assert!((24..30).all(|p| head.contains(&p)), "{head:?}");
        }
        // re-rotated: positions 0..15, originals kept apart
        let mut cache = LayerCache::default();
        cache
            .append(f.keys.clone(), f.keys.clone(), &f.positions)
            .expect("append");
        press.rerotate_keys = true;
        press.compress(&inputs, &mut cache).expect("compress");
        assert_eq!(cache.positions()[0], (0..15).collect::<Vec<_>>());
        assert!((24..30).all(|p| cache.original_positions()[1].contains(&p)));
        // without a question it explains what to do
        let err = Finch::new(0.5)
            .expect("press")
            .compress(&f.inputs(), &mut LayerCache::default())
            .expect_err("no window");
        assert!(err.to_string().contains("--query-aware"), "{err}");
    }
}
