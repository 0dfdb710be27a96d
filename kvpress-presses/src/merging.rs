//! MergingPress (kvpress `merging`): merge-on-evict. The scorer chooses what is kept; each
//! evicted entry's **value** is folded into the kept entry of the same head whose key is most
//! similar (cosine); keys are untouched, so RoPE stays consistent. Inspired by Token Merging
//! (arXiv 2210.09461) and D2O (arXiv 2406.13035).
//!
//! Evicted `e` → target `t(e) = argmax_t cos(k_e, k_t)` with similarity `σ_e`; merged when
//! `σ_e ≥ similarity_threshold` (and, if `merge_fraction < 1`, `σ_e` at least the
//! `(1 − merge_fraction)` quantile of those passing); weight
//! `w_e = max(σ_e, 0) · ‖v_e‖ / (‖v_e‖ + ‖v_t‖ + ε)`; then `v_t ← (v_t + Σ w_e v_e)/(1 + Σ w_e)`.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::{check_ratio, kept_count, to_host};
use kvpress_core::{LayerCache, LayerInputs, Press, Scorer, top_scored_indices};

const EPSILON: f32 = 1e-6;

/// The merging press over scorer `S` (defaults: threshold 0, merge fraction 1).
#[derive(Debug, Clone)]
pub struct Merging<S> {
    /// Chooses the kept entries.
    pub scorer: S,
    /// Fraction of entries removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// Smallest cosine similarity that merges, in `[0, 1]`.
    pub similarity_threshold: f64,
    /// Share of the passing evicted entries that merge (the most similar), in `(0, 1]`.
    pub merge_fraction: f64,
}

impl<S> Merging<S> {
    /// Merging over `scorer` at `compression_ratio` with kvpress's defaults.
    pub fn new(scorer: S, compression_ratio: f64) -> Result<Self> {
        check_ratio(compression_ratio)?;
        Ok(Self {
            scorer,
            compression_ratio,
            similarity_threshold: 0.0,
            merge_fraction: 1.0,
        })
    }
}

/// Linear-interpolation quantile (torch's default) of non-empty `values`.
fn quantile(values: &[f32], q: f64) -> f32 {
    let mut v = values.to_vec();
    v.sort_by(f32::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
    let hi = (lo + 1).min(v.len() - 1);
    (v[lo] as f64 + (v[hi] as f64 - v[lo] as f64) * frac) as f32
}

fn unit_rows<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norms = (x.clone() * x.clone()).sum_dim(1).sqrt().clamp_min(EPSILON);
    x / norms
}

impl<S> Merging<S> {
    /// New values `[kept][d]` of one head: `keys`/`values` `[n, d]`, `kept` ascending indices.
    fn merged_values<B: Backend>(
        &self,
        keys: Tensor<B, 2>,
        values: &[f32],
        d: usize,
        kept: &[usize],
    ) -> Result<Vec<f32>> {
        let n = values.len() / d;
        let evicted: Vec<usize> = (0..n).filter(|i| kept.binary_search(i).is_err()).collect();
        let mut out: Vec<f32> = kept
            .iter()
            .flat_map(|&t| values[t * d..(t + 1) * d].iter().copied())
            .collect();
        if evicted.is_empty() || kept.is_empty() {
            return Ok(out);
        }
        let device = keys.device();
        let index = |ids: &[usize]| {
            let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
            Tensor::<B, 1, Int>::from_data(TensorData::new(ids.clone(), [ids.len()]), &device)
        };
        let ke = unit_rows(keys.clone().select(0, index(&evicted)));
        let kk = unit_rows(keys.select(0, index(kept)));
        let sim = ke.matmul(kk.transpose()); // [n_e, n_k]
        let targets: Vec<i64> = sim
            .clone()
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .into_vec()
            .map_err(|e| CoreError::Data(format!("{e:?}")))?;
        let best = to_host(sim.max_dim(1))?;
        let threshold = self.similarity_threshold as f32;
        let mut floor = threshold;
        if self.merge_fraction < 1.0 {
            let passing: Vec<f32> = best.iter().copied().filter(|&s| s >= threshold).collect();
            if !passing.is_empty() {
                floor = floor.max(quantile(&passing, 1.0 - self.merge_fraction));
            }
        }
        let norm = |i: usize| {
            values[i * d..(i + 1) * d]
                .iter()
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt()
        };
        let mut weight_sums = vec![0f32; kept.len()];
        let mut sums = vec![0f32; kept.len() * d];
        for ((&e, &t), &s) in evicted.iter().zip(&targets).zip(&best) {
            if s < floor {
                continue;
            }
            let t = t as usize;
            let w = s.max(0.0) * norm(e) / (norm(e) + norm(kept[t]) + EPSILON);
            weight_sums[t] += w;
            for (acc, x) in sums[t * d..(t + 1) * d]
                .iter_mut()
                .zip(&values[e * d..(e + 1) * d])
            {
                *acc += w * x;
            }
        }
        for (t, &w) in weight_sums.iter().enumerate() {
            for (v, acc) in out[t * d..(t + 1) * d]
                .iter_mut()
                .zip(&sums[t * d..(t + 1) * d])
            {
                *v = (*v + acc) / (1.0 + w);
            }
        }
        Ok(out)
    }
}

impl<B: Backend, S: Scorer<B>> Press<B> for Merging<S> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        let valid = (0.0..=1.0).contains(&self.similarity_threshold)
            && self.merge_fraction > 0.0
            && self.merge_fraction <= 1.0;
        if !valid {
            return Err(CoreError::Invalid {
                name: "merging",
                detail: "similarity_threshold must be in [0, 1] and merge_fraction in (0, 1]"
                    .into(),
            });
        }
        if self.compression_ratio == 0.0 {
            return Ok(());
        }
        let Some((ref keys, ref values)) = cache.keys_values()? else {
            return Ok(());
        };
        let [_, h_kv, n, d] = keys.dims();
        let kept = top_scored_indices(&self.scorer, inputs, keys, values, |n| {
            kept_count(n, self.compression_ratio)
        })?;
        let host_values = to_host(values.clone())?;
        let mut merged = Vec::with_capacity(h_kv * kept[0].len() * d);
        for (h, idx) in kept.iter().enumerate() {
            let k = keys.clone().narrow(1, h, 1).reshape([n, d]);
            merged.extend(self.merged_values(
                k,
                &host_values[h * n * d..(h + 1) * n * d],
                d,
                idx,
            )?);
        }
        let device = keys.device();
        let shape = [1, h_kv, kept[0].len(), d];
        cache.keep(&kept)?;
        cache.map_values(|_| Tensor::from_data(TensorData::new(merged, shape), &device))
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::knorm::Knorm;
    use crate::test_support::Fixture;

    #[test]
    fn evicted_values_fold_into_the_most_similar_kept_key() {
        // one head, d = 2; knorm keeps the two smallest keys (positions 0 and 1)
        let mut f = Fixture::new(1, 1, 4, 2);
        let dev = Default::default();
        f.keys = Tensor::from_data(
            TensorData::new(
                vec![1.0f32, 0.0, 0.0, 1.0, 3.0, 0.0, 0.0, -5.0],
                [1, 1, 4, 2],
            ),
            &dev,
        );
        let values = Tensor::<burn::backend::Flex, 4>::from_data(
            TensorData::new(
                vec![1.0f32, 0.0, 0.0, 1.0, 3.0, 0.0, 0.0, 4.0],
                [1, 1, 4, 2],
            ),
            &dev,
        );
        let mut cache = LayerCache::default();
        cache
            .append(f.keys.clone(), values, &f.positions)
            .expect("append");
        Merging::new(Knorm, 0.5)
            .expect("press")
            .compress(&f.inputs(), &mut cache)
            .expect("compress");
        assert_eq!(cache.positions(), &[vec![0, 1]]);
        let (_, v) = cache.keys_values().expect("dense").expect("kept");
        let got: Vec<f32> = v.clone().into_data().to_vec().expect("f32");
        // position 2 (key along x, σ = 1) merges into 0: w = 1·3/(3 + 1) = 0.75,
        // v0 = ([1, 0] + 0.75·[3, 0]) / 1.75 = [1.857…, 0];
        // position 3 (key along −y) has σ = 0 with both → weight 0, nothing merges into 1
        assert!((got[0] - 3.25 / 1.75).abs() < 1e-6, "{got:?}");
        assert_eq!(&got[1..], &[0.0, 0.0, 1.0]);
        assert!((quantile(&[1.0, 2.0, 3.0, 4.0], 0.5) - 2.5).abs() < 1e-6);
    }
}
