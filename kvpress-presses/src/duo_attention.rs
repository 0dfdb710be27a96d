//! DuoAttentionPress (kvpress `duo_attention`): KV heads are "retrieval" heads (full cache) or
//! "streaming" heads (only `sink_size` first and `recent_size` last tokens). The
//! `round(L · h_kv · head_compression_ratio)` heads with the lowest scores over the whole model
//! stream. Paper: arXiv 2410.10819. kvpress masks; here streaming heads really drop their middle
//! (ragged cache).
//!
//! **Artefact**: the head scores, a local tab-separated file given as
//! `duo_attention(path='…')` with one line per layer and one score per KV head (the
//! `full_attention_heads.tsv` of mit-han-lab/duo-attention, clipped to `[0, 1]`). kvpress's
//! on-the-fly estimate is available offline: `kvpress calibrate --target duo-attention
//! --corpus FILE --out heads.tsv` ([`HeadScoreCollector`]): per document and layer, the mean
//! attention-input hidden state is projected to a query and a key, repeated at positions
//! `0..500` with RoPE; the head's score is the mean of the cumulative attention of the last
//! position over the 500, averaged over the query group and the documents.

use std::path::Path;
use std::sync::Mutex;

use burn::tensor::backend::Backend;
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::{check_ratio, to_host};
use kvpress_core::{LayerCache, LayerInputs, Press};

/// Positions of the on-the-fly estimate.
const PROBE_LENGTH: usize = 500;

/// The DuoAttention press with its head scores.
#[derive(Debug, Clone)]
pub struct DuoAttention {
    /// `[layer][kv_head]` scores (low: streaming).
    head_scores: Vec<Vec<f32>>,
    /// Fraction of all KV heads made streaming, in `[0, 1)`.
    pub head_compression_ratio: f64,
    /// First tokens a streaming head keeps.
    pub sink_size: usize,
    /// Last tokens a streaming head keeps.
    pub recent_size: usize,
}

impl DuoAttention {
    /// A press over `head_scores` `[layer][kv_head]` (sink 128, recent 256 as kvpress's
    /// on-the-fly setting).
    pub fn new(head_scores: Vec<Vec<f32>>, head_compression_ratio: f64) -> Result<Self> {
        check_ratio(head_compression_ratio)?;
        let heads = head_scores.first().map_or(0, Vec::len);
        if heads == 0 || head_scores.iter().any(|l| l.len() != heads) {
            return Err(CoreError::Invalid {
                name: "duo_attention",
                detail: "head scores must be one non-empty row of equal length per layer".into(),
            });
        }
        Ok(Self {
            head_scores,
            head_compression_ratio,
            sink_size: 128,
            recent_size: 256,
        })
    }

    /// Reads a TSV of head scores (one line per layer).
    pub fn load(path: &Path, head_compression_ratio: f64) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| CoreError::Invalid {
            name: "duo_attention",
            detail: format!("cannot read {}: {e}", path.display()),
        })?;
        let scores = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                line.split(['\t', ' ', ','])
                    .filter(|t| !t.is_empty())
                    .map(|t| {
                        t.parse::<f32>().map(|x| x.clamp(0.0, 1.0)).map_err(|_| {
                            CoreError::Invalid {
                                name: "duo_attention",
                                detail: format!("{}: {t:?} is not a number", path.display()),
                            }
                        })
                    })
                    .collect::<Result<Vec<f32>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(scores, head_compression_ratio)
    }

    /// Whether KV head `head` of `layer` streams.
    fn streaming(&self) -> Vec<Vec<bool>> {
        let all: Vec<(usize, usize)> = self
            .head_scores
            .iter()
            .enumerate()
            .flat_map(|(l, row)| (0..row.len()).map(move |h| (l, h)))
            .collect();
        let count = (all.len() as f64 * self.head_compression_ratio).round_ties_even() as usize;
        let mut order = all.clone();
        order.sort_by(|&(la, ha), &(lb, hb)| {
            self.head_scores[la][ha]
                .total_cmp(&self.head_scores[lb][hb])
                .then((la, ha).cmp(&(lb, hb)))
        });
        let mut mask: Vec<Vec<bool>> = self
            .head_scores
            .iter()
            .map(|r| vec![false; r.len()])
            .collect();
        for &(l, h) in order.iter().take(count) {
            mask[l][h] = true;
        }
        mask
    }
}

impl<B: Backend> Press<B> for DuoAttention {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        if self.head_compression_ratio == 0.0 {
            return Ok(());
        }
        let heads = cache.tokens_per_head();
        let n = inputs.positions.len();
        if self.head_scores.len() != inputs.num_layers || heads.len() != self.head_scores[0].len() {
            return Err(CoreError::Invalid {
                name: "duo_attention",
                detail: format!(
                    "head scores for {} layers × {} KV heads, the model has {} × {}",
                    self.head_scores.len(),
                    self.head_scores[0].len(),
                    inputs.num_layers,
                    heads.len()
                ),
            });
        }
        if n <= self.sink_size + self.recent_size || heads.iter().any(|&len| len != n) {
            return Ok(());
        }
        let streaming = &self.streaming()[inputs.layer];
        let kept: Vec<Vec<usize>> = streaming
            .iter()
            .map(|&s| {
                if s {
                    (0..self.sink_size).chain(n - self.recent_size..n).collect()
                } else {
                    (0..n).collect()
                }
            })
            .collect();
        cache.keep(&kept)
    }
}

/// A press that changes nothing and accumulates DuoAttention's on-the-fly head scores of every
/// prefill it sees; [`HeadScoreCollector::save`] writes the TSV [`DuoAttention::load`] reads.
#[derive(Default)]
pub struct HeadScoreCollector {
    /// `[layer]` (sum of `[kv_head]` scores, documents).
    sums: Mutex<Vec<(Vec<f64>, usize)>>,
}

impl HeadScoreCollector {
    /// Writes the mean scores as one tab-separated line per layer.
    pub fn save(&self, path: &Path) -> Result<()> {
        let sums = self
            .sums
            .lock()
            .map_err(|_| CoreError::Data("head scores poisoned by a panic".into()))?;
        if sums.is_empty() {
            return Err(CoreError::Invalid {
                name: "calibration",
                detail: "no document was scored".into(),
            });
        }
        let text: String = sums
            .iter()
            .map(|(row, count)| {
                let line: Vec<String> = row
                    .iter()
                    .map(|s| format!("{:.6}", s / *count as f64))
                    .collect();
                line.join("\t") + "\n"
            })
            .collect();
        std::fs::write(path, text).map_err(|e| CoreError::Invalid {
            name: "calibration",
            detail: format!("writing {}: {e}", path.display()),
        })
    }
}

/// Area under the cumulative attention of the last of `PROBE_LENGTH` positions, per query head,
/// for one layer's mean query `q` (`[h, d]`) and keys `k` (`[h_kv, d]`).
fn head_areas(
    q: &[f32],
    k: &[f32],
    h: usize,
    h_kv: usize,
    d: usize,
    rope: &kvpress_core::RotaryEmbedding,
) -> Vec<f64> {
    let positions: Vec<usize> = (0..PROBE_LENGTH).collect();
    let (cos, sin) = rope.cos_sin_host(&positions);
    let half = d / 2;
    let rotate = |x: &[f32], p: usize| -> Vec<f64> {
        (0..d)
            .map(|i| {
                let rot = if i < half { -x[i + half] } else { x[i - half] };
                (x[i] * cos[p * d + i] + rot * sin[p * d + i]) as f64
            })
            .collect()
    };
    let g = h / h_kv;
    (0..h)
        .map(|head| {
            let qh = rotate(&q[head * d..(head + 1) * d], PROBE_LENGTH - 1);
            let kv = head / g;
            let logits: Vec<f64> = (0..PROBE_LENGTH)
                .map(|p| {
                    let kp = rotate(&k[kv * d..(kv + 1) * d], p);
                    qh.iter().zip(&kp).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt()
                })
                .collect();
            let top = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = logits.iter().map(|l| (l - top).exp()).collect();
            let total: f64 = exps.iter().sum();
            let mut cum = 0.0;
            exps.iter()
                .map(|e| {
                    cum += e / total;
                    cum
                })
                .sum::<f64>()
                / PROBE_LENGTH as f64
        })
        .collect()
}

impl<B: Backend> Press<B> for HeadScoreCollector {
    fn compress(&self, inputs: &LayerInputs<'_, B>, _cache: &mut LayerCache<B>) -> Result<()> {
        let [_, m, hidden] = inputs.hidden_states.dims();
        let mean = inputs
            .hidden_states
            .clone()
            .mean_dim(1)
            .reshape([1, hidden]);
        let q = to_host(mean.clone().matmul(inputs.weights.q_proj.clone()))?;
        let k = to_host(mean.matmul(inputs.weights.k_proj.clone()))?;
        let d = inputs.rope.head_dim();
        let (h, h_kv) = (q.len() / d, k.len() / d);
        if m == 0 || h_kv == 0 || h % h_kv != 0 {
            return Ok(());
        }
        let areas = head_areas(&q, &k, h, h_kv, d, inputs.rope);
        let g = h / h_kv;
        let mut sums = self
            .sums
            .lock()
            .map_err(|_| CoreError::Data("head scores poisoned by a panic".into()))?;
        if sums.len() <= inputs.layer {
            sums.resize_with(inputs.layer + 1, || (vec![0.0; h_kv], 0));
        }
        let (row, count) = &mut sums[inputs.layer];
        for (kv, acc) in row.iter_mut().enumerate() {
            *acc += areas[kv * g..(kv + 1) * g].iter().sum::<f64>() / g as f64;
        }
        *count += 1;
        Ok(())
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::{Fixture, kept_positions};

    #[test]
    fn the_lowest_scored_heads_stream() {
        // 2 layers × 2 heads; at ratio 0.5 the two lowest scores (layer 0 head 1, layer 1
        // head 0) stream: they keep 2 sinks + 3 recent of 20
        let mut press =
            DuoAttention::new(vec![vec![0.9, 0.1], vec![0.2, 0.8]], 0.5).expect("press");
        press.sink_size = 2;
        press.recent_size = 3;
        let mut f = Fixture::new(1, 2, 20, 4);
        f.num_layers = 2;
        let streaming: Vec<usize> = vec![0, 1, 17, 18, 19];
        assert_eq!(
            kept_positions(&f, &press),
            vec![(0..20).collect(), streaming.clone()]
        );
        f.layer = 1;
        assert_eq!(
            kept_positions(&f, &press),
            vec![streaming, (0..20).collect()]
        );
    }

    #[test]
    fn a_uniform_attention_has_area_one_half() {
        // zero queries attend uniformly: the cumulative attention rises linearly, mean ≈ 1/2
        let rope = kvpress_core::RotaryEmbedding::new(4, 10000.0, &kvpress_core::RopeScaling::None)
            .expect("rope");
        let areas = head_areas(&[0.0; 4], &[1.0, 0.0, 0.0, 1.0], 1, 1, 4, &rope);
        let want = (PROBE_LENGTH + 1) as f64 / (2 * PROBE_LENGTH) as f64;
        assert!((areas[0] - want).abs() < 1e-9, "{areas:?}");
    }
}
