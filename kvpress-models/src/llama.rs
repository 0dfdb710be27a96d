//! The Llama-family decoder on burn: RMSNorm, RoPE (HF half-split), grouped-query attention in
//! query chunks, SwiGLU MLP, tied or untied LM head. Covers Llama 2/3/3.x, SmolLM2, Mistral
//! (sliding window), Qwen2/2.5 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm).
//!
//! Tensor names follow Hugging Face (`model.layers.{i}.self_attn.q_proj.weight`, …).

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use kvpress_core::activation::silu_mul;
use kvpress_core::attention::AttentionOptions;
use kvpress_core::{
    AttentionWeights, KvCache, KvQuantization, LayerCache, LayerInputs, Press, RotaryEmbedding,
    dense, threads,
};

use crate::config::{Architecture, LlamaConfig};
use crate::error::{ModelError, Result};
use crate::weights::{HostTensor, WeightSource};

/// A dense layer `y = x·Wᵀ + b` with the weight stored transposed.
///
/// # Shapes
/// - weight: `[in, out]`, bias: `[out]`
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// `x`: `[b, s, in]` → `[b, s, out]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, i] = x.dims();
        let out = self.weight.dims()[1];
        let y = dense::matmul(x.reshape([b * s, i]), self.weight.clone());
        let y = match &self.bias {
            Some(bias) => y + bias.clone().reshape([1, out]),
            None => y,
        };
        y.reshape([b, s, out])
    }

    /// The weight in HF layout `[out, in]`.
    pub fn weight_hf(&self) -> Tensor<B, 2> {
        self.weight.clone().transpose()
    }
}

/// Root-mean-square normalisation over the last dimension, then a per-channel gain.
#[derive(Debug, Clone)]
pub struct RmsNorm<B: Backend> {
    weight: Tensor<B, 1>,
    eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Normalises the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let n = self.weight.dims()[0];
        let rows = x.shape().num_elements() / n.max(1);
        // As rows × n: the per-row scale and the shared gain are the broadcasts backends run fast.
        let x = x.reshape([rows, n]);
        let var = (x.clone() * x.clone()).mean_dim(1);
        let normed = x * var.add_scalar(self.eps).sqrt().recip();
        (normed * self.weight.clone().reshape([1, n])).reshape(dims)
    }
}

/// Self-attention of one layer.
#[derive(Debug, Clone)]
pub struct Attention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    o_proj: Linear<B>,
    q_norm: Option<RmsNorm<B>>,
    k_norm: Option<RmsNorm<B>>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

/// SwiGLU feed-forward block.
#[derive(Debug, Clone)]
pub struct Mlp<B: Backend> {
    gate_proj: Linear<B>,
    up_proj: Linear<B>,
    down_proj: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = self.gate_proj.forward(x.clone());
        let up = self.up_proj.forward(x);
        self.down_proj.forward(silu_mul(gate, up))
    }
}

/// One decoder block.
#[derive(Debug, Clone)]
pub struct DecoderLayer<B: Backend> {
    input_layernorm: RmsNorm<B>,
    self_attn: Attention<B>,
    post_attention_layernorm: RmsNorm<B>,
    mlp: Mlp<B>,
}

/// The decoder with its LM head.
#[derive(Debug, Clone)]
pub struct Llama<B: Backend> {
    config: LlamaConfig,
    embed_tokens: Tensor<B, 2>,
    layers: Vec<DecoderLayer<B>>,
    norm: RmsNorm<B>,
    /// `None` when tied to the embedding.
    lm_head: Option<Linear<B>>,
    rope: RotaryEmbedding,
    rotate_half: Tensor<B, 2>,
    attention: AttentionOptions,
    ignore_max_position: bool,
    device: B::Device,
}

/// What one forward pass does besides computing hidden states.
pub struct ForwardOptions<'a, B: Backend> {
    /// Press called on each layer after its attention: [`Press::compress`] when the forward
    /// is a prefill (the cache was empty), [`Press::compress_decoding`] otherwise.
    pub press: Option<&'a dyn Press<B>>,
    /// Trailing tokens of a prefill that are the question (query-aware compression).
    pub question_tokens: usize,
}

impl<B: Backend> Default for ForwardOptions<'_, B> {
    fn default() -> Self {
        Self {
            press: None,
            question_tokens: 0,
        }
    }
}

struct Loader<'a, B: Backend> {
    source: &'a dyn WeightSource,
    device: &'a B::Device,
}

impl<B: Backend> Loader<'_, B> {
    fn host(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.source.tensor(name)?;
        if t.shape != shape {
            return Err(ModelError::TensorShape {
                name: name.into(),
                expected: shape.to_vec(),
                found: t.shape,
            });
        }
        Ok(t)
    }

    fn vector(&self, name: &str, n: usize) -> Result<Tensor<B, 1>> {
        let t = self.host(name, &[n])?;
        Ok(Tensor::from_data(TensorData::new(t.data, [n]), self.device))
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor<B, 2>> {
        let t = self.host(name, &[rows, cols])?;
        Ok(Tensor::from_data(
            TensorData::new(t.data, [rows, cols]),
            self.device,
        ))
    }

    /// A Linear layer from HF `[out, in]`, stored as `[in, out]`.
    fn linear(&self, prefix: &str, input: usize, output: usize, bias: bool) -> Result<Linear<B>> {
        let t = self.host(&format!("{prefix}.weight"), &[output, input])?;
        let mut transposed = vec![0f32; t.data.len()];
        for (o, row) in t.data.chunks_exact(input).enumerate() {
            for (i, &x) in row.iter().enumerate() {
                transposed[i * output + o] = x;
            }
        }
        let weight = Tensor::from_data(TensorData::new(transposed, [input, output]), self.device);
        let bias = if bias {
            Some(self.vector(&format!("{prefix}.bias"), output)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    fn norm(&self, name: &str, n: usize, eps: f64) -> Result<RmsNorm<B>> {
        Ok(RmsNorm {
            weight: self.vector(name, n)?,
            eps,
        })
    }
}

impl<B: Backend> Llama<B> {
    /// Builds the model from `config` and the tensors of `source` (HF names), on `device`.
    pub fn load(
        config: LlamaConfig,
        source: &dyn WeightSource,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate()?;
        let arch = config.architecture()?;
        let (hidden, heads, kv_heads, d) = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_kv_heads(),
            config.head_dim(),
        );
        let eps = config.rms_norm_eps;
        let l = Loader::<B> { source, device };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let qk_norm = arch == Architecture::Qwen3;
            let self_attn = Attention {
                q_proj: l.linear(
                    &format!("{p}.self_attn.q_proj"),
                    hidden,
                    heads * d,
                    config.qkv_bias(),
                )?,
                k_proj: l.linear(
                    &format!("{p}.self_attn.k_proj"),
                    hidden,
                    kv_heads * d,
                    config.qkv_bias(),
                )?,
                v_proj: l.linear(
                    &format!("{p}.self_attn.v_proj"),
                    hidden,
                    kv_heads * d,
                    config.qkv_bias(),
                )?,
                o_proj: l.linear(
                    &format!("{p}.self_attn.o_proj"),
                    heads * d,
                    hidden,
                    config.o_bias(),
                )?,
                q_norm: qk_norm
                    .then(|| l.norm(&format!("{p}.self_attn.q_norm.weight"), d, eps))
                    .transpose()?,
                k_norm: qk_norm
                    .then(|| l.norm(&format!("{p}.self_attn.k_norm.weight"), d, eps))
                    .transpose()?,
                n_heads: heads,
                n_kv_heads: kv_heads,
                head_dim: d,
            };
            let mlp = Mlp {
                gate_proj: l.linear(
                    &format!("{p}.mlp.gate_proj"),
                    hidden,
                    config.intermediate_size,
                    config.mlp_bias,
                )?,
                up_proj: l.linear(
                    &format!("{p}.mlp.up_proj"),
                    hidden,
                    config.intermediate_size,
                    config.mlp_bias,
                )?,
                down_proj: l.linear(
                    &format!("{p}.mlp.down_proj"),
                    config.intermediate_size,
                    hidden,
                    config.mlp_bias,
                )?,
            };
            layers.push(DecoderLayer {
                input_layernorm: l.norm(&format!("{p}.input_layernorm.weight"), hidden, eps)?,
                self_attn,
                post_attention_layernorm: l.norm(
                    &format!("{p}.post_attention_layernorm.weight"),
                    hidden,
                    eps,
                )?,
                mlp,
            });
        }
        let embed_tokens = l.matrix("model.embed_tokens.weight", config.vocab_size, hidden)?;
        let lm_head = if config.tie_word_embeddings && !source.contains("lm_head.weight") {
            None
        } else {
            Some(l.linear("lm_head", hidden, config.vocab_size, false)?)
        };
        let (theta, scaling) = config.rope()?;
        let rope = RotaryEmbedding::new(d, theta, &scaling)?;
        let mut attention = AttentionOptions::new((d as f32).powf(-0.5));
        attention.sliding_window = config.effective_sliding_window();
        let rotate_half = rope.rotate_half_matrix(device);
        Ok(Self {
            norm: l.norm("model.norm.weight", hidden, eps)?,
            rotate_half,
            config,
            embed_tokens,
            layers,
            lm_head,
            rope,
            attention,
            ignore_max_position: false,
            device: device.clone(),
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The rotary embedding.
    pub fn rope(&self) -> &RotaryEmbedding {
        &self.rope
    }

    /// Bounds the attention score chunk (elements); smaller saves memory, larger may be faster.
    pub fn set_attention_chunk(&mut self, max_score_elements: usize) {
        self.attention.max_score_elements = max_score_elements.max(1);
    }

    /// Accepts positions beyond `max_position_embeddings` (memory and speed tests; quality is
    /// not guaranteed there).
    pub fn set_ignore_max_position(&mut self, ignore: bool) {
        self.ignore_max_position = ignore;
    }

    /// Runs the fused attention kernel on `threads` groups of heads at once (CPU backends).
    pub fn set_attention_threads(&mut self, threads: usize) {
        self.attention.threads = threads.max(1);
    }

    /// A fresh cache with one slot per layer.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.layers.len())
    }

    /// A fresh cache with one slot per layer, quantizing as `quantization` says (none: full
    /// precision).
    pub fn new_cache_quantized(&self, quantization: Option<KvQuantization>) -> KvCache<B> {
        KvCache::with_quantization(self.layers.len(), quantization)
    }

    /// Runs `ids` at absolute `positions` through the decoder, appending their keys/values to
    /// `cache`, and returns the final-norm hidden states `[1, s, hidden]`.
    ///
    /// Runs on the backend's compute threads ([`threads::on_compute_threads`]).
    pub fn forward(
        &self,
        ids: &[u32],
        positions: &[usize],
        cache: &mut KvCache<B>,
        options: &ForwardOptions<'_, B>,
    ) -> Result<Tensor<B, 3>> {
        threads::on_compute_threads(|| self.forward_here(ids, positions, cache, options))
    }

    /// [`Self::forward`] on the calling thread.
    fn forward_here(
        &self,
        ids: &[u32],
        positions: &[usize],
        cache: &mut KvCache<B>,
        options: &ForwardOptions<'_, B>,
    ) -> Result<Tensor<B, 3>> {
        let s = ids.len();
        if s == 0 {
            return Err(ModelError::Input(
                "empty input: at least one token is needed".into(),
            ));
        }
        if positions.len() != s {
            return Err(ModelError::Input(format!(
                "{s} tokens but {} positions",
                positions.len()
            )));
        }
        if let Some(&bad) = ids
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary of {} entries",
                self.config.vocab_size
            )));
        }
        let max_pos = positions.iter().copied().max().unwrap_or(0);
        if max_pos >= self.config.max_position_embeddings && !self.ignore_max_position {
            return Err(ModelError::Input(format!(
                "input reaches position {} but the model supports max_position_embeddings = {} tokens",
                max_pos + 1,
                self.config.max_position_embeddings
            )));
        }
        if cache.num_layers() != self.layers.len() {
            return Err(ModelError::Input(format!(
                "cache has {} layers, the model {}",
                cache.num_layers(),
                self.layers.len()
            )));
        }
        let ids_data: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let ids_t = Tensor::<B, 1, Int>::from_data(TensorData::new(ids_data, [s]), &self.device);
        let mut x =
            self.embed_tokens
                .clone()
                .select(0, ids_t)
                .reshape([1, s, self.config.hidden_size]);
        let tables = RopeTables {
            q: self
                .rope
                .flat_tables::<B>(positions, self.config.num_attention_heads, &self.device),
            k: self
                .rope
                .flat_tables::<B>(positions, self.config.num_kv_heads(), &self.device),
            rotate: &self.rotate_half,
        };
        let prefill = cache.layer(0).is_some_and(LayerCache::is_empty);
        for (index, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache
                .layer_mut(index)
                .ok_or_else(|| ModelError::Input(format!("cache has no layer {index}")))?;
            let h = layer.input_layernorm.forward(x.clone());
            let attn = &layer.self_attn;
            let p = attn.project(h.clone(), &tables);
            layer_cache.append(p.keys, p.values, positions)?;
            let out = layer_cache.attend(p.queries.clone(), positions, &self.attention)?;
            let out = out
                .swap_dims(1, 2)
                .reshape([1, s, attn.n_heads * attn.head_dim]);
            x = x + attn.o_proj.forward(out);
            if let Some(press) = options.press {
                let inputs = LayerInputs {
                    layer: index,
                    num_layers: self.layers.len(),
                    hidden_states: &h,
                    queries: &p.queries,
                    queries_pre_rope: &p.queries_pre_rope,
                    positions,
                    rope: &self.rope,
                    question_tokens: options.question_tokens,
                    weights: AttentionWeights {
                        q_proj: &attn.q_proj.weight,
                        k_proj: &attn.k_proj.weight,
                        o_proj: &attn.o_proj.weight,
                    },
                };
                if prefill {
                    let before = layer_cache.bytes();
                    press.compress(&inputs, layer_cache)?;
                    let freed = before.saturating_sub(layer_cache.bytes());
                    kvpress_core::allocator::release_freed(freed);
                } else {
                    press.compress_decoding(&inputs, layer_cache)?;
                }
            }
            // quantize (if the cache does) only what the press kept
            layer_cache.settle()?;
            let h = layer.post_attention_layernorm.forward(x.clone());
            x = x + layer.mlp.forward(h);
        }
        Ok(self.norm.forward(x))
    }

    /// LM-head logits of hidden rows `[r, hidden]` → `[r, vocab]`.
    pub fn logits(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.lm_head {
            Some(head) => {
                let [r, h] = hidden.dims();
                head.forward(hidden.reshape([1, r, h]))
                    .reshape([r, self.config.vocab_size])
            }
            None => dense::matmul(hidden, self.embed_tokens.clone().transpose()),
        }
    }

    /// Logits of the last position of a forward's output `[1, s, hidden]`, as a host vector.
    pub fn last_logits(&self, hidden: Tensor<B, 3>) -> Result<Vec<f32>> {
        let [_, s, h] = hidden.dims();
        let last = hidden.narrow(1, s - 1, 1).reshape([1, h]);
        let logits = self.logits(last);
        logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| ModelError::Input(format!("reading logits: {e:?}")))
    }
}

/// RoPE tables of one forward, shared by all layers: `(cos, sin)` each `[1, s, heads·d]` for the
/// query and the key head counts, and the rotate-half matrix.
struct RopeTables<'a, B: Backend> {
    q: (Tensor<B, 3>, Tensor<B, 3>),
    k: (Tensor<B, 3>, Tensor<B, 3>),
    rotate: &'a Tensor<B, 2>,
}

/// Projections of one forward, each `[b, heads, s, d]`.
struct Projections<B: Backend> {
    queries: Tensor<B, 4>,
    queries_pre_rope: Tensor<B, 4>,
    keys: Tensor<B, 4>,
    values: Tensor<B, 4>,
}

impl<B: Backend> Attention<B> {
    /// Projects `h` (`[b, s, hidden]`) to queries (`[b, h_q, s, d]`, before and after RoPE),
    /// post-RoPE keys and values (`[b, h_kv, s, d]`). RoPE is applied on the flat
    /// `[b, s, heads·d]` projections.
    fn project(&self, h: Tensor<B, 3>, rope: &RopeTables<'_, B>) -> Projections<B> {
        let [b, s, _] = h.dims();
        let d = self.head_dim;
        let heads_first =
            |x: Tensor<B, 3>, heads: usize| x.reshape([b, s, heads, d]).swap_dims(1, 2);
        let normed = |x: Tensor<B, 3>, norm: &Option<RmsNorm<B>>, heads: usize| match norm {
            Some(norm) => norm
                .forward(x.reshape([b, s, heads, d]))
                .reshape([b, s, heads * d]),
            None => x,
        };
        let rotate = |x: Tensor<B, 3>, table: &(Tensor<B, 3>, Tensor<B, 3>)| {
            RotaryEmbedding::apply_flat(x, &table.0, &table.1, rope.rotate)
        };
        let q = normed(self.q_proj.forward(h.clone()), &self.q_norm, self.n_heads);
        let k = normed(
            self.k_proj.forward(h.clone()),
            &self.k_norm,
            self.n_kv_heads,
        );
        Projections {
            queries: heads_first(rotate(q.clone(), &rope.q), self.n_heads),
            queries_pre_rope: heads_first(q, self.n_heads),
            keys: heads_first(rotate(k, &rope.k), self.n_kv_heads),
            values: heads_first(self.v_proj.forward(h), self.n_kv_heads),
        }
    }
}
