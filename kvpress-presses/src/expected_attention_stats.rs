//! ExpectedAttentionStatsPress (kvpress `expected_attention_stats`): ExpectedAttention with the
//! query mean and covariance measured offline on a calibration corpus instead of on the
//! current context.
//!
//! **Artefact**: kvpress downloads the statistics from the hub; here they are read from a local
//! safetensors file given as `expected_attention_stats(path='…')` with `query_mean`
//! `[layers, heads, head_dim]` and `query_cov` `[layers, heads, head_dim, head_dim]` (pre-RoPE
//! queries, first `n_sink` positions of each sample left out, covariance with `1/(N − 1)`).
//! `kvpress calibrate --corpus FILE --out stats.safetensors` writes such a file with
//! [`StatisticsCollector`].

use std::path::Path;
use std::sync::Mutex;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::artifacts::{Artifact, write_f32};
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::to_host;
use kvpress_core::{LayerCache, LayerInputs, Press, Scorer};

use crate::expected_attention::ExpectedAttention;

/// ExpectedAttention over stored query statistics.
#[derive(Debug, Clone)]
pub struct ExpectedAttentionStats {
    /// The scorer's other parameters (`n_future_positions`, `n_sink`, …).
    pub base: ExpectedAttention,
    /// `[layer][heads · d]` means.
    mean: Vec<Vec<f32>>,
    /// `[layer][heads · d · d]` covariances.
    cov: Vec<Vec<f32>>,
    heads: usize,
    head_dim: usize,
}

impl ExpectedAttentionStats {
    /// Reads `query_mean` and `query_cov` from a safetensors file.
    pub fn load(path: &Path, base: ExpectedAttention) -> Result<Self> {
        let file = Artifact::open(path, "expected_attention_stats")?;
        let shape = file
            .shape("query_mean")
            .map(<[usize]>::to_vec)
            .unwrap_or_default();
        let [layers, heads, d] = shape[..] else {
            return Err(CoreError::Invalid {
                name: "expected_attention_stats",
                detail: format!(
                    "{} needs `query_mean` [layers, heads, head_dim] and `query_cov` \
                     [layers, heads, head_dim, head_dim] (kvpress calibrate writes them)",
                    path.display()
                ),
            });
        };
        let mean = file.tensor("query_mean", &[layers, heads, d])?;
        let cov = file.tensor("query_cov", &[layers, heads, d, d])?;
        Ok(Self {
            base,
            mean: mean.chunks(heads * d).map(<[f32]>::to_vec).collect(),
            cov: cov.chunks(heads * d * d).map(<[f32]>::to_vec).collect(),
            heads,
            head_dim: d,
        })
    }
}

impl<B: Backend> Scorer<B> for ExpectedAttentionStats {
    /// `[1, h_kv, n]` as ExpectedAttention; the sinks score 0 and are protected.
    fn score(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let [_, _, n, d] = keys.dims();
        let h = inputs.queries.dims()[1];
        let (Some(mean), Some(cov)) = (self.mean.get(inputs.layer), self.cov.get(inputs.layer))
        else {
            return Err(CoreError::Invalid {
                name: "expected_attention_stats",
                detail: format!(
                    "the statistics cover {} layers, not layer {}",
                    self.mean.len(),
                    inputs.layer
                ),
            });
        };
        if h != self.heads || d != self.head_dim {
            return Err(CoreError::Invalid {
                name: "expected_attention_stats",
                detail: format!(
                    "statistics for {} heads of {}, the model has {h} of {d}",
                    self.heads, self.head_dim
                ),
            });
        }
        let device = keys.device();
        let mean = Tensor::<B, 4>::from_data(TensorData::new(mean.clone(), [1, h, 1, d]), &device);
        let cov = Tensor::<B, 4>::from_data(TensorData::new(cov.clone(), [1, h, d, d]), &device);
        let next = inputs.positions.iter().max().map_or(n, |&p| p + 1);
        self.base
            .score_with_statistics(inputs.rope, keys, values, mean, Some(cov), next)
    }

    fn protected(&self, inputs: &LayerInputs<'_, B>, n: usize) -> Result<Vec<bool>> {
        Scorer::<B>::protected(&self.base, inputs, n)
    }
}

/// Per-layer running sums of pre-RoPE queries: `Σ q` and `Σ q qᵀ` per head, and the count.
#[derive(Default)]
struct Sums {
    count: usize,
    sum: Vec<f64>,
    outer: Vec<f64>,
}

/// A press that changes nothing and accumulates the pre-RoPE query statistics of every prefill
/// it sees (positions from `n_sink` on), to be saved with [`StatisticsCollector::save`].
pub struct StatisticsCollector {
    /// First positions of each sample left out.
    pub n_sink: usize,
    layers: Mutex<Vec<Sums>>,
    shape: Mutex<(usize, usize)>,
}

impl StatisticsCollector {
    /// A collector skipping the first `n_sink` positions of each sample.
    pub fn new(n_sink: usize) -> Self {
        Self {
            n_sink,
            layers: Mutex::new(Vec::new()),
            shape: Mutex::new((0, 0)),
        }
    }

    /// Queries seen per layer.
    pub fn count(&self) -> usize {
        self.layers
            .lock()
            .map(|l| l.first().map_or(0, |s| s.count))
            .unwrap_or(0)
    }

    /// Writes `query_mean` and `query_cov` (`1/(N − 1)`) to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let layers = self
            .layers
            .lock()
            .map_err(|_| CoreError::Data("statistics poisoned by a panic".into()))?;
        let (h, d) = *self
            .shape
            .lock()
            .map_err(|_| CoreError::Data("statistics poisoned by a panic".into()))?;
        let n = layers.first().map_or(0, |s| s.count);
        if n < 2 {
            return Err(CoreError::Invalid {
                name: "calibration",
                detail: format!("{n} queries seen; at least 2 are needed (a longer corpus?)"),
            });
        }
        let mut mean = Vec::with_capacity(layers.len() * h * d);
        let mut cov = Vec::with_capacity(layers.len() * h * d * d);
        for s in layers.iter() {
            let mu: Vec<f64> = s.sum.iter().map(|x| x / s.count as f64).collect();
            for head in 0..h {
                for a in 0..d {
                    for b in 0..d {
                        let (ma, mb) = (mu[head * d + a], mu[head * d + b]);
                        let e = s.outer[(head * d + a) * d + b];
                        cov.push(((e - s.count as f64 * ma * mb) / (s.count - 1) as f64) as f32);
                    }
                }
            }
            mean.extend(mu.iter().map(|&x| x as f32));
        }
        let l = layers.len();
        write_f32(
            path,
            &[
                ("query_mean".into(), vec![l, h, d], mean),
                ("query_cov".into(), vec![l, h, d, d], cov),
            ],
        )
    }
}

impl<B: Backend> Press<B> for StatisticsCollector {
    fn compress(&self, inputs: &LayerInputs<'_, B>, _cache: &mut LayerCache<B>) -> Result<()> {
        let [_, h, m, d] = inputs.queries_pre_rope.dims();
        let first = inputs
            .positions
            .iter()
            .position(|&p| p >= self.n_sink)
            .unwrap_or(m);
        if first == m {
            return Ok(());
        }
        let q = inputs.queries_pre_rope.clone().narrow(2, first, m - first); // [1, h, T, d]
        let sum = to_host(q.clone().sum_dim(2).reshape([h * d]))?;
        let outer = to_host(q.clone().swap_dims(2, 3).matmul(q).reshape([h * d * d]))?;
        let poisoned = || CoreError::Data("statistics poisoned by a panic".into());
        *self.shape.lock().map_err(|_| poisoned())? = (h, d);
        let mut layers = self.layers.lock().map_err(|_| poisoned())?;
        if layers.len() <= inputs.layer {
            layers.resize_with(inputs.layer + 1, Sums::default);
        }
        let s = &mut layers[inputs.layer];
        s.sum.resize(h * d, 0.0);
        s.outer.resize(h * d * d, 0.0);
        s.count += m - first;
        for (acc, x) in s.sum.iter_mut().zip(sum) {
            *acc += x as f64;
        }
        for (acc, x) in s.outer.iter_mut().zip(outer) {
            *acc += x as f64;
        }
        Ok(())
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::Fixture;

    #[test]
    fn collected_statistics_reproduce_the_in_context_scores() {
        // Statistics collected on the fixture itself (its queries, sinks left out) give the
        // in-context scorer's result, up to the 1/(N−1) vs 1/N covariance: compare without
        // the covariance term.
        let f = Fixture::new(2, 2, 20, 8);
        let collector = StatisticsCollector::new(4);
        let mut cache = LayerCache::default();
        cache
            .append(f.keys.clone(), f.keys.clone(), &f.positions)
            .expect("append");
        collector
            .compress(&f.inputs(), &mut cache)
            .expect("collect");
        assert_eq!(collector.count(), 16);
        let path =
            std::env::temp_dir().join(format!("ea-stats-{}.safetensors", std::process::id()));
        collector.save(&path).expect("save");
        let base = ExpectedAttention {
            use_covariance: false,
            ..Default::default()
        };
        let stats = ExpectedAttentionStats::load(&path, base).expect("load");
        let a: Vec<f32> = stats
            .score(&f.inputs(), &f.keys, &f.keys)
            .expect("score")
            .into_data()
            .to_vec()
            .expect("f32");
        let b: Vec<f32> = base
            .score(&f.inputs(), &f.keys, &f.keys)
            .expect("score")
            .into_data()
            .to_vec()
            .expect("f32");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        // the covariance is the sample covariance: trace = Σ var (checked on head 0, dim 0)
        let q: Vec<f32> = f
            .queries
            .clone()
            .narrow(1, 0, 1)
            .narrow(2, 4, 16)
            .narrow(3, 0, 1)
            .into_data()
            .to_vec()
            .expect("f32");
        let mu = q.iter().sum::<f32>() / 16.0;
        let var = q.iter().map(|x| (x - mu).powi(2)).sum::<f32>() / 15.0;
        let file = Artifact::open(&path, "test").expect("open");
        let cov = file.tensor("query_cov", &[1, 4, 8, 8]).expect("cov");
        assert!((cov[0] - var).abs() < 1e-4, "{} vs {var}", cov[0]);
        std::fs::remove_file(&path).ok();
    }
}
