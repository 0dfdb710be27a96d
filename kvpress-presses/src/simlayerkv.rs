//! SimLayerKVPress (kvpress `simlayerkv`): a layer whose last tokens attend mostly to the
//! initial and recent tokens is "lazy" and keeps only those (StreamingLLM-style); other layers
//! keep everything. Paper: arXiv 2410.13846.
//!
//! With `A` the attention of the last `n_last` queries over the first `n − n_last` keys, averaged
//! over heads and those queries: the layer is lazy when `Σ A[..n_initial] + Σ A[last n_recent]`
//! exceeds `lazy_threshold`; it then keeps `0..n_initial` and the last `n_recent − n_last` entries.
//! A threshold of 1 disables compression.

use burn::tensor::backend::Backend;
use kvpress_core::attention::window_attention;
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::to_host;
use kvpress_core::{LayerCache, LayerInputs, Press};

/// The SimLayerKV press (defaults as kvpress: threshold 1.0 = off, 1 last, 1024 recent, 4 initial).
#[derive(Debug, Clone, Copy)]
pub struct SimLayerKv {
    /// Attention share on initial + recent tokens above which a layer is lazy, in `[0, 1]`.
    pub lazy_threshold: f64,
    /// Last queries whose attention is measured.
    pub n_last: usize,
    /// Recent tokens a lazy layer keeps.
    pub n_recent: usize,
    /// Initial tokens a lazy layer keeps.
    pub n_initial: usize,
}

impl Default for SimLayerKv {
    fn default() -> Self {
        Self {
            lazy_threshold: 1.0,
            n_last: 1,
            n_recent: 1024,
            n_initial: 4,
        }
    }
}

impl<B: Backend> Press<B> for SimLayerKv {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        if !(0.0..=1.0).contains(&self.lazy_threshold) || self.n_recent <= self.n_last {
            return Err(CoreError::Invalid {
                name: "simlayerkv",
                detail: "lazy_threshold must be in [0, 1] and n_recent above n_last".into(),
            });
        }
        let Some((ref keys, _)) = cache.keys_values()? else {
            return Ok(());
        };
        let [_, h_kv, n, d] = keys.dims();
        if self.lazy_threshold >= 1.0 || n <= self.n_initial + self.n_recent + self.n_last {
            return Ok(());
        }
        let w = self.n_last;
        let probs = window_attention(inputs.queries, keys, w, (d as f32).powf(-0.5))?;
        let h = probs.dims()[1];
        let mean = probs
            .narrow(3, 0, n - w)
            .reshape([h * w, n - w])
            .mean_dim(0)
            .reshape([n - w]);
        let share = to_host(mean)?;
        let initial: f32 = share[..self.n_initial].iter().sum();
        let recent: f32 = share[n - w - self.n_recent..].iter().sum();
        if ((initial + recent) as f64) <= self.lazy_threshold {
            return Ok(());
        }
        let kept: Vec<usize> = (0..self.n_initial)
            .chain(n - (self.n_recent - self.n_last)..n)
            .collect();
        cache.keep(&vec![kept; h_kv])
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::{Fixture, kept_positions};

    #[test]
    fn a_lazy_layer_keeps_initial_and_recent_tokens() {
        let f = Fixture::new(2, 2, 40, 8);
        // every layer is lazy at threshold 0: keep 4 initial + (10 − 1) recent
        let press = SimLayerKv {
            lazy_threshold: 0.0,
            n_last: 1,
            n_recent: 10,
            n_initial: 4,
        };
        let want: Vec<usize> = (0..4).chain(31..40).collect();
        assert_eq!(kept_positions(&f, &press), vec![want.clone(), want]);
        // threshold 1 never compresses; a short context neither
        let off = SimLayerKv {
            lazy_threshold: 1.0,
            ..press
        };
        assert_eq!(kept_positions(&f, &off)[0].len(), 40);
        let short = SimLayerKv {
            n_recent: 36,
            ..press
        };
        assert_eq!(kept_positions(&f, &short)[0].len(), 40);
    }
}
