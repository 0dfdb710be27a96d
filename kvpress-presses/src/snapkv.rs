//! SnapKVPress (kvpress `snapkv`): the attention that the last `window_size` context tokens pay
//! to earlier keys predicts which keys matter; smoothed by a 1-D average pool; the window itself
//! is always kept. Paper: arXiv 2404.14469.
//!
//! Score of key `j < n − w` of KV head `k` (w = `window_size`, g query heads per KV head):
//! `pool_k( mean_{i<w} A[h, i, j] )` averaged over the g heads `h` of the group, where `A` is the
//! causal softmax attention of the window queries over all `n` keys (normalised over all of
//! them) and `pool` an average of width `kernel_size` with zero padding counted.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::attention::window_attention_mean;
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::to_host;
use kvpress_core::{LayerInputs, Scorer};

/// The SnapKV scorer (defaults `window_size = 64`, `kernel_size = 5`, as kvpress).
#[derive(Debug, Clone, Copy)]
pub struct SnapKv {
    /// Observation window: the last queries whose attention is measured (always kept).
    pub window_size: usize,
    /// Width of the average pool (odd).
    pub kernel_size: usize,
}

impl Default for SnapKv {
    fn default() -> Self {
        Self {
            window_size: 64,
            kernel_size: 5,
        }
    }
}

/// Average pool of width `kernel` along a row, with `kernel / 2` zeros on each side counted in
/// the average (PyTorch's `avg_pool1d` default).
pub(crate) fn average_pool(row: &[f32], kernel: usize) -> Vec<f32> {
    let half = kernel / 2;
    (0..row.len())
        .map(|i| {
            let window = &row[i.saturating_sub(half)..(i + half + 1).min(row.len())];
            window.iter().sum::<f32>() / kernel as f32
        })
        .collect()
}

/// The scores from the window attention averaged over its rows (`[h_q, n]` on the host): per
/// KV head, the average pool of each query head's first `n − w` entries, averaged over the
/// group, then `w` zeros for the window. `[h_kv, n]`, row-major.
///
/// On the host: the scores are a few thousand values per head (burn-flex's `avg_pool1d` took a
/// tenth of the press at 4k tokens), and they are read back for the top-k right after.
fn pooled_group_mean(attended: &[f32], h_kv: usize, n: usize, w: usize, kernel: usize) -> Vec<f32> {
    let h = attended.len() / n.max(1);
    let g = (h / h_kv.max(1)).max(1);
    let mut out = vec![0f32; h_kv * n];
    for (kv, out) in out.chunks_exact_mut(n).enumerate() {
        for head in kv * g..(kv + 1) * g {
            let row = &attended[head * n..][..n - w];
            let pooled = if kernel > 1 {
                average_pool(row, kernel)
            } else {
                row.to_vec()
            };
            for (o, p) in out.iter_mut().zip(pooled) {
                *o += p / g as f32;
            }
        }
    }
    out
}

impl<B: Backend> Scorer<B> for SnapKv {
    /// `[1, h_kv, n]`; the last `window_size` entries score 0 and are protected instead.
    fn score(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        _values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let [_, h_kv, n, d] = keys.dims();
        let w = self.window_size;
        if n <= w {
            return Err(CoreError::Invalid {
                name: "window_size",
                detail: format!(
                    "snapkv needs a context longer than its window of {w} tokens, got {n}"
                ),
            });
        }
        if self.kernel_size.is_multiple_of(2) {
            return Err(CoreError::Invalid {
                name: "kernel_size",
                detail: format!("must be odd, got {}", self.kernel_size),
            });
        }
        let attended = window_attention_mean(inputs.queries, keys, w, (d as f32).powf(-0.5))?;
        let scores = pooled_group_mean(&to_host(attended)?, h_kv, n, w, self.kernel_size);
        Ok(Tensor::from_data(
            TensorData::new(scores, [1, h_kv, n]),
            &keys.device(),
        ))
    }

    fn protected(&self, _inputs: &LayerInputs<'_, B>, n: usize) -> Result<Vec<bool>> {
        Ok((0..n).map(|i| i + self.window_size >= n).collect())
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;

    #[test]
    fn average_pool_counts_the_padding() {
        // (0+3+6)/3, (3+6+9)/3, (6+9+12)/3, (9+12+0)/3
        assert_eq!(
            average_pool(&[3.0, 6.0, 9.0, 12.0], 3),
            vec![3.0, 6.0, 9.0, 7.0]
        );
    }

    #[test]
    fn pooled_scores_are_averaged_over_the_group_and_zero_in_the_window() {
        // two query heads of one KV head, n = 5, window 1, pool 3
        let attended = [3.0, 6.0, 9.0, 12.0, 100.0, 0.0, 3.0, 0.0, 3.0, 100.0];
        let got = pooled_group_mean(&attended, 1, 5, 1, 3);
        // head 0 pooled: 3, 6, 9, 7; head 1 pooled: 1, 1, 2, 1; the window entry 0
        assert_eq!(got, vec![2.0, 3.5, 5.5, 4.0, 0.0]);
    }
}
