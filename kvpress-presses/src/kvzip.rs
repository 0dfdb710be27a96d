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

use burn::tensor::{Tensor, TensorData, activation::softmax, backend::Backend};
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::{ContextModel, check_ratio, to_host};
use kvpress_core::{KvCache, LayerCache, LayerInputs, Press};

/// Context tokens reconstructed per probe.
const CHUNK: usize = 2048;
/// Tokens of the previous chunk that start the next probe.
const OVERLAP: usize = 8;

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
        let Some((keys, values)) = cache.keys_values()? else {
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
        let pick = |t: &Tensor<B, 4>| {
            Tensor::cat(
                vec![
                    t.clone().narrow(2, 0, sink),
                    t.clone().narrow(2, s, len),
                    t.clone().narrow(2, self.context, q),
                ],
                2,
            )
        };
        let m = sink + len + q;
        let k = pick(keys);
        let logits = inputs
            .queries
            .clone()
            .reshape([1, h_kv, g * q, d])
            .matmul(k.swap_dims(2, 3))
            .mul_scalar((d as f32).powf(-0.5));
        // probe row i sees every sink and chunk key and probe keys 0..=i
        let mut bias = vec![0f32; q * m];
        for i in 0..q {
            for j in (i + 1)..q {
                bias[i * m + sink + len + j] = f32::NEG_INFINITY;
            }
        }
        let bias: Vec<f32> = (0..g).flat_map(|_| bias.iter().copied()).collect();
        let bias = Tensor::<B, 2>::from_data(TensorData::new(bias, [g * q, m]), &keys.device())
            .reshape([1, 1, g * q, m]);
        let mut attention = softmax(logits + bias, 3)
            .narrow(3, sink, len)
            .reshape([h_kv, g, q, len]);
        if self.plus {
            // × ‖v_j W_O[h]‖₂ per query head, ÷ ‖x_t‖₂ per probe row
            let [rows, hidden] = inputs.weights.o_proj.dims();
            if rows != h * d {
                return Err(CoreError::Shape {
                    context: "kvzip+",
                    detail: format!(
                        "W_O {:?} for {h} heads of {d}",
                        inputs.weights.o_proj.dims()
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
            let norms = (projected.clone() * projected)
                .sum_dim(3)
                .sqrt()
                .reshape([h_kv, len, g])
                .swap_dims(1, 2)
                .reshape([h_kv, g, 1, len]);
            let x = inputs.hidden_states.clone();
            let x_norms = (x.clone() * x).sum_dim(2).sqrt().reshape([1, 1, q, 1]);
            attention = attention * norms / x_norms;
        }
        let best = attention.max_dim(2).max_dim(1).reshape([h_kv * len]);
        Ok(to_host(best)?.chunks(len).map(<[f32]>::to_vec).collect())
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
