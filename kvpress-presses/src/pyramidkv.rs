//! PyramidKVPress (kvpress `pyramidkv`): SnapKV scores with layer budgets that shrink linearly
//! with depth. Paper: arXiv 2406.02069 (budget formula from KVCache-Factory, as kvpress).
//!
//! With window `w`, ratio `r`, `C = w + n(1 − r)`, `min = (C − w)/β`, `max = 2(C − w) − min`
//! (if `max ≥ n − w`: `max = n − w`, `min = 2(C − w) − max`), layer `l` of `L` keeps
//! `round(max − l·(max − min)/(L − 1))` entries; if not `n ≥ max ≥ min ≥ w`, every layer keeps
//! `round(n(1 − r))` (plain SnapKV). `round` halves to even, as Python's.

use burn::tensor::backend::Backend;
use kvpress_core::error::Result;
use kvpress_core::press::check_ratio;
use kvpress_core::{LayerCache, LayerInputs, Press, keep_top_scored};

use crate::snapkv::SnapKv;

/// The PyramidKV press (defaults: SnapKV's window 64 and kernel 5, `beta = 20`).
#[derive(Debug, Clone, Copy)]
pub struct PyramidKv {
    /// The SnapKV scorer whose window and kernel are used.
    pub snapkv: SnapKv,
    /// Mean fraction of entries removed over the layers.
    pub compression_ratio: f64,
    /// Ratio of the largest to the smallest layer budget (≥ 1).
    pub beta: f64,
}

impl PyramidKv {
    /// A press with kvpress's defaults at `compression_ratio`.
    pub fn new(compression_ratio: f64) -> Result<Self> {
        check_ratio(compression_ratio)?;
        Ok(Self {
            snapkv: SnapKv::default(),
            compression_ratio,
            beta: 20.0,
        })
    }

    /// Entries layer `layer` of `layers` keeps out of `n`.
    pub fn layer_budget(&self, n: usize, layer: usize, layers: usize) -> usize {
        let (n_f, w) = (n as f64, self.snapkv.window_size as f64);
        let plain = (n_f * (1.0 - self.compression_ratio)).round_ties_even() as usize;
        let c = w + n_f * (1.0 - self.compression_ratio);
        let mut min = (c - w) / self.beta;
        let mut max = 2.0 * (c - w) - min;
        if max >= n_f - w {
            max = n_f - w;
            min = 2.0 * (c - w) - max;
        }
        if !(n_f >= max && max >= min && min >= w) || layers < 2 {
            return plain;
        }
        (max - layer as f64 * (max - min) / (layers - 1) as f64).round_ties_even() as usize
    }
}

impl<B: Backend> Press<B> for PyramidKv {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        if self.compression_ratio == 0.0 {
            return Ok(());
        }
        keep_top_scored(&self.snapkv, inputs, cache, |n| {
            self.layer_budget(n, inputs.layer, inputs.num_layers)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_of_the_reference_example() {
        // kvpress reference: n = 4096, r = 0.5, w = 64, beta = 20, L = 32 → 3994 … 102
        let p = PyramidKv::new(0.5).expect("press");
        assert_eq!(p.layer_budget(4096, 0, 32), 3994);
        assert_eq!(p.layer_budget(4096, 31, 32), 102);
        let mean = (0..32).map(|l| p.layer_budget(4096, l, 32)).sum::<usize>() as f64 / 32.0;
        assert!((mean - 2048.0).abs() / 2048.0 < 1e-3, "{mean}");
    }

    #[test]
    fn short_contexts_fall_back_to_a_flat_budget() {
        let p = PyramidKv::new(0.5).expect("press");
        // n = 100: min = (50)/20 = 2.5 < w = 64 → plain round(100 · 0.5)
        assert_eq!(p.layer_budget(100, 0, 30), 50);
        assert_eq!(p.layer_budget(100, 29, 30), 50);
    }
}
