//! CriticalKVPress (kvpress `critical_kv`): two-stage selection. The first
//! `⌊(1 − r) · n · first_stage_ratio⌋` entries of each head are chosen by the inner score; the
//! rest of the budget goes to the highest `(score + ε) · ‖W_O v‖₁`, the inner score weighted by
//! how much the value moves the layer's output. Paper: arXiv 2502.03805.
//!
//! `‖W_O v‖₁` of entry `i` of KV head `k`: for each query head `h` of the group,
//! `‖v_i · W_O[h]‖₁` with `W_O[h]` the `[d, hidden]` rows of head `h`; averaged over the group.

use burn::tensor::{Tensor, backend::Backend};
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::{check_ratio, host_scores, kept_count, ranked, to_host};
use kvpress_core::{LayerCache, LayerInputs, Press, Scorer};

/// Rows of values multiplied by W_O at once (bounds the `[rows, g · hidden]` product).
const ROWS_PER_STEP: usize = 1024;

/// The CriticalKV press over scorer `S` (defaults `epsilon = 1e-4`, `first_stage_ratio = 0.5`).
#[derive(Debug, Clone)]
pub struct CriticalKv<S> {
    /// The inner scorer.
    pub scorer: S,
    /// Fraction of entries removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// Added to the inner score before the value weighting.
    pub epsilon: f64,
    /// Share of the budget chosen by the inner score alone, in `[0, 1]`.
    pub first_stage_ratio: f64,
}

impl<S> CriticalKv<S> {
    /// CriticalKV over `scorer` at `compression_ratio` with kvpress's defaults.
    pub fn new(scorer: S, compression_ratio: f64) -> Result<Self> {
        check_ratio(compression_ratio)?;
        Ok(Self {
            scorer,
            compression_ratio,
            epsilon: 1e-4,
            first_stage_ratio: 0.5,
        })
    }
}

/// Checks a first-stage share (`[0, 1]`).
pub fn check_first_stage_ratio(r: f64) -> Result<()> {
    if (0.0..=1.0).contains(&r) {
        Ok(())
    } else {
        Err(CoreError::Invalid {
            name: "first_stage_ratio",
            detail: format!("must be in [0, 1], got {r}"),
        })
    }
}

/// `‖W_O v‖₁` of every entry, averaged over each KV head's query group: `h_kv` rows of `n`.
///
/// # Shapes
/// - `values`: `[1, h_kv, n, d]`; `o_proj`: `[h_q · d, hidden]`
pub fn value_output_norms<B: Backend>(
    values: &Tensor<B, 4>,
    o_proj: &Tensor<B, 2>,
) -> Result<Vec<Vec<f32>>> {
    let [_, h_kv, n, d] = values.dims();
    let [rows, hidden] = o_proj.dims();
    if h_kv == 0 || d == 0 || rows % (h_kv * d) != 0 {
        return Err(CoreError::Shape {
            context: "value_output_norms",
            detail: format!("values {:?}, W_O {:?}", values.dims(), o_proj.dims()),
        });
    }
    let g = rows / (h_kv * d);
    // [h_q·d, D] → [h_kv, g, d, D] → [h_kv, d, g·D]: one product per KV head covers its group.
    let w = o_proj
        .clone()
        .reshape([h_kv, g, d, hidden])
        .swap_dims(1, 2)
        .reshape([h_kv, d, g * hidden]);
    let v = values.clone().reshape([h_kv, n, d]);
    let mut norms = vec![Vec::with_capacity(n); h_kv];
    for start in (0..n).step_by(ROWS_PER_STEP) {
        let len = ROWS_PER_STEP.min(n - start);
        let part = v
            .clone()
            .narrow(1, start, len)
            .matmul(w.clone())
            .abs()
            .reshape([h_kv, len, g, hidden])
            .sum_dim(3)
            .mean_dim(2)
            .reshape([h_kv * len]);
        for (head, chunk) in norms.iter_mut().zip(to_host(part)?.chunks(len)) {
            head.extend_from_slice(chunk);
        }
    }
    Ok(norms)
}

/// Flags, besides those already set in `forced`, the next best entries of `row` until `count`
/// of the ranking's first entries are flagged (stage 1 of CriticalKV).
pub fn force_top(row: &[f32], forced: &mut [bool], count: usize) {
    for i in ranked(row, forced).into_iter().take(count) {
        forced[i] = true;
    }
}

/// Stage 2 of CriticalKV: the `budget` entries of one head with the forced ones first and then
/// the highest `(score + ε) · ‖W_O v‖₁`, in ascending order.
pub fn weighted_selection(
    row: &[f32],
    norm: &[f32],
    forced: &[bool],
    epsilon: f64,
    budget: usize,
) -> Vec<usize> {
    let weighted: Vec<f32> = row
        .iter()
        .zip(norm)
        .map(|(&s, &u)| ((s as f64 + epsilon) * u as f64) as f32)
        .collect();
    let mut idx = ranked(&weighted, forced);
    idx.truncate(budget);
    idx.sort_unstable();
    idx
}

impl<B: Backend, S: Scorer<B>> Press<B> for CriticalKv<S> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        check_first_stage_ratio(self.first_stage_ratio)?;
        if self.compression_ratio == 0.0 {
            return Ok(());
        }
        let Some((ref keys, ref values)) = cache.keys_values()? else {
            return Ok(());
        };
        let n = keys.dims()[2];
        let scores = host_scores(&self.scorer, inputs, keys, values)?;
        let norms = value_output_norms(values, inputs.weights.o_proj)?;
        let n_kept = kept_count(n, self.compression_ratio);
        let first = ((1.0 - self.compression_ratio) * n as f64 * self.first_stage_ratio) as usize;
        let kept = scores
            .rows
            .iter()
            .zip(&norms)
            .map(|(row, norm)| {
                let mut forced = scores.protected.clone();
                forced.resize(n, false);
                force_top(row, &mut forced, first);
                weighted_selection(row, norm, &forced, self.epsilon, n_kept)
            })
            .collect::<Vec<_>>();
        cache.keep(&kept)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = burn::backend::Flex;

    #[test]
    fn value_norms_through_the_output_projection() {
        let dev = Default::default();
        // h_kv = 1, g = 2, d = 2, hidden = 2, n = 2
        let values = Tensor::<B, 4>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 1.0, -2.0], [1, 1, 2, 2]),
            &dev,
        );
        // W_O rows: head 0 = [[1, 2], [0, 1]], head 1 = [[-1, 0], [3, 1]]
        let w = Tensor::<B, 2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 0.0, 1.0, -1.0, 0.0, 3.0, 1.0], [4, 2]),
            &dev,
        );
        let got = value_output_norms(&values, &w).expect("norms");
        // v0 = [1, 0]: head 0 → [1, 2] (3), head 1 → [-1, 0] (1); mean 2
        // v1 = [1, -2]: head 0 → [1, 0] (1), head 1 → [-7, -2] (9); mean 5
        assert_eq!(got, vec![vec![2.0, 5.0]]);
    }
}
