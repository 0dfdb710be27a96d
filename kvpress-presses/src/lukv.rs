//! LUKVPress (kvpress `lukv`, LU-KV): per-(layer, KV head) budgets from an offline-optimised
//! budget curve; the inner scorer ranks the tokens inside each head. Paper: arXiv 2602.08585.
//!
//! At ratio `r`: row `t = clamp(round(100 r) − 1, 0, 98)` of the curve gives each head's prune
//! ratio `r_h`; ideal keeps `κ_h = clamp(1 − r_h, 0, 1) · n`; the layer keeps
//! `T = clamp(round(Σ κ_h), h_kv, h_kv · n)` entries, `⌊κ_h⌋` per head plus the rest by largest
//! remainder, each head at least 1. The first `sink` and last `window` tokens are protected.
//! The cache goes ragged and holds exactly the kept entries (kvpress masks).
//!
//! **Artefact**: kvpress downloads curves (only Llama-3.1-8B-Instruct × ExpectedAttention is
//! published, github baidu-baige/LU-KV); here the curve is a local file given as
//! `lukv(scorer, path='…')`: a `.npy` (f4/f8) or JSON nested list of shape
//! `[99, layers, kv_heads]`, row `t` for ratio `(t + 1)/100`.

use std::path::Path;

use burn::tensor::backend::Backend;
use kvpress_core::artifacts::read_array;
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::{check_ratio, host_scores, ranked};
use kvpress_core::{LayerCache, LayerInputs, Press, Scorer};

/// The LU-KV press over scorer `S` with its budget curve.
#[derive(Debug, Clone)]
pub struct LuKv<S> {
    /// Ranks tokens inside each head.
    pub scorer: S,
    /// Fraction of entries removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// First tokens always kept.
    pub sink: usize,
    /// Last tokens always kept.
    pub window: usize,
    /// `[99][layers][kv_heads]` prune ratios.
    curve: Vec<Vec<Vec<f64>>>,
}

impl<S> LuKv<S> {
    /// LU-KV over `scorer` with a curve `[99, layers, kv_heads]` (sink 4, window 1).
    pub fn new(
        scorer: S,
        compression_ratio: f64,
        curve: Vec<f64>,
        shape: [usize; 3],
    ) -> Result<Self> {
        check_ratio(compression_ratio)?;
        let [rows, layers, heads] = shape;
        if rows != 99 || layers == 0 || heads == 0 || curve.len() != rows * layers * heads {
            return Err(CoreError::Invalid {
                name: "lukv",
                detail: format!("the budget curve must be [99, layers, kv_heads], got {shape:?}"),
            });
        }
        Ok(Self {
            scorer,
            compression_ratio,
            sink: 4,
            window: 1,
            curve: curve
                .chunks(layers * heads)
                .map(|row| row.chunks(heads).map(<[f64]>::to_vec).collect())
                .collect(),
        })
    }

    /// Reads the curve from a `.npy` or JSON file.
    pub fn load(scorer: S, compression_ratio: f64, path: &Path) -> Result<Self> {
        let (shape, values) = read_array(path, "lukv")?;
        let [a, b, c] = shape[..] else {
            return Err(CoreError::Invalid {
                name: "lukv",
                detail: format!(
                    "{}: the curve must be [99, layers, kv_heads], got {shape:?}",
                    path.display()
                ),
            });
        };
        Self::new(scorer, compression_ratio, values, [a, b, c])
    }

    /// Entries kept by each head of `layer` out of `n`.
    pub fn head_budgets(&self, layer: usize, n: usize) -> Result<Vec<usize>> {
        let t =
            ((100.0 * self.compression_ratio).round_ties_even() as i64 - 1).clamp(0, 98) as usize;
        let ratios = self.curve[t].get(layer).ok_or_else(|| CoreError::Invalid {
            name: "lukv",
            detail: format!(
                "the curve covers {} layers, not layer {layer}",
                self.curve[t].len()
            ),
        })?;
        let h = ratios.len();
        let ideal: Vec<f64> = ratios
            .iter()
            .map(|r| (1.0 - r).clamp(0.0, 1.0) * n as f64)
            .collect();
        let total = (ideal.iter().sum::<f64>().round_ties_even() as usize).clamp(h, h * n);
        let mut keep: Vec<usize> = ideal.iter().map(|k| k.floor() as usize).collect();
        let mut order: Vec<usize> = (0..h).collect();
        order.sort_by(|&a, &b| {
            let (ra, rb) = (ideal[a] - ideal[a].floor(), ideal[b] - ideal[b].floor());
            rb.total_cmp(&ra).then(a.cmp(&b))
        });
        let mut missing = total.saturating_sub(keep.iter().sum());
        for &i in order.iter().cycle().take(h * n) {
            if missing == 0 {
                break;
            }
            if keep[i] < n {
                keep[i] += 1;
                missing -= 1;
            }
        }
        Ok(keep.into_iter().map(|k| k.clamp(1, n)).collect())
    }
}

impl<B: Backend, S: Scorer<B>> Press<B> for LuKv<S> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        if self.compression_ratio == 0.0 {
            return Ok(());
        }
        let Some((ref keys, ref values)) = cache.keys_values()? else {
            return Ok(());
        };
        let [_, h_kv, n, _] = keys.dims();
        let budgets = self.head_budgets(inputs.layer, n)?;
        if budgets.len() != h_kv {
            return Err(CoreError::Invalid {
                name: "lukv",
                detail: format!("the curve has {} KV heads, the model {h_kv}", budgets.len()),
            });
        }
        let scores = host_scores(&self.scorer, inputs, keys, values)?;
        let mut protected = scores.protected.clone();
        protected.resize(n, false);
        for (i, p) in protected.iter_mut().enumerate() {
            *p |= i < self.sink || i + self.window >= n;
        }
        let kept: Vec<Vec<usize>> = scores
            .rows
            .iter()
            .zip(&budgets)
            .map(|(row, &k)| {
                let mut idx = ranked(row, &protected);
                idx.truncate(k);
                idx.sort_unstable();
                idx
            })
            .collect();
        cache.keep(&kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_follow_the_curve_with_largest_remainders() {
        // 2 layers × 3 heads; at ratio 0.5 (row 49) layer 1 prunes 0.1, 0.55, 0.9 of n = 10
        let mut curve = vec![0.5; 99 * 2 * 3];
        curve[(49 * 2 + 1) * 3..(49 * 2 + 2) * 3].copy_from_slice(&[0.1, 0.55, 0.9]);
        let press = LuKv::new((), 0.5, curve, [99, 2, 3]).expect("press");
        // κ = 9, 4.5, 1 → T = round(14.5) = 14 (ties to even); floors 9, 4, 1 = 14
        assert_eq!(press.head_budgets(1, 10).expect("budgets"), vec![9, 4, 1]);
        assert_eq!(press.head_budgets(0, 10).expect("budgets"), vec![5, 5, 5]);
        assert!(press.head_budgets(2, 10).is_err());
        assert!(LuKv::new((), 0.5, vec![0.0; 10], [98, 1, 1]).is_err());
    }
}
