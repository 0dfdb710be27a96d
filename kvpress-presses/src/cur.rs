//! CURPress (kvpress `cur`): CUR-decomposition-inspired leverage of keys and values (CurDKV).
//! Paper: arXiv 2509.15038.
//!
//! With `k2_i = ‖k_i‖²`, `v2_i = ‖v_i‖²`, each optionally normalised to sum 1 inside windows of
//! `local_window_size` (zero-padded at the end); combined as `key` → k2, `value` → v2,
//! `kv_avg` → (k2 + v2)/2, `kv_product` → k2·v2; normalised to sum 1 over the sequence. The
//! first `num_sinks` entries are protected. (kvpress's optional random projection of keys and
//! values, `use_random_leverage`, is drawn afresh on every call; here it is seeded by the layer.)

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::to_host;
use kvpress_core::{LayerInputs, Scorer};

use crate::leverage::gaussians;

/// Which leverage combines keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leverage {
    /// Key norms only.
    Key,
    /// Value norms only.
    Value,
    /// Their mean.
    KvAvg,
    /// Their product.
    KvProduct,
}

impl Leverage {
    /// Parses kvpress's names.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "key" => Leverage::Key,
            "value" => Leverage::Value,
            "kv_avg" => Leverage::KvAvg,
            "kv_product" => Leverage::KvProduct,
            _ => return None,
        })
    }
}

/// The CUR scorer (defaults as kvpress: 4 sinks, `kv_product`, local windows of 16).
#[derive(Debug, Clone, Copy)]
pub struct Cur {
    /// First tokens always kept.
    pub num_sinks: usize,
    /// How keys and values combine.
    pub leverage_type: Leverage,
    /// Project keys and values on 20 random directions first.
    pub use_random_leverage: bool,
    /// Normalise inside local windows.
    pub use_local_approximation: bool,
    /// Window of the local normalisation.
    pub local_window_size: usize,
}

impl Default for Cur {
    fn default() -> Self {
        Self {
            num_sinks: 4,
            leverage_type: Leverage::KvProduct,
            use_random_leverage: false,
            use_local_approximation: true,
            local_window_size: 16,
        }
    }
}

/// Squared row norms of `x` (`[1, h, n, c]`) after an optional random projection: `h` rows of `n`.
fn squared_norms<B: Backend>(
    x: &Tensor<B, 4>,
    projection: Option<&Tensor<B, 2>>,
) -> Result<Vec<Vec<f32>>> {
    let [_, h, n, c] = x.dims();
    let x = match projection {
        Some(g) => x
            .clone()
            .reshape([h * n, c])
            .matmul(g.clone())
            .reshape([1, h, n, g.dims()[1]]),
        None => x.clone(),
    };
    let sq = (x.clone() * x).sum_dim(3).reshape([h * n]);
    Ok(to_host(sq)?.chunks(n.max(1)).map(<[f32]>::to_vec).collect())
}

/// Each window of `w` entries divided by its sum (the last window zero-padded).
fn local_normalise(row: &mut [f32], w: usize) {
    for window in row.chunks_mut(w.max(1)) {
        let total: f32 = window.iter().sum();
        if total > 0.0 {
            for x in window.iter_mut() {
                *x /= total;
            }
        }
    }
}

impl<B: Backend> Scorer<B> for Cur {
    /// `[1, h_kv, n]` leverage shares; the sinks score 0 and are protected.
    fn score(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let [_, h_kv, n, d] = keys.dims();
        if self.local_window_size == 0 {
            return Err(CoreError::Invalid {
                name: "local_window_size",
                detail: "must be positive".into(),
            });
        }
        let projection = self.use_random_leverage.then(|| {
            // 20 Gaussian directions / √20, reproducible per layer
            let data: Vec<f32> = gaussians(inputs.layer as u64, d * 20)
                .into_iter()
                .map(|x| (x / 20f64.sqrt()) as f32)
                .collect();
            Tensor::<B, 2>::from_data(TensorData::new(data, [d, 20]), &keys.device())
        });
        let mut k2 = squared_norms(keys, projection.as_ref())?;
        let mut v2 = squared_norms(values, projection.as_ref())?;
        let mut out = Vec::with_capacity(h_kv * n);
        for (k, v) in k2.iter_mut().zip(v2.iter_mut()) {
            if self.use_local_approximation {
                local_normalise(k, self.local_window_size);
                local_normalise(v, self.local_window_size);
            }
            let mut row: Vec<f32> = k
                .iter()
                .zip(v.iter())
                .map(|(&a, &b)| match self.leverage_type {
                    Leverage::Key => a,
                    Leverage::Value => b,
                    Leverage::KvAvg => (a + b) / 2.0,
                    Leverage::KvProduct => a * b,
                })
                .collect();
            let total: f32 = row.iter().sum();
            if total > 0.0 {
                row.iter_mut().for_each(|x| *x /= total);
            }
            for x in row.iter_mut().take(self.num_sinks) {
                *x = 0.0;
            }
            out.extend(row);
        }
        Ok(Tensor::from_data(
            TensorData::new(out, [1, h_kv, n]),
            &keys.device(),
        ))
    }

    fn protected(&self, _inputs: &LayerInputs<'_, B>, n: usize) -> Result<Vec<bool>> {
        Ok((0..n).map(|i| i < self.num_sinks).collect())
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::Fixture;

    #[test]
    fn kv_product_of_locally_normalised_norms() {
        // one head, d = 2, n = 4, windows of 2: k2 = [1, 3, 4, 4] → [1/4, 3/4, 1/2, 1/2];
        // v2 = [2, 2, 1, 3] → [1/2, 1/2, 1/4, 3/4]; product [1/8, 3/8, 1/8, 3/8], sum 1
        let mut f = Fixture::new(1, 1, 4, 2);
        let dev = Default::default();
        let s3 = 3f32.sqrt();
        f.keys = Tensor::from_data(
            TensorData::new(vec![1.0, 0.0, s3, 0.0, 2.0, 0.0, 0.0, 2.0], [1, 1, 4, 2]),
            &dev,
        );
        let s2 = 2f32.sqrt();
        let values = Tensor::from_data(
            TensorData::new(vec![s2, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, s3], [1, 1, 4, 2]),
            &dev,
        );
        let cur = Cur {
            num_sinks: 0,
            local_window_size: 2,
            ..Default::default()
        };
        let got: Vec<f32> = cur
            .score(&f.inputs(), &f.keys, &values)
            .expect("score")
            .into_data()
            .to_vec()
            .expect("f32");
        for (a, b) in got.iter().zip([0.125, 0.375, 0.125, 0.375]) {
            assert!((a - b).abs() < 1e-6, "{got:?}");
        }
    }
}
