//! KVzipPress (kvpress `kvzip`): query-agnostic. After the prefill the model is asked to
//! reconstruct the context ("Repeat the previous context exactly.") chunk by chunk while
//! attending to the cached context; an entry's importance is the largest attention any
//! reconstruction token pays it. One budget is shared by all layers and heads (or by the heads of
//! each layer with `layerwise`), so the cache goes ragged and really shrinks (kvpress masks).
//! Paper: arXiv 2505.23416; KVzip+ normalisation from arXiv 2601.07891.
//!
//! For a chunk at context slots `[s, e)` and a probe of `q` tokens, layer `l`, query head `h`:
//! `A = softmax(Q Kᵀ/√d)` over the keys `[sinks, chunk, probe]` only (causal inside the probe);
//! KVzip+ multiplies column `j` by `‖v_j W_O[h]‖₂` and divides row `t` by `‖x_t‖₂` (the probe
//! token's attention input); the score of slot `j` is the max over the group's heads and the
//! probe's rows. The first `n_sink` slots score 1; template-prefix slots after them score 0.

use std::sync::Mutex;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::{ContextModel, check_ratio, to_host};
use kvpress_core::{KvCache, LayerCache, LayerInputs, Press};

/// Context tokens reconstructed per probe.
const CHUNK: usize = 2048;
/// Tokens of the previous chunk that start the next probe.
const OVERLAP: usize = 8;
/// Probe rows scored at once.
const PROBE_ROWS: usize = 256;

/// The KVzip press (defaults `layerwise = false`, `n_sink = 4`, no KVzip+).
#[derive(Debug, Clone)]
pub struct KvZip {
    /// Fraction of the context's entries removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// One budget per layer instead of one for the whole model.
    pub layerwise: bool,
    /// First tokens always kept.
    pub n_sink: usize,
    /// KVzip+ normalisation of the attention.
    pub kvzip_plus_normalization: bool,
}

impl KvZip {
    /// KVzip at `compression_ratio` with kvpress's defaults.
    pub fn new(compression_ratio: f64) -> Result<Self> {
        check_ratio(compression_ratio)?;
        Ok(Self {
            compression_ratio,
            layerwise: false,
            n_sink: 4,
            kvzip_plus_normalization: false,
        })
    }
}

/// The per-layer hook of one probe forward: scores the chunk's slots, then drops the probe's
/// entries from the cache.
struct Probe {
    /// Context length (the cache is cut back to it).
    context: usize,
    /// The chunk's context slots.
    chunk: std::ops::Range<usize>,
    n_sink: usize,
    plus: bool,
    /// `[layer][head][slot]` scores, shared by all probes.
    scores: Mutex<Vec<Vec<Vec<f32>>>>,
}

impl Probe {
    /// `[h_kv][len]` max attention of the probe rows over the chunk's slots.
    fn chunk_scores<B: Backend>(
        &self,
        inputs: &LayerInputs<'_, B>,
        cache: &LayerCache<B>,
    ) -> Result<Vec<Vec<f32>>> {
        let Some((ref keys, ref values)) = cache.keys_values()? else {
            return Err(CoreError::Invalid {
                name: "kvzip",
                detail: "the probe found an empty cache".into(),
            });
        };
        let [_, h_kv, total, d] = keys.dims();
        let [_, h, q, _] = inputs.queries.dims();
        let g = h / h_kv;
        let (s, len) = (self.chunk.start, self.chunk.len());
        let sink = self.n_sink.min(s);
        if total != self.context + q {
            return Err(CoreError::Shape {
                context: "kvzip probe",
                detail: format!("{total} cached entries for {} + {q}", self.context),
            });
        }
        let device = keys.device();
        let scale = (d as f32).powf(-0.5);
        // the context keys (sinks + chunk) are visible to every probe row; probe key j to rows
        // i ≥ j. Rows go in blocks: keys of earlier blocks are fully visible, only the block's
        // own diagonal square needs a mask, so no mask as large as the scores is ever built.
        let chunk_keys = keys.clone().narrow(2, s, len);
        let k_ctx = if sink > 0 {
            Tensor::cat(vec![keys.clone().narrow(2, 0, sink), chunk_keys], 2)
        } else {
            chunk_keys
        }
        .swap_dims(2, 3); // [1, h_kv, d, sink + len]
        let norms = self
            .plus
            .then(|| self.value_norms(inputs, values, s, len, [h_kv, g, d]))
            .transpose()?;
        let x_norms = {
            let x = inputs.hidden_states.clone();
            (x.clone() * x).sum_dim(2).sqrt().reshape([q])
        };
        let mut best: Option<Tensor<B, 2>> = None;
        for r0 in (0..q).step_by(PROBE_ROWS) {
            let rows = PROBE_ROWS.min(q - r0);
            let qb = inputs
                .queries
                .clone()
                .narrow(2, r0, rows)
                .reshape([1, h_kv, g * rows, d]);
            let probe_keys = |from: usize, count: usize| {
                keys.clone()
                    .narrow(2, self.context + from, count)
                    .swap_dims(2, 3)
            };
            let l_ctx = qb.clone().matmul(k_ctx.clone()).mul_scalar(scale);
            let mut diag_bias = Vec::with_capacity(h_kv * g * rows * rows);
            for _ in 0..h_kv * g {
                for i in 0..rows {
                    diag_bias
                        .extend((0..rows).map(|j| if j <= i { 0.0 } else { f32::NEG_INFINITY }));
                }
            }
            let diag_bias = Tensor::<B, 4>::from_data(
                TensorData::new(diag_bias, [1, h_kv, g * rows, rows]),
                &device,
            );
            let l_diag = qb.clone().matmul(probe_keys(r0, rows)).mul_scalar(scale) + diag_bias;
            let l_prev = (r0 > 0).then(|| qb.matmul(probe_keys(0, r0)).mul_scalar(scale));
            // log-sum-exp of each row over the three parts
            let mut top = l_ctx.clone().max_dim(3).max_pair(l_diag.clone().max_dim(3));
            if let Some(prev) = &l_prev {
                top = top.max_pair(prev.clone().max_dim(3));
            }
            let e_ctx = (l_ctx - top.clone()).exp();
            let mut total = e_ctx.clone().sum_dim(3) + (l_diag - top.clone()).exp().sum_dim(3);
            if let Some(prev) = l_prev {
                total = total + (prev - top).exp().sum_dim(3);
            }
            let mut weighted = (e_ctx.narrow(3, sink, len) / total).reshape([h_kv, g, rows, len]);
            if let Some(n) = &norms {
                let xr = x_norms.clone().narrow(0, r0, rows).reshape([1, 1, rows, 1]);
                weighted = weighted * n.clone() / xr;
            }
            let block = weighted.max_dim(2).max_dim(1).reshape([h_kv, len]);
            best = Some(match best {
                None => block,
                Some(b) => b.max_pair(block),
            });
        }
        let best = best
            .ok_or_else(|| CoreError::Invalid {
                name: "kvzip",
                detail: "an empty probe".into(),
            })?
            .reshape([h_kv * len]);
        Ok(to_host(best)?.chunks(len).map(<[f32]>::to_vec).collect())
    }
}

impl Probe {
    /// `‖v_j W_O[h]‖₂` of the chunk's values (slots `s..s + len`) per query head:
    /// `[h_kv, g, 1, len]`.
    fn value_norms<B: Backend>(
        &self,
        inputs: &LayerInputs<'_, B>,
        values: &Tensor<B, 4>,
        s: usize,
        len: usize,
        [h_kv, g, d]: [usize; 3],
    ) -> Result<Tensor<B, 4>> {
        let [rows, hidden] = inputs.weights.o_proj.dims();
        if rows != h_kv * g * d {
            return Err(CoreError::Shape {
                context: "kvzip+",
                detail: format!(
                    "W_O {:?} for {} heads of {d}",
                    inputs.weights.o_proj.dims(),
                    h_kv * g
                ),
            });
        }
        let w = inputs
            .weights
            .o_proj
            .clone()
            .reshape([h_kv, g, d, hidden])
            .swap_dims(1, 2)
            .reshape([h_kv, d, g * hidden]);
        let v = values.clone().narrow(2, s, len).reshape([h_kv, len, d]);
        let projected = v.matmul(w).reshape([h_kv, len, g, hidden]);
        Ok((projected.clone() * projected)
            .sum_dim(3)
            .sqrt()
            .reshape([h_kv, len, g])
            .swap_dims(1, 2)
            .reshape([h_kv, g, 1, len]))
    }
}

impl<B: Backend> Press<B> for Probe {
    fn compress(&self, _inputs: &LayerInputs<'_, B>, _cache: &mut LayerCache<B>) -> Result<()> {
        Ok(())
    }

    fn compress_decoding(
        &self,
        inputs: &LayerInputs<'_, B>,
        cache: &mut LayerCache<B>,
    ) -> Result<()> {
        let chunk = self.chunk_scores(inputs, cache)?;
        cache.truncate(&vec![self.context; cache.tokens_per_head().len()]);
        let mut scores = self
            .scores
            .lock()
            .map_err(|_| CoreError::Data("kvzip scores poisoned by a panic".into()))?;
        let layer = scores
            .get_mut(inputs.layer)
            .ok_or_else(|| CoreError::Invalid {
                name: "kvzip",
                detail: format!("no score row for layer {}", inputs.layer),
            })?;
        for (head, row) in layer.iter_mut().zip(chunk) {
            head[self.chunk.clone()].copy_from_slice(&row);
        }
        Ok(())
    }
}

impl<B: Backend> Press<B> for KvZip {
    /// Nothing happens during the prefill itself: the scores need the whole context.
    fn compress(&self, _inputs: &LayerInputs<'_, B>, _cache: &mut LayerCache<B>) -> Result<()> {
        Ok(())
    }

    fn after_prefill(
        &self,
        model: &dyn ContextModel<B>,
        context_ids: &[u32],
        cache: &mut KvCache<B>,
    ) -> Result<()> {
        if self.compression_ratio == 0.0 {
            return Ok(());
        }
        let n = context_ids.len();
        let heads = cache.tokens_per_head();
        if heads.iter().flatten().any(|&len| len != n) {
            return Err(CoreError::Invalid {
                name: "kvzip",
                detail: "kvzip needs the whole prefilled context; put it first or alone".into(),
            });
        }
        let (prefix, suffix) = model.template_parts()?;
        let prefix_len = model.encode(&prefix)?.len().min(n);
        let suffix_ids = model.encode(&suffix)?;
        let first_prompt = model.encode("\n\nRepeat the previous context exactly.")?;
        let next_prompt =
            model.encode("\n\nRepeat the part of the previous context exactly, starting with")?;
        let mut initial: Vec<Vec<Vec<f32>>> = heads
            .iter()
            .map(|layer| vec![vec![0f32; n]; layer.len()])
            .collect();
        for head in initial.iter_mut().flatten() {
            for s in head.iter_mut().take(self.n_sink) {
                *s = 1.0;
            }
        }
        let scores = Mutex::new(initial);
        let mut probe = Probe {
            context: n,
            chunk: 0..0,
            n_sink: self.n_sink,
            plus: self.kvzip_plus_normalization,
            scores,
        };
        for start in (prefix_len..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            let mut ids = if start == prefix_len {
                first_prompt.clone()
            } else {
                let mut ids = next_prompt.clone();
                ids.extend_from_slice(&context_ids[start - OVERLAP.min(start)..start]);
                ids
            };
            ids.extend_from_slice(&suffix_ids);
            ids.extend_from_slice(&context_ids[start..end]);
            probe.chunk = start..end;
            let positions: Vec<usize> = (n..n + ids.len()).collect();
            model.forward(&ids, &positions, cache, &probe)?;
        }
        let scores = probe
            .scores
            .into_inner()
            .map_err(|_| CoreError::Data("kvzip scores poisoned by a panic".into()))?;
        let kept = self.budget(&scores);
        for (l, kept) in kept.iter().enumerate() {
            if let Some(layer) = cache.layer_mut(l) {
                layer.keep(kept)?;
            }
        }
        Ok(())
    }
}

impl KvZip {
    fn budget(&self, scores: &[Vec<Vec<f32>>]) -> Vec<Vec<Vec<usize>>> {
        global_budget(scores, self.compression_ratio, self.layerwise)
    }
}

/// Kept slots per layer and head (`scores[layer][head][slot]`): the best `(1 − ratio)` of all
/// scores together (or of each layer's with `layerwise`), ties to the lower layer, position and
/// head; ascending per head.
pub fn global_budget(
    scores: &[Vec<Vec<f32>>],
    ratio: f64,
    layerwise: bool,
) -> Vec<Vec<Vec<usize>>> {
    let groups: Vec<Vec<usize>> = if layerwise {
        (0..scores.len()).map(|l| vec![l]).collect()
    } else {
        vec![(0..scores.len()).collect()]
    };
    let mut kept: Vec<Vec<Vec<usize>>> = scores
        .iter()
        .map(|layer| vec![Vec::new(); layer.len()])
        .collect();
    for layers in groups {
        let mut all: Vec<(usize, usize, usize)> = layers
            .iter()
            .flat_map(|&l| {
                scores[l]
                    .iter()
                    .enumerate()
                    .flat_map(move |(h, row)| (0..row.len()).map(move |i| (l, h, i)))
            })
            .collect();
        let evicted = (all.len() as f64 * ratio) as usize;
        all.sort_by(|&(la, ha, a), &(lb, hb, b)| {
            scores[lb][hb][b]
                .total_cmp(&scores[la][ha][a])
                .then((la, a, ha).cmp(&(lb, b, hb)))
        });
        let keep = all.len() - evicted;
        for &(l, h, i) in &all[..keep] {
            kept[l][h].push(i);
        }
    }
    for head in kept.iter_mut().flatten() {
        head.sort_unstable();
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_budget_for_all_layers_or_one_per_layer() {
        // layer 0 scores high, layer 1 low; 8 entries, ratio 0.5 → 4 kept
        let scores = vec![
            vec![vec![0.9, 0.8], vec![0.7, 0.6]],
            vec![vec![0.1, 0.2], vec![0.3, 0.05]],
        ];
        let mut press = KvZip::new(0.5).expect("press");
        assert_eq!(
            press.budget(&scores),
            vec![vec![vec![0, 1], vec![0, 1]], vec![vec![], vec![]]]
        );
        // layerwise: each layer keeps its best 2 of 4
        press.layerwise = true;
        assert_eq!(
            press.budget(&scores),
            vec![vec![vec![0, 1], vec![]], vec![vec![1], vec![0]]]
        );
    }
}
