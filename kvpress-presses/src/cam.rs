//! CAMPress (kvpress `cam`, Cache Merging): decoding-time eviction that first merges the evicted
//! tokens' values into the following kept tokens, each with a probability set by how much
//! attention it gathered compared with them. Paper: CaM (ICML 2024). Batched as kvpress: every
//! `compression_interval` steps the layer goes back to `target_size` entries.
//!
//! Each decoding step adds the current token's attention over the cache (averaged over the query
//! group) to a running sum `Ā`. On compression: the scorer's scores averaged over the heads rank
//! the entries (the same tokens are kept in every head; protected entries first); among the
//! evicted, the `k` best-scored (ties to the later position; `k` = steps since the last
//! compression) merge: for each, the next `merge_budget` kept tokens form its window, and in
//! each head with probability `clamp(Ā_m / mean(Ā_window), 0, 1)` its value is added, divided
//! by the window size, to every value of the window. The Bernoulli draws are seeded by layer and
//! position, so runs repeat.

use std::sync::Mutex;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::attention::window_attention;
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::{check_positive, ranked, to_host};
use kvpress_core::{LayerCache, LayerInputs, Press, Scorer};

use crate::decoding::Buffer;
use crate::random::splitmix;

/// One layer's state: the buffered queries and `Ā` per head and cache entry.
struct State<B: Backend> {
    buffer: Buffer<B>,
    attention: Vec<Vec<f64>>,
}

/// The CAM press over scorer `S` (defaults: interval 512, target 2048, buffer 256, merge
/// budget 32).
pub struct Cam<B: Backend, S> {
    /// Ranks the cache.
    pub scorer: S,
    /// Forwards between compressions.
    pub compression_interval: usize,
    /// Entries kept by each compression.
    pub target_size: usize,
    /// Recent tokens whose queries the scorer sees.
    pub hidden_states_buffer_size: usize,
    /// Kept tokens after an evicted one that share its value.
    pub merge_budget: usize,
    states: Mutex<Vec<Option<State<B>>>>,
}

impl<B: Backend, S> Cam<B, S> {
    /// CAM over `scorer` with kvpress's defaults.
    pub fn new(scorer: S) -> Self {
        Self {
            scorer,
            compression_interval: 512,
            target_size: 2048,
            hidden_states_buffer_size: 256,
            merge_budget: 32,
            states: Mutex::new(Vec::new()),
        }
    }
}

/// A uniform number in `[0, 1)` from `(layer, position, head)`.
fn uniform(layer: usize, position: usize, head: usize) -> f64 {
    let z = splitmix((layer as u64) << 40 ^ (position as u64) << 8 ^ head as u64);
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Merges the chosen evicted values into their windows of kept values (host `[h][n][d]`).
/// `kept` and `merged` are cache indices; returns nothing, `values` is updated in place.
#[allow(clippy::too_many_arguments)]
fn merge(
    values: &mut [f32],
    attention: &[Vec<f64>],
    kept: &[usize],
    merged: &[usize],
    positions: &[Vec<usize>],
    [h_kv, n, d]: [usize; 3],
    budget: usize,
    layer: usize,
) {
    for &m in merged {
        let start = kept.partition_point(|&t| t < m);
        let window = &kept[start..(start + budget).min(kept.len())];
        if window.is_empty() {
            continue;
        }
        for h in 0..h_kv {
            let mean = window.iter().map(|&t| attention[h][t]).sum::<f64>() / window.len() as f64;
            let p = attention[h][m] / mean;
            let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
            if uniform(layer, positions[h][m], h) >= p {
                continue;
            }
            let share: Vec<f32> = values[(h * n + m) * d..(h * n + m + 1) * d]
                .iter()
                .map(|v| v / window.len() as f32)
                .collect();
            for &t in window {
                for (v, s) in values[(h * n + t) * d..(h * n + t + 1) * d]
                    .iter_mut()
                    .zip(&share)
                {
                    *v += s;
                }
            }
        }
    }
}

impl<B: Backend, S: Scorer<B>> Press<B> for Cam<B, S> {
    /// Nothing happens during the prefill (the layer's state starts afresh).
    fn compress(&self, inputs: &LayerInputs<'_, B>, _cache: &mut LayerCache<B>) -> Result<()> {
        if let Ok(mut states) = self.states.lock()
            && let Some(state) = states.get_mut(inputs.layer)
        {
            *state = None;
        }
        Ok(())
    }

    fn compress_decoding(
        &self,
        inputs: &LayerInputs<'_, B>,
        cache: &mut LayerCache<B>,
    ) -> Result<()> {
        check_positive("compression_interval", self.compression_interval)?;
        check_positive("target_size", self.target_size)?;
        let Some((ref keys, ref values)) = cache.keys_values()? else {
            return Ok(());
        };
        let [_, h_kv, n, d] = keys.dims();
        let mut states = self
            .states
            .lock()
            .map_err(|_| CoreError::Data("cam state poisoned by a panic".into()))?;
        if states.len() <= inputs.layer {
            states.resize_with(inputs.layer + 1, || None);
        }
        let state = states[inputs.layer].get_or_insert_with(|| State {
            buffer: Buffer::default(),
            attention: vec![Vec::new(); h_kv],
        });
        state.buffer.push(inputs, self.hidden_states_buffer_size);
        // the current token's attention over the whole cache, averaged over the group
        let m = inputs.queries.dims()[2];
        let last = inputs.queries.clone().narrow(2, m - 1, 1);
        let probs = window_attention(&last, keys, 1, (d as f32).powf(-0.5))?;
        let h = probs.dims()[1];
        let step = to_host(
            probs
                .reshape([h_kv, h / h_kv, n])
                .mean_dim(1)
                .reshape([h_kv * n]),
        )?;
        for (acc, row) in state.attention.iter_mut().zip(step.chunks(n)) {
            acc.resize(n, 0.0);
            for (a, x) in acc.iter_mut().zip(row) {
                *a += *x as f64;
            }
        }
        let steps = state.buffer.steps;
        let target = self.target_size;
        let due = steps >= self.compression_interval || m >= target;
        if !due || n <= target {
            return Ok(());
        }
        let scores = state.buffer.score(&self.scorer, inputs, keys, values)?;
        let mean: Vec<f32> = (0..n)
            .map(|i| scores.rows.iter().map(|r| r[i]).sum::<f32>() / h_kv as f32)
            .collect();
        let order = ranked(&mean, &scores.protected);
        let mut kept = order[..target].to_vec();
        kept.sort_unstable();
        let mut evicted = order[target..].to_vec();
        // merge candidates: the best-scored evicted, ties to the later position
        evicted.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]).then(b.cmp(&a)));
        evicted.truncate(steps.min(evicted.len()));
        evicted.sort_unstable();
        let mut host = to_host(values.clone())?;
        merge(
            &mut host,
            &state.attention,
            &kept,
            &evicted,
            cache.positions(),
            [h_kv, n, d],
            self.merge_budget,
            inputs.layer,
        );
        let merged: Vec<f32> = (0..h_kv)
            .flat_map(|h| {
                let host = &host;
                kept.iter()
                    .flat_map(move |&t| host[(h * n + t) * d..(h * n + t + 1) * d].iter().copied())
            })
            .collect();
        for row in &mut state.attention {
            *row = kept.iter().map(|&t| row[t]).collect();
        }
        let device = keys.device();
        cache.keep(&vec![kept.clone(); h_kv])?;
        cache.map_values(|_| {
            Tensor::from_data(TensorData::new(merged, [1, h_kv, kept.len(), d]), &device)
        })
    }

    fn compresses_during_decoding(&self) -> bool {
        true
    }

    fn reset(&self) {
        if let Ok(mut states) = self.states.lock() {
            states.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heavily_attended_evicted_value_spreads_over_its_window() {
        // one head, d = 1, 5 entries; kept 1, 2, 4; entry 0 merges into the window {1, 2}
        // (budget 2) with p = clamp(2 / mean(1, 1)) = 1; entry 3 has Ā = 0 → p = 0
        let mut values = vec![6.0f32, 1.0, 1.0, 9.0, 1.0];
        let attention = vec![vec![2.0, 1.0, 1.0, 0.0, 1.0]];
        let positions = vec![(0..5).collect::<Vec<_>>()];
        merge(
            &mut values,
            &attention,
            &[1, 2, 4],
            &[0, 3],
            &positions,
            [1, 5, 1],
            2,
            0,
        );
        assert_eq!(values, vec![6.0, 4.0, 4.0, 9.0, 1.0]);
    }
}
