//! FastKVzipPress (kvpress `fast_kvzip`): small trained per-layer gates predict KVzip's
//! importance from the hidden states during the normal prefill (no reconstruction passes); one
//! budget over all layers and heads (or per layer), into the ragged cache.
//! Paper: arXiv 2601.17668.
//!
//! Gate of layer `l` for token `t` (`m`-dimensional, `S` learned sink keys):
//! `q = RMSNorm(W_q x + b_q)` as `[h_kv, g, m]`, `k = RMSNorm(W_k x)` as `[h_kv, m]`;
//! `ℓ = k·q/√m + β`, `ℓ_s = k_base[s]·q/√m`; score `1 / (1 + Σ_s exp(ℓ_s − ℓ))`, averaged over
//! the group. The first `n_sink` and the last `⌊n · window_ratio⌋` tokens (`window_size` from
//! 32 000 tokens on) score 1.
//!
//! **Artefact**: kvpress downloads `.pt` gates (HF `Jang-Hyun/Fast-KVzip`); here a local
//! safetensors file given as `fast_kvzip(path='…')`, per layer `l`: `layers.{l}.q_proj.weight`
//! `[h_kv·g·m, hidden]`, `layers.{l}.q_proj.bias` `[h_kv·g·m]`, `layers.{l}.q_norm.weight` `[m]`,
//! `layers.{l}.k_proj.weight` `[h_kv·m, hidden]`, `layers.{l}.k_norm.weight` `[m]`,
//! `layers.{l}.k_base` `[h_kv, S, m]`, `layers.{l}.bias` `[h_kv, g]`.

use std::path::Path;
use std::sync::Mutex;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::artifacts::Artifact;
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::{ContextModel, check_ratio, to_host};
use kvpress_core::{KvCache, LayerCache, LayerInputs, Press};

use crate::kvzip::global_budget;

const RMS_EPSILON: f32 = 1e-6;

/// One layer's gate.
#[derive(Debug, Clone)]
struct Gate {
    q_weight: Vec<f32>,
    q_bias: Vec<f32>,
    q_norm: Vec<f32>,
    k_weight: Vec<f32>,
    k_norm: Vec<f32>,
    k_base: Vec<f32>,
    bias: Vec<f32>,
    kv_heads: usize,
    group: usize,
    dim: usize,
    sinks: usize,
    hidden: usize,
}

impl Gate {
    fn read(file: &Artifact, l: usize) -> Result<Option<Self>> {
        let name = |s: &str| format!("layers.{l}.{s}");
        let Some(base) = file.shape(&name("k_base")).map(<[usize]>::to_vec) else {
            return Ok(None);
        };
        let [kv_heads, sinks, dim] = base[..] else {
            return Err(CoreError::Invalid {
                name: "fast_kvzip",
                detail: format!("`{}` must be [kv_heads, sinks, dim]", name("k_base")),
            });
        };
        let group = file
            .shape(&name("bias"))
            .and_then(|s| s.get(1).copied())
            .unwrap_or(0);
        let hidden = file
            .shape(&name("k_proj.weight"))
            .and_then(|s| s.get(1).copied())
            .unwrap_or(0);
        let out = kv_heads * group * dim;
        Ok(Some(Self {
            q_weight: file
                .tensor(&name("q_proj.weight"), &[out, hidden])?
                .to_vec(),
            q_bias: file.tensor(&name("q_proj.bias"), &[out])?.to_vec(),
            q_norm: file.tensor(&name("q_norm.weight"), &[dim])?.to_vec(),
            k_weight: file
                .tensor(&name("k_proj.weight"), &[kv_heads * dim, hidden])?
                .to_vec(),
            k_norm: file.tensor(&name("k_norm.weight"), &[dim])?.to_vec(),
            k_base: file
                .tensor(&name("k_base"), &[kv_heads, sinks, dim])?
                .to_vec(),
            bias: file.tensor(&name("bias"), &[kv_heads, group])?.to_vec(),
            kv_heads,
            group,
            dim,
            sinks,
            hidden,
        }))
    }

    /// `x W_outᵀ` on the device, back on the host: `[n, out]`.
    fn project<B: Backend>(x: &Tensor<B, 2>, weight: &[f32], out: usize) -> Result<Vec<f32>> {
        let [_, hidden] = x.dims();
        let w =
            Tensor::<B, 2>::from_data(TensorData::new(weight.to_vec(), [out, hidden]), &x.device());
        to_host(x.clone().matmul(w.transpose()))
    }

    /// `[h_kv][n]` gate scores of hidden states `x` (`[n, hidden]`).
    fn scores<B: Backend>(&self, x: &Tensor<B, 2>) -> Result<Vec<Vec<f32>>> {
        let n = x.dims()[0];
        let (h, g, m) = (self.kv_heads, self.group, self.dim);
        let mut q = Self::project(x, &self.q_weight, h * g * m)?;
        for (row, bias) in q.chunks_mut(h * g * m).zip(std::iter::repeat(&self.q_bias)) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
        let mut k = Self::project(x, &self.k_weight, h * m)?;
        let rms_norm = |v: &mut [f32], w: &[f32]| {
            let rms = (v.iter().map(|x| x * x).sum::<f32>() / m as f32 + RMS_EPSILON).sqrt();
            for (x, w) in v.iter_mut().zip(w) {
                *x = *x / rms * w;
            }
        };
        q.chunks_mut(m).for_each(|v| rms_norm(v, &self.q_norm));
        k.chunks_mut(m).for_each(|v| rms_norm(v, &self.k_norm));
        let scale = (m as f32).sqrt();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / scale;
        let mut out = vec![vec![0f32; n]; h];
        for t in 0..n {
            for head in 0..h {
                let kt = &k[(t * h + head) * m..(t * h + head + 1) * m];
                let mut total = 0f32;
                for j in 0..g {
                    let qt = &q[((t * h + head) * g + j) * m..((t * h + head) * g + j + 1) * m];
                    let own = dot(kt, qt) + self.bias[head * g + j];
                    let others: f32 = (0..self.sinks)
                        .map(|s| {
                            let base = &self.k_base
                                [(head * self.sinks + s) * m..(head * self.sinks + s + 1) * m];
                            (dot(base, qt) - own).exp()
                        })
                        .sum();
                    total += 1.0 / (1.0 + others);
                }
                out[head][t] = total / g as f32;
            }
        }
        Ok(out)
    }
}

/// The FastKVzip press with its gates.
pub struct FastKvZip {
    gates: Vec<Gate>,
    /// Fraction of the context's entries removed, in `[0, 1)`.
    pub compression_ratio: f64,
    /// One budget per layer instead of one for the model.
    pub layerwise: bool,
    /// First tokens always kept.
    pub n_sink: usize,
    /// Local window kept from 32 000 tokens on.
    pub window_size: usize,
    /// Share of the context kept as the local window below 32 000 tokens.
    pub window_ratio: f64,
    scores: Mutex<Vec<Vec<Vec<f32>>>>,
}

impl FastKvZip {
    /// Reads the gates of every layer from `path` (defaults as kvpress: 4 sinks, window ratio
    /// 0.02, window 4096, one budget for the model).
    pub fn load(path: &Path, compression_ratio: f64) -> Result<Self> {
        check_ratio(compression_ratio)?;
        let file = Artifact::open(path, "fast_kvzip")?;
        let mut gates = Vec::new();
        while let Some(gate) = Gate::read(&file, gates.len())? {
            gates.push(gate);
        }
        if gates.is_empty() {
            return Err(CoreError::Invalid {
                name: "fast_kvzip",
                detail: format!("{} has no `layers.0.k_base`", path.display()),
            });
        }
        Ok(Self {
            gates,
            compression_ratio,
            layerwise: false,
            n_sink: 4,
            window_size: 4096,
            window_ratio: 0.02,
            scores: Mutex::new(Vec::new()),
        })
    }
}

impl<B: Backend> Press<B> for FastKvZip {
    /// Scores the layer's tokens with its gate; the cache changes after the prefill.
    fn compress(&self, inputs: &LayerInputs<'_, B>, _cache: &mut LayerCache<B>) -> Result<()> {
        if self.compression_ratio == 0.0 {
            return Ok(());
        }
        let gate = self
            .gates
            .get(inputs.layer)
            .ok_or_else(|| CoreError::Invalid {
                name: "fast_kvzip",
                detail: format!(
                    "the gates cover {} layers, not layer {}",
                    self.gates.len(),
                    inputs.layer
                ),
            })?;
        let [_, n, hidden] = inputs.hidden_states.dims();
        if hidden != gate.hidden {
            return Err(CoreError::Invalid {
                name: "fast_kvzip",
                detail: format!(
                    "gates for hidden size {}, the model has {hidden}",
                    gate.hidden
                ),
            });
        }
        let mut scores = gate.scores(&inputs.hidden_states.clone().reshape([n, hidden]))?;
        let window = if n < 32_000 {
            (n as f64 * self.window_ratio) as usize
        } else {
            self.window_size
        };
        for row in &mut scores {
            for (i, s) in row.iter_mut().enumerate() {
                if i < self.n_sink || i + window >= n {
                    *s = 1.0;
                }
            }
        }
        let mut all = self
            .scores
            .lock()
            .map_err(|_| CoreError::Data("fast_kvzip scores poisoned by a panic".into()))?;
        if all.len() <= inputs.layer {
            all.resize_with(inputs.layer + 1, Vec::new);
        }
        all[inputs.layer] = scores;
        Ok(())
    }

    fn after_prefill(
        &self,
        _model: &dyn ContextModel<B>,
        _context_ids: &[u32],
        cache: &mut KvCache<B>,
    ) -> Result<()> {
        if self.compression_ratio == 0.0 {
            return Ok(());
        }
        let scores = std::mem::take(
            &mut *self
                .scores
                .lock()
                .map_err(|_| CoreError::Data("fast_kvzip scores poisoned by a panic".into()))?,
        );
        if scores.len() != cache.num_layers() {
            return Err(CoreError::Invalid {
                name: "fast_kvzip",
                detail: format!("{} scored layers for {}", scores.len(), cache.num_layers()),
            });
        }
        for (l, kept) in global_budget(&scores, self.compression_ratio, self.layerwise)
            .iter()
            .enumerate()
        {
            if let Some(layer) = cache.layer_mut(l) {
                layer.keep(kept)?;
            }
        }
        Ok(())
    }

    fn reset(&self) {
        if let Ok(mut s) = self.scores.lock() {
            s.clear();
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use kvpress_core::artifacts::write_f32;

    #[test]
    fn a_token_matching_no_sink_key_scores_near_one() {
        // h_kv = 1, g = 1, m = 2, S = 1, hidden 2: q = RMSNorm(x), k = RMSNorm(x) (identity
        // projections, unit norms); ℓ = k·q/√2 = (2)/√2 for x = [1, 1]; k_base = −[1, 1]:
        // ℓ_s = −√2 → score = 1 / (1 + exp(−2√2))
        let path =
            std::env::temp_dir().join(format!("fast-kvzip-{}.safetensors", std::process::id()));
        let eye = vec![1.0, 0.0, 0.0, 1.0];
        let t = |n: &str, s: Vec<usize>, v: Vec<f32>| (format!("layers.0.{n}"), s, v);
        write_f32(
            &path,
            &[
                t("q_proj.weight", vec![2, 2], eye.clone()),
                t("q_proj.bias", vec![2], vec![0.0, 0.0]),
                t("q_norm.weight", vec![2], vec![1.0, 1.0]),
                t("k_proj.weight", vec![2, 2], eye),
                t("k_norm.weight", vec![2], vec![1.0, 1.0]),
                t("k_base", vec![1, 1, 2], vec![-1.0, -1.0]),
                t("bias", vec![1, 1], vec![0.0]),
            ],
        )
        .expect("write");
        let press = FastKvZip::load(&path, 0.5).expect("load");
        let x = Tensor::<burn::backend::Flex, 2>::from_data(
            TensorData::new(vec![1.0f32, 1.0], [1, 2]),
            &Default::default(),
        );
        let s = press.gates[0].scores(&x).expect("scores");
        let want = 1.0 / (1.0 + (-2.0 * 2f32.sqrt()).exp());
        assert!((s[0][0] - want).abs() < 1e-4, "{s:?} vs {want}");
        std::fs::remove_file(&path).ok();
    }
}
