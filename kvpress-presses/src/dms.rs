//! DMSPress (kvpress `dms`): threshold eviction with a sliding window (Dynamic Memory
//! Sparsification, dense-prefill inference variant). Every token is scored once, when it
//! arrives; the last `sliding_window_size` tokens of each head are always kept, and a token
//! leaving that window is evicted when its score is below `threshold`. Works in the prefill
//! and, with `decoding = true`, on every later forward. Paper: arXiv 2506.05345.
//!
//! kvpress masks the evicted entries; here they leave the (ragged) cache.

use std::sync::Mutex;

use burn::tensor::{Tensor, backend::Backend};
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::{check_positive, host_scores};
use kvpress_core::{LayerCache, LayerInputs, Press, Scorer};

/// Scored entries still inside a head's window: (position, score, protected).
type Window = Vec<(usize, f32, bool)>;

/// The DMS press over scorer `S` (defaults: window 128, prefill only).
pub struct Dms<S> {
    /// Scores each token once.
    pub scorer: S,
    /// Tokens leaving the window with a lower score are evicted.
    pub threshold: f64,
    /// Recent tokens always kept.
    pub sliding_window_size: usize,
    /// Also evict during decoding.
    pub decoding: bool,
    /// `[layer][head]` windows.
    windows: Mutex<Vec<Vec<Window>>>,
}

impl<S> Dms<S> {
    /// DMS over `scorer` with `threshold` and kvpress's window of 128, prefill only.
    pub fn new(scorer: S, threshold: f64) -> Self {
        Self {
            scorer,
            threshold,
            sliding_window_size: 128,
            decoding: false,
            windows: Mutex::new(Vec::new()),
        }
    }

    /// Adds the new tokens' scores to the layer's windows and evicts what leaves them below
    /// the threshold.
    fn update<B: Backend>(
        &self,
        inputs: &LayerInputs<'_, B>,
        cache: &mut LayerCache<B>,
        keys: &Tensor<B, 4>,
        values: &Tensor<B, 4>,
    ) -> Result<()>
    where
        S: Scorer<B>,
    {
        check_positive("sliding_window_size", self.sliding_window_size)?;
        let q = keys.dims()[2];
        let scores = host_scores(&self.scorer, inputs, keys, values)?;
        let mut windows = self
            .windows
            .lock()
            .map_err(|_| CoreError::Data("dms state poisoned by a panic".into()))?;
        if windows.len() <= inputs.layer {
            windows.resize_with(inputs.layer + 1, Vec::new);
        }
        let layer = &mut windows[inputs.layer];
        layer.resize_with(scores.rows.len(), Vec::new);
        let mut evicted: Vec<Vec<usize>> = vec![Vec::new(); scores.rows.len()];
        let new_positions = &inputs.positions[inputs.positions.len() - q..];
        for ((window, row), out) in layer.iter_mut().zip(&scores.rows).zip(&mut evicted) {
            for (i, (&p, &s)) in new_positions.iter().zip(row).enumerate() {
                window.push((p, s, scores.protected.get(i).copied().unwrap_or(false)));
            }
            if window.len() > self.sliding_window_size {
                let leaving = window.len() - self.sliding_window_size;
                for (p, s, protected) in window.drain(..leaving) {
                    if !protected && (s as f64) < self.threshold {
                        out.push(p);
                    }
                }
            }
        }
        if evicted.iter().all(Vec::is_empty) {
            return Ok(());
        }
        let kept: Vec<Vec<usize>> = cache
            .positions()
            .iter()
            .zip(&evicted)
            .map(|(positions, gone)| {
                (0..positions.len())
                    .filter(|&i| !gone.contains(&positions[i]))
                    .collect()
            })
            .collect();
        cache.keep(&kept)
    }
}

impl<B: Backend, S: Scorer<B>> Press<B> for Dms<S> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        let Some((ref keys, ref values)) = cache.keys_values()? else {
            return Ok(());
        };
        let (keys, values) = (keys.clone(), values.clone());
        self.update(inputs, cache, &keys, &values)
    }

    fn compress_decoding(
        &self,
        inputs: &LayerInputs<'_, B>,
        cache: &mut LayerCache<B>,
    ) -> Result<()> {
        if !self.decoding {
            return Ok(());
        }
        // the keys and values of this forward's tokens: the last entries of every head
        let q = inputs.positions.len();
        let heads = cache.tokens_per_head().len();
        let mut ks = Vec::with_capacity(heads);
        let mut vs = Vec::with_capacity(heads);
        for h in 0..heads {
            let (k, v) = cache.head(h).ok_or_else(|| CoreError::Invalid {
                name: "dms",
                detail: format!("KV head {h} holds nothing after a forward"),
            })?;
            let len = k.dims()[2];
            ks.push(k.narrow(2, len - q, q));
            vs.push(v.narrow(2, len - q, q));
        }
        let (keys, values) = (Tensor::cat(ks, 1), Tensor::cat(vs, 1));
        self.update(inputs, cache, &keys, &values)
    }

    fn compresses_during_decoding(&self) -> bool {
        self.decoding
    }

    fn reset(&self) {
        if let Ok(mut windows) = self.windows.lock() {
            windows.clear();
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::knorm::Knorm;
    use crate::test_support::{Fixture, kept_positions};
    use burn::tensor::TensorData;

    #[test]
    fn tokens_leaving_the_window_below_the_threshold_are_evicted() {
        // one head, d = 2: key norms 1..=8 → knorm scores −1..−8; window 3, threshold −4.5
        let mut f = Fixture::new(1, 1, 8, 2);
        let data: Vec<f32> = (1..=8).flat_map(|x| [x as f32, 0.0]).collect();
        f.keys = Tensor::from_data(TensorData::new(data, [1, 1, 8, 2]), &Default::default());
        let mut press = Dms::new(Knorm, -4.5);
        press.sliding_window_size = 3;
        // positions 0..5 leave the window; of those, position 4 (score −5) is evicted
        assert_eq!(kept_positions(&f, &press), vec![vec![0, 1, 2, 3, 5, 6, 7]]);
    }
}
