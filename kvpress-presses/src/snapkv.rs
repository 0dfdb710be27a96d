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

/// Average pool of width `kernel` along the last axis with `kernel / 2` zeros on each side,
/// counted in the average (PyTorch's `avg_pool1d` default). `[b, h, m]` → `[b, h, m]`.
///
/// On the host: the scores are a few thousand values per head (burn-flex's `avg_pool1d` took a
/// tenth of the press at 4k tokens), and they are read back for the top-k right after.
fn average_pool<B: Backend>(x: Tensor<B, 3>, kernel: usize) -> Result<Tensor<B, 3>> {
    if kernel <= 1 {
        return Ok(x);
    }
    let (dims, device) = (x.dims(), x.device());
    let m = dims[2].max(1);
    let half = kernel / 2;
    let data = to_host(x)?;
    let mut out = vec![0f32; data.len()];
    for (row, pooled) in data.chunks(m).zip(out.chunks_mut(m)) {
        for (i, p) in pooled.iter_mut().enumerate() {
            let window = &row[i.saturating_sub(half)..(i + half + 1).min(m)];
            *p = window.iter().sum::<f32>() / kernel as f32;
        }
    }
    Ok(Tensor::from_data(TensorData::new(out, dims), &device))
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
        let h = inputs.queries.dims()[1];
        let attended = window_attention_mean(inputs.queries, keys, w, (d as f32).powf(-0.5))?
            .narrow(2, 0, n - w);
        let pooled = average_pool(attended, self.kernel_size)?;
        let grouped = pooled
            .reshape([1, h_kv, h / h_kv, n - w])
            .mean_dim(2)
            .reshape([1, h_kv, n - w]);
        let window = Tensor::<B, 3>::zeros([1, h_kv, w], &keys.device());
        Ok(Tensor::cat(vec![grouped, window], 2))
    }

    fn protected(&self, _inputs: &LayerInputs<'_, B>, n: usize) -> Result<Vec<bool>> {
        Ok((0..n).map(|i| i + self.window_size >= n).collect())
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

    #[test]
    fn average_pool_counts_the_padding() {
        let x = Tensor::<B, 3>::from_data(
            TensorData::new(vec![3.0f32, 6.0, 9.0, 12.0], [1, 1, 4]),
            &Default::default(),
        );
        let got: Vec<f32> = average_pool(x, 3)
            .expect("pooled")
            .into_data()
            .to_vec()
            .expect("f32");
        // (0+3+6)/3, (3+6+9)/3, (6+9+12)/3, (9+12+0)/3
        assert_eq!(got, vec![3.0, 6.0, 9.0, 7.0]);
    }
}
