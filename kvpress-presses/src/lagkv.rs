//! LagKVPress (kvpress `lagkv`): query- and attention-free. The context after the sinks is cut
//! into partitions of `lag_size`; each token's channels are normalised by the min/max of the
//! **next** partition, and tokens whose normalised channels vary more are kept.
//! Paper: arXiv 2504.04704.
//!
//! With `n_sink` sinks, `P = ⌊(n − n_sink)/lag⌋` partitions: for partition `p < P − 1` and each
//! token, `u_c = (x_c − lo_c)/(hi_c − lo_c)` (lo/hi over partition `p + 1`, per channel),
//! `σ = std_c(u)` (unbiased), `s = softmax over the partition's tokens of σ`, for keys and
//! values, averaged. Unless `cross_scoring`, `s` becomes the token's rank inside its partition
//! divided by `lag`. Sinks and the last partition plus the remainder are protected. Contexts
//! shorter than `n_sink + 2·lag` score `t/(n − n_sink)` (the most recent tokens win).

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::to_host;
use kvpress_core::{LayerInputs, Scorer};

/// The LagKV scorer (defaults `n_sink = 4`, `lag_size = 128`, `cross_scoring = false`).
#[derive(Debug, Clone, Copy)]
pub struct LagKv {
    /// First tokens always kept.
    pub n_sink: usize,
    /// Partition length.
    pub lag_size: usize,
    /// Keep the softmax scores instead of ranks within a partition.
    pub cross_scoring: bool,
}

impl Default for LagKv {
    fn default() -> Self {
        Self {
            n_sink: 4,
            lag_size: 128,
            cross_scoring: false,
        }
    }
}

impl LagKv {
    /// Scores one head's `n` rows of `d` channels of keys and values (host data).
    fn head_scores(&self, keys: &[f32], values: &[f32], n: usize, d: usize) -> Vec<f32> {
        let (sink, lag) = (self.n_sink, self.lag_size);
        let mut scores = vec![0f32; n];
        if n < sink + 2 * lag {
            for (t, s) in scores.iter_mut().enumerate().skip(sink) {
                *s = (t - sink) as f32 / (n - sink) as f32;
            }
            return scores;
        }
        let partitions = (n - sink) / lag;
        for p in 0..partitions - 1 {
            let start = sink + p * lag;
            let k = partition_scores(keys, start, lag, d);
            let v = partition_scores(values, start, lag, d);
            let mixed: Vec<f32> = k.iter().zip(&v).map(|(a, b)| (a + b) / 2.0).collect();
            let out = &mut scores[start..start + lag];
            if self.cross_scoring {
                out.copy_from_slice(&mixed);
            } else {
                let mut order: Vec<usize> = (0..lag).collect();
                order.sort_by(|&a, &b| mixed[a].total_cmp(&mixed[b]).then(a.cmp(&b)));
                for (rank, &t) in order.iter().enumerate() {
                    out[t] = rank as f32 / lag as f32;
                }
            }
        }
        scores
    }

    /// Tokens protected in a context of `n`: the sinks, and the last partition plus the
    /// remainder (or only the sinks for short contexts, whose ramp keeps the recent ones).
    fn is_protected(&self, i: usize, n: usize) -> bool {
        let (sink, lag) = (self.n_sink, self.lag_size);
        if i < sink {
            return true;
        }
        if n < sink + 2 * lag {
            return false;
        }
        let scored_end = sink + ((n - sink) / lag - 1) * lag;
        i >= scored_end
    }
}

/// Softmax over the `lag` tokens at `start` of the std of their channels normalised by the
/// next partition's per-channel range.
fn partition_scores(x: &[f32], start: usize, lag: usize, d: usize) -> Vec<f32> {
    let reference = &x[(start + lag) * d..(start + 2 * lag) * d];
    let mut lo = vec![f32::INFINITY; d];
    let mut hi = vec![f32::NEG_INFINITY; d];
    for row in reference.chunks(d) {
        for c in 0..d {
            lo[c] = lo[c].min(row[c]);
            hi[c] = hi[c].max(row[c]);
        }
    }
    let stds: Vec<f32> = x[start * d..(start + lag) * d]
        .chunks(d)
        .map(|row| {
            let u: Vec<f32> = (0..d).map(|c| (row[c] - lo[c]) / (hi[c] - lo[c])).collect();
            let mean = u.iter().sum::<f32>() / d as f32;
            let var = u.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / (d as f32 - 1.0);
            var.sqrt()
        })
        .collect();
    let max = stds.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = stds.iter().map(|s| (s - max).exp()).collect();
    let total: f32 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

impl<B: Backend> Scorer<B> for LagKv {
    /// `[1, h_kv, n]`; protected entries score 0.
    fn score(
        &self,
        _inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let [_, h_kv, n, d] = keys.dims();
        if self.lag_size == 0 || d < 2 {
            return Err(CoreError::Invalid {
                name: "lag_size",
                detail: format!(
                    "lagkv needs lag_size > 0 and head_dim ≥ 2, got {} / {d}",
                    self.lag_size
                ),
            });
        }
        if n <= self.n_sink {
            return Err(CoreError::Invalid {
                name: "n_sink",
                detail: format!(
                    "lagkv keeps {} sink tokens but the context has only {n}",
                    self.n_sink
                ),
            });
        }
        let (k, v) = (to_host(keys.clone())?, to_host(values.clone())?);
        let per_head = n * d;
        let out: Vec<f32> = (0..h_kv)
            .flat_map(|h| {
                let range = h * per_head..(h + 1) * per_head;
                let mut s = self.head_scores(&k[range.clone()], &v[range], n, d);
                for (i, x) in s.iter_mut().enumerate() {
                    if self.is_protected(i, n) {
                        *x = 0.0;
                    }
                }
                s
            })
            .collect();
        Ok(Tensor::from_data(
            TensorData::new(out, [1, h_kv, n]),
            &keys.device(),
        ))
    }

    fn protected(&self, _inputs: &LayerInputs<'_, B>, n: usize) -> Result<Vec<bool>> {
        Ok((0..n).map(|i| self.is_protected(i, n)).collect())
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::{Fixture, kept_positions};
    use kvpress_core::ScorerPress;

    #[test]
    fn partition_scores_by_hand() {
        // two tokens of d = 2 scored against the next two: lo = [0, 0], hi = [2, 4]
        // token 0 = [2, 0] → u = [1, 0], std = 0.7071; token 1 = [1, 2] → u = [0.5, 0.5], std 0
        let x = [2.0f32, 0.0, 1.0, 2.0, 0.0, 4.0, 2.0, 0.0];
        let s = partition_scores(&x, 0, 2, 2);
        let e = (0.5f32).sqrt().exp();
        assert!((s[0] - e / (e + 1.0)).abs() < 1e-6, "{s:?}");
        assert!((s[1] - 1.0 / (e + 1.0)).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn sinks_and_the_last_partitions_are_kept() {
        // n = 4 + 3·4 + 2 = 18, lag 4: partitions [4,8) [8,12) scored, [12,18) protected
        let f = Fixture::new(1, 2, 18, 4);
        let lag = LagKv {
            n_sink: 4,
            lag_size: 4,
            cross_scoring: false,
        };
        let kept = kept_positions(&f, &ScorerPress::new(lag, 0.3).expect("press"));
        // keep ⌊18·0.7⌋ = 12 = 4 sinks + 6 protected + the 2 best ranks (3/4 each) of 2 partitions
        for head in &kept {
            assert_eq!(head.len(), 12);
            assert!((0..4).chain(12..18).all(|p| head.contains(&p)), "{head:?}");
            assert_eq!(head.iter().filter(|&&p| (4..8).contains(&p)).count(), 1);
            assert_eq!(head.iter().filter(|&&p| (8..12).contains(&p)).count(), 1);
        }
    }

    #[test]
    fn short_contexts_keep_the_most_recent_tokens() {
        let f = Fixture::new(1, 1, 10, 4);
        let kept = kept_positions(&f, &ScorerPress::new(LagKv::default(), 0.5).expect("press"));
        assert_eq!(kept, vec![vec![0, 1, 2, 3, 9]]);
    }
}
