//! GGUF files (llama.cpp): header, metadata and tensor table read with bounds checks,
//! tensors dequantized to `f32` under their Hugging Face names, the config rebuilt from the
//! `{arch}.*` metadata.
//!
//! Supported tensor types: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K. llama.cpp stores the
//! rows of `attn_q`/`attn_k` of `llama` models permuted (interleaved RoPE pairs); they are put
//! back in the HF half-split order here.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::{Value, json};

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::weights::{HostTensor, WeightSource};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Unsigned integer (u8/u16/u32/u64).
    U64(u64),
    /// Signed integer (i8/i16/i32/i64).
    I64(i64),
    /// Float (f32/f64).
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Array of values.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// As an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Self::U64(v) => Some(*v),
            Self::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
    /// As a float.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::F64(v) => Some(*v),
            Self::U64(v) => Some(*v as f64),
            Self::I64(v) => Some(*v as f64),
            _ => None,
        }
    }
    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
    /// As a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// As an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The ggml tensor types this reader knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
    /// 4-bit, one f16 scale per 32 values.
    Q4_0,
    /// 4-bit, f16 scale and minimum per 32 values.
    Q4_1,
    /// 8-bit, one f16 scale per 32 values.
    Q8_0,
    /// 4-bit k-quant, super-blocks of 256.
    Q4K,
    /// 6-bit k-quant, super-blocks of 256.
    Q6K,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            14 => Self::Q6K,
            30 => Self::Bf16,
            _ => return None,
        })
    }

    /// (values per block, bytes per block).
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (256, 144),
            Self::Q6K => (256, 210),
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    /// GGUF name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// ggml dimensions, fastest first (`[in, out]` for a Linear weight).
    pub dims: Vec<usize>,
    /// Storage type.
    pub kind: GgmlType,
    /// Byte range inside the file.
    pub range: std::ops::Range<usize>,
}

/// A memory-mapped GGUF file with its parsed header.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Every metadata key.
    pub metadata: BTreeMap<String, GgufValue>,
    /// The tensor table.
    pub tensors: Vec<GgufTensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, detail: impl Into<String>) -> ModelError {
        ModelError::Gguf {
            path: self.path.to_path_buf(),
            detail: detail.into(),
        }
    }

    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                self.err(format!(
                    "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                    self.pos,
                    self.buf.len()
                ))
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let b = self.bytes(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must fit in the remaining bytes when each item takes at least `min_size`.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let remaining = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > remaining {
            return Err(self.err(format!(
                "truncated or corrupt: {what} is {n}, more than the {remaining} bytes left can hold"
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what, 1)?;
        let b = self.bytes(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, kind: u32, key: &str, depth: usize) -> Result<GgufValue> {
        Ok(match kind {
            0 => GgufValue::U64(self.array::<1>(key)?[0] as u64),
            1 => GgufValue::I64(self.array::<1>(key)?[0] as i8 as i64),
            2 => GgufValue::U64(u16::from_le_bytes(self.array(key)?) as u64),
            3 => GgufValue::I64(i16::from_le_bytes(self.array(key)?) as i64),
            4 => GgufValue::U64(self.u32(key)? as u64),
            5 => GgufValue::I64(i32::from_le_bytes(self.array(key)?) as i64),
            6 => GgufValue::F64(f32::from_le_bytes(self.array(key)?) as f64),
            7 => GgufValue::Bool(self.array::<1>(key)?[0] != 0),
            8 => GgufValue::Str(self.string(key)?),
            9 => {
                if depth > 2 {
                    return Err(self.err(format!("metadata `{key}` nests arrays too deeply")));
                }
                let item = self.u32(key)?;
                let n = self.count(key, 1)?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(item, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(key)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(self.err(format!("metadata `{key}` has unknown value type {other}")));
            }
        })
    }
}

impl GgufFile {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: read-only map; the file is not expected to change while loaded.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let (version, metadata, tensors) = Self::parse(&mmap, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            version,
            metadata,
            tensors,
        })
    }

    #[allow(clippy::type_complexity)]
    fn parse(
        buf: &[u8],
        path: &Path,
    ) -> Result<(u32, BTreeMap<String, GgufValue>, Vec<GgufTensorInfo>)> {
        let mut r = Reader { buf, pos: 0, path };
        let magic = r.array::<4>("magic")?;
        if &magic != b"GGUF" {
            return Err(r.err(format!(
                "wrong magic {magic:?}: not a GGUF file (expected \"GGUF\")"
            )));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(r.err(format!("GGUF version {version} is not supported (2 or 3)")));
        }
        let n_tensors = r.count("tensor count", 24)?;
        let n_kv = r.count("metadata count", 12)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let kind = r.u32("metadata type")?;
            let value = r.value(kind, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut raw = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32("tensor dimension count")? as usize;
            if n_dims == 0 || n_dims > 4 {
                return Err(r.err(format!(
                    "tensor `{name}` has {n_dims} dimensions (1 to 4 allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = r.u64("tensor dimension")?;
                dims.push(
                    usize::try_from(d).map_err(|_| {
                        r.err(format!("tensor `{name}` dimension {d} is too large"))
                    })?,
                );
            }
            let type_id = r.u32("tensor type")?;
            let kind = GgmlType::from_id(type_id).ok_or_else(|| {
                r.err(format!(
                    "tensor `{name}` uses ggml type {type_id}, which is not supported (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)"
                ))
            })?;
            let offset = r.u64("tensor offset")?;
            raw.push((i, name, dims, kind, offset));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(GgufValue::as_u64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = r.pos.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        for (_, name, dims, kind, offset) in raw {
            let n = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| r.err(format!("tensor `{name}` has too many elements")))?;
            let (block_values, block_bytes) = kind.block();
            if dims[0] % block_values != 0 {
                return Err(r.err(format!(
                    "tensor `{name}`: row length {} is not a multiple of the {kind:?} block size {block_values}",
                    dims[0]
                )));
            }
            let size = n / block_values * block_bytes;
            let start = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(data_start))
                .ok_or_else(|| r.err(format!("tensor `{name}` offset {offset} is too large")))?;
            let end = start
                .checked_add(size)
                .filter(|&e| e <= buf.len())
                .ok_or_else(|| {
                    r.err(format!(
                        "truncated: tensor `{name}` needs bytes {start}..{} but the file has {}",
                        start.saturating_add(size),
                        buf.len()
                    ))
                })?;
            tensors.push(GgufTensorInfo {
                name,
                dims,
                kind,
                range: start..end,
            });
        }
        Ok((version, metadata, tensors))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, detail: impl Into<String>) -> ModelError {
        ModelError::Gguf {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.metadata
            .get("general.architecture")
            .and_then(GgufValue::as_str)
            .ok_or_else(|| self.err("metadata `general.architecture` is missing"))
    }

    fn meta_u64(&self, key: &str) -> Option<u64> {
        self.metadata.get(key).and_then(GgufValue::as_u64)
    }

    fn meta_f64(&self, key: &str) -> Option<f64> {
        self.metadata.get(key).and_then(GgufValue::as_f64)
    }

    fn require_u64(&self, key: &str) -> Result<usize> {
        self.meta_u64(key)
            .map(|v| v as usize)
            .ok_or_else(|| self.err(format!("metadata `{key}` is missing or not an integer")))
    }

    fn info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Dequantizes the tensor stored under its GGUF name, returned in row-major order with the
    /// dims reversed (`[out, in]` for Linear weights).
    pub fn dequantize(&self, name: &str) -> Result<HostTensor> {
        let info = self
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let bytes = &self.mmap[info.range.clone()];
        let data = dequantize(info.kind, bytes);
        let shape: Vec<usize> = info.dims.iter().rev().copied().collect();
        HostTensor::new(shape, data)
    }

    /// Rebuilds an HF `config.json` from the `{arch}.*` metadata.
    pub fn config(&self) -> Result<LlamaConfig> {
        let arch = self.architecture()?.to_string();
        let model_type = match arch.as_str() {
            "llama" | "mistral" | "qwen2" | "qwen3" => arch.clone(),
            other => {
                return Err(self.err(format!(
                    "architecture `{other}` is not supported (llama, mistral, qwen2, qwen3)"
                )));
            }
        };
        if self.info("rope_freqs.weight").is_some() {
            return Err(self.err(
                "the file stores llama3 RoPE frequency factors (`rope_freqs.weight`), which this loader does not read yet; use the HF checkpoint directory",
            ));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let heads = self.require_u64(&k("attention.head_count"))?;
        let hidden = self.require_u64(&k("embedding_length"))?;
        let vocab = match self.meta_u64(&k("vocab_size")) {
            Some(v) => v as usize,
            None => self
                .metadata
                .get("tokenizer.ggml.tokens")
                .and_then(GgufValue::as_array)
                .map(<[GgufValue]>::len)
                .ok_or_else(|| self.err("neither a vocab size nor a token list is present"))?,
        };
        let head_dim = self
            .meta_u64(&k("attention.key_length"))
            .map(|v| v as usize);
        let rope_scaling = match self
            .metadata
            .get(&k("rope.scaling.type"))
            .and_then(GgufValue::as_str)
        {
            None | Some("none") => None,
            Some("linear") => Some(
                json!({"rope_type": "linear", "factor": self.meta_f64(&k("rope.scaling.factor")).unwrap_or(1.0)}),
            ),
            Some("yarn") => Some(json!({
                "rope_type": "yarn",
                "factor": self.meta_f64(&k("rope.scaling.factor")).unwrap_or(1.0),
                "original_max_position_embeddings": self.meta_u64(&k("rope.scaling.original_context_length")),
            })),
            Some(other) => {
                return Err(self.err(format!("rope scaling type `{other}` is not supported")));
            }
        };
        let config = LlamaConfig {
            model_type: model_type.clone(),
            architectures: vec![
                match model_type.as_str() {
                    "mistral" => "MistralForCausalLM",
                    "qwen2" => "Qwen2ForCausalLM",
                    "qwen3" => "Qwen3ForCausalLM",
                    _ => "LlamaForCausalLM",
                }
                .to_string(),
            ],
            hidden_size: hidden,
            intermediate_size: self.require_u64(&k("feed_forward_length"))?,
            num_hidden_layers: self.require_u64(&k("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: Some(
                self.meta_u64(&k("attention.head_count_kv"))
                    .map_or(heads, |v| v as usize),
            ),
            head_dim: head_dim.filter(|&d| heads == 0 || d != hidden / heads),
            vocab_size: vocab,
            max_position_embeddings: self
                .meta_u64(&k("context_length"))
                .map_or(2048, |v| v as usize),
            rms_norm_eps: self
                .meta_f64(&k("attention.layer_norm_rms_epsilon"))
                .map(|e| (e as f32) as f64)
                .unwrap_or(1e-5),
            rope_theta: Some(self.meta_f64(&k("rope.freq_base")).unwrap_or(10000.0)),
            rope_scaling,
            rope_parameters: None,
            tie_word_embeddings: self.info("output.weight").is_none(),
            attention_bias: model_type != "qwen2" && self.info("blk.0.attn_q.bias").is_some(),
            mlp_bias: false,
            hidden_act: "silu".into(),
            sliding_window: self
                .meta_u64(&k("attention.sliding_window"))
                .map(|v| v as usize),
            use_sliding_window: None,
            bos_token_id: self
                .meta_u64("tokenizer.ggml.bos_token_id")
                .map(Value::from),
            eos_token_id: self
                .meta_u64("tokenizer.ggml.eos_token_id")
                .map(Value::from),
        };
        config.validate().map_err(|e| self.err(e.to_string()))?;
        Ok(config)
    }

    /// The chat template stored in `tokenizer.chat_template`, if any.
    pub fn chat_template(&self) -> Option<String> {
        self.metadata
            .get("tokenizer.chat_template")
            .and_then(GgufValue::as_str)
            .map(String::from)
    }
}

/// Whole-model tensors: (HF name, GGUF name).
const GLOBAL_NAMES: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// Per-layer modules: (HF module under `model.layers.{i}.`, GGUF module under `blk.{i}.`).
const LAYER_NAMES: [(&str, &str); 11] = [
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// Translates a tensor name between naming schemes. `forward` maps HF → GGUF, otherwise
/// GGUF → HF.
fn translate_name(name: &str, forward: bool) -> Option<String> {
    let pick = |pair: &(&'static str, &'static str)| {
        if forward {
            (pair.0, pair.1)
        } else {
            (pair.1, pair.0)
        }
    };
    if let Some((_, to)) = GLOBAL_NAMES
        .iter()
        .map(pick)
        .find(|(from, _)| *from == name)
    {
        return Some(to.to_string());
    }
    let (from_prefix, to_prefix) = if forward {
        ("model.layers.", "blk.")
    } else {
        ("blk.", "model.layers.")
    };
    let (layer, rest) = name.strip_prefix(from_prefix)?.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let (_, to) = LAYER_NAMES
        .iter()
        .map(pick)
        .find(|(from, _)| *from == module)?;
    Some(format!("{to_prefix}{layer}.{to}.{suffix}"))
}

/// Maps an HF tensor name to its GGUF name.
fn gguf_name(hf: &str) -> Option<String> {
    translate_name(hf, true)
}

/// Maps a GGUF tensor name to its HF name.
fn hf_name(gguf: &str) -> Option<String> {
    translate_name(gguf, false)
}

/// A GGUF file seen as a [`WeightSource`] with HF names and layouts.
#[derive(Debug)]
pub struct GgufWeights {
    file: GgufFile,
    /// `(query heads, kv heads)` when q/k rows must be un-permuted (llama architecture).
    unpermute: Option<(usize, usize)>,
}

impl GgufWeights {
    /// Wraps a parsed file.
    pub fn new(file: GgufFile) -> Result<Self> {
        let unpermute = if file.architecture()? == "llama" {
            let c = file.config()?;
            Some((c.num_attention_heads, c.num_kv_heads()))
        } else {
            None
        };
        Ok(Self { file, unpermute })
    }

    /// The underlying file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

impl WeightSource for GgufWeights {
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        let gname = gguf_name(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        let mut t = self.file.dequantize(&gname)?;
        if let Some((heads, kv_heads)) = self.unpermute {
            let n_head = if gname.ends_with("attn_q.weight") {
                Some(heads)
            } else if gname.ends_with("attn_k.weight") {
                Some(kv_heads)
            } else {
                None
            };
            if let Some(n_head) = n_head {
                t = unpermute_rows(&t, n_head)
                    .map_err(|d| self.file.err(format!("tensor `{gname}`: {d}")))?;
            }
        }
        Ok(t)
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.file.info(&g).is_some())
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .file
            .tensors
            .iter()
            .filter_map(|t| hf_name(&t.name))
            .collect();
        names.sort();
        names
    }
}

/// Undoes llama.cpp's q/k row permutation: within each head, GGUF row `2i + j` holds HF row
/// `j·d/2 + i`.
fn unpermute_rows(t: &HostTensor, n_head: usize) -> std::result::Result<HostTensor, String> {
    let (rows, cols) = match t.shape.as_slice() {
        [r, c] => (*r, *c),
        other => return Err(format!("expected a matrix, got shape {other:?}")),
    };
    if n_head == 0 || rows % n_head != 0 || !(rows / n_head).is_multiple_of(2) {
        return Err(format!(
            "{rows} rows cannot be split into {n_head} heads of even size"
        ));
    }
    let d = rows / n_head;
    let half = d / 2;
    let mut out = vec![0f32; t.data.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * d + 2 * i + j) * cols;
                let dst = (h * d + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&t.data[src..src + cols]);
            }
        }
    }
    Ok(HostTensor {
        shape: t.shape.clone(),
        data: out,
    })
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `bytes` of type `kind` (a whole number of blocks) to `f32`, with the operation
/// order of gguf-py / ggml so that results are bit-identical.
pub fn dequantize(kind: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let (block_values, block_bytes) = kind.block();
    let mut out = Vec::with_capacity(bytes.len() / block_bytes * block_values);
    for b in bytes.chunks_exact(block_bytes) {
        match kind {
            GgmlType::F32 => out.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            GgmlType::F16 => out.push(f16_at(b, 0)),
            GgmlType::Bf16 => out.push(half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            GgmlType::Q4_0 => {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|q| d * ((q & 0x0F) as i32 - 8) as f32));
                out.extend(qs.iter().map(|q| d * ((q >> 4) as i32 - 8) as f32));
            }
            GgmlType::Q4_1 => {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qs = &b[4..20];
                out.extend(qs.iter().map(|q| d * (q & 0x0F) as f32 + m));
                out.extend(qs.iter().map(|q| d * (q >> 4) as f32 + m));
            }
            GgmlType::Q8_0 => {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
            }
            GgmlType::Q4K => dequantize_q4k(b, &mut out),
            GgmlType::Q6K => dequantize_q6k(b, &mut out),
        }
    }
    out
}

/// Scale and minimum `j` (6 bits each) of a Q4_K block's 12 packed scale bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn dequantize_q4k(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        out.extend(q.iter().map(|x| d1 * (x & 0x0F) as f32 - min1));
        out.extend(q.iter().map(|x| d2 * (x >> 4) as f32 - min2));
    }
}

fn dequantize_q6k(b: &[u8], out: &mut Vec<f32>) {
    let ql_all = &b[0..128];
    let qh_all = &b[128..192];
    let sc_all = &b[192..208];
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &ql_all[half * 64..half * 64 + 64];
        let qh = &qh_all[half * 32..half * 32 + 32];
        let sc = &sc_all[half * 8..half * 8 + 8];
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| d * (sc[is + k] as i8) as f32;
            y[l] = s(0) * q1 as f32;
            y[l + 32] = s(2) * q2 as f32;
            y[l + 64] = s(4) * q3 as f32;
            y[l + 96] = s(6) * q4 as f32;
        }
        out.extend_from_slice(&y);
    }
}

/// Builds an HF `tokenizer.json` (and the matching `tokenizer_config.json` fields) from the
/// `tokenizer.ggml.*` metadata of a GPT-2-style byte-level BPE vocabulary.
pub fn tokenizer_json(file: &GgufFile) -> Result<(Value, Value)> {
    let meta = &file.metadata;
    let model = meta
        .get("tokenizer.ggml.model")
        .and_then(GgufValue::as_str)
        .unwrap_or("");
    if model != "gpt2" {
        return Err(file.err(format!(
            "tokenizer model `{model}` is not supported (only GPT-2 byte-level BPE, `gpt2`); use an HF directory with tokenizer.json"
        )));
    }
    let strings = |key: &str| -> Result<Vec<String>> {
        meta.get(key)
            .and_then(GgufValue::as_array)
            .ok_or_else(|| file.err(format!("metadata `{key}` is missing")))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| file.err(format!("`{key}` holds a non-string")))
            })
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<u64> = meta
        .get("tokenizer.ggml.token_type")
        .and_then(GgufValue::as_array)
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
        .unwrap_or_else(|| vec![1; tokens.len()]);
    let pre = meta
        .get("tokenizer.ggml.pre")
        .and_then(GgufValue::as_str)
        .unwrap_or("default");
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let split = |pattern: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]})
    };
    let pre_tokenizer = match pre {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        "default" | "gpt-2" | "gpt2" => byte_level,
        "llama-bpe" | "llama3" => split(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        "qwen2" => split(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        other => {
            return Err(file.err(format!(
                "pre-tokenizer `{other}` is not supported (smollm, gpt-2, llama-bpe, qwen2)"
            )));
        }
    };
    let add_bos = meta
        .get("tokenizer.ggml.add_bos_token")
        .and_then(GgufValue::as_bool)
        .unwrap_or(false);
    let bos = meta
        .get("tokenizer.ggml.bos_token_id")
        .and_then(GgufValue::as_u64)
        .and_then(|id| tokens.get(id as usize).map(|t| (id, t.clone())));
    let byte_level_post = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
    // `add_bos_token`: encoding with special tokens prepends BOS, as HF's Llama 3 tokenizers do.
    let post_processor = match (add_bos, &bos) {
        (true, Some((id, tok))) => json!({"type": "Sequence", "processors": [
            byte_level_post,
            {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {tok.as_str(): {"id": tok, "ids": [id], "tokens": [tok]}}
            }
        ]}),
        _ => byte_level_post,
    };
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.clone(), json!(id));
        let kind = types.get(id).copied().unwrap_or(1);
        if kind == 3 || kind == 4 {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": kind == 4, "special": kind == 3,
            }));
        }
    }
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        }
    });
    let token = |key: &str| {
        meta.get(key)
            .and_then(GgufValue::as_u64)
            .and_then(|id| tokens.get(id as usize))
            .cloned()
    };
    let config = json!({
        "add_bos_token": add_bos,
        "add_eos_token": false,
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "clean_up_tokenization_spaces": false,
        "model_max_length": file.config().map(|c| c.max_position_embeddings).unwrap_or(2048),
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": file.chat_template(),
    });
    Ok((tokenizer, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for hf in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.layers.7.self_attn.q_proj.weight",
            "model.layers.7.self_attn.k_norm.weight",
            "model.layers.12.mlp.down_proj.weight",
            "model.layers.0.post_attention_layernorm.weight",
        ] {
            let g = gguf_name(hf).expect("mapped");
            assert_eq!(hf_name(&g).as_deref(), Some(hf));
        }
    }

    #[test]
    fn q4_1_block_by_hand() {
        // d = 0.5, m = -1.0, nibbles 0..15 low, 15..0 high
        let mut b = Vec::new();
        b.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        b.extend_from_slice(&half::f16::from_f32(-1.0).to_le_bytes());
        for i in 0..16u8 {
            b.push(i | ((15 - i) << 4));
        }
        let v = dequantize(GgmlType::Q4_1, &b);
        assert_eq!(v.len(), 32);
        assert_eq!(v[0], -1.0);
        assert_eq!(v[3], 0.5);
        assert_eq!(v[16], 6.5);
        assert_eq!(v[31], -1.0);
    }

    #[test]
    fn q8_0_and_q4_0_blocks_by_hand() {
        let mut b = half::f16::from_f32(0.25).to_le_bytes().to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &b);
        assert_eq!(v[0], -4.0);
        assert_eq!(v[31], 3.75);
        let mut b = half::f16::from_f32(2.0).to_le_bytes().to_vec();
        b.extend([0x8Fu8; 16]);
        let v = dequantize(GgmlType::Q4_0, &b);
        assert_eq!(v[0], 14.0); // (15 - 8) * 2
        assert_eq!(v[16], 0.0); // (8 - 8) * 2
    }

    #[test]
    fn q4k_block_by_hand() {
        // d = 1, dmin = 0.5; all scales 2 and mins 4 (j<4 path) and for j>=4 the packed form.
        let mut b = Vec::new();
        b.extend_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
        b.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        let mut scales = [0u8; 12];
        for j in 0..4 {
            scales[j] = 2; // sc j
            scales[j + 4] = 4; // m j
        }
        for j in 4..8 {
            scales[j + 4] = 3 | (1 << 4); // sc = 3, m = 1 for j >= 4
        }
        b.extend_from_slice(&scales);
        b.extend([0x21u8; 128]); // low nibble 1, high nibble 2
        let v = dequantize(GgmlType::Q4K, &b);
        assert_eq!(v.len(), 256);
        assert_eq!(v[0], 2.0 * 1.0 - 0.5 * 4.0); // chunk 0 low: sc0=2, m0=4
        assert_eq!(v[32], 2.0 * 2.0 - 0.5 * 4.0); // chunk 0 high: sc1=2, m1=4
        assert_eq!(v[128], 3.0 * 1.0 - 0.5 * 1.0); // chunk 2 low: sc4=3, m4=1
    }

    #[test]
    fn q6k_block_by_hand() {
        let mut b = vec![0u8; 210];
        // ql low nibble 5 everywhere, qh zero: q = 5 - 32 = -27; scales 1, d = 0.5
        for x in b.iter_mut().take(128) {
            *x = 0x05;
        }
        for x in b.iter_mut().skip(192).take(16) {
            *x = 1;
        }
        b[208..210].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        let v = dequantize(GgmlType::Q6K, &b);
        assert_eq!(v[0], -13.5);
        // high nibble 0 → q = -32
        assert_eq!(v[64], -16.0);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // 2 heads of d = 4, 3 columns; llama.cpp: reshape(h, 2, d/2) swap → (h, d/2, 2)
        let rows = 8;
        let cols = 3;
        let original: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let mut permuted = vec![0f32; rows * cols];
        for h in 0..2 {
            for j in 0..2 {
                for i in 0..2 {
                    let src = (h * 4 + j * 2 + i) * cols;
                    let dst = (h * 4 + i * 2 + j) * cols;
                    permuted[dst..dst + cols].copy_from_slice(&original[src..src + cols]);
                }
            }
        }
        let t = HostTensor::new(vec![rows, cols], permuted).expect("shape");
        let back = unpermute_rows(&t, 2).expect("ok");
        assert_eq!(back.data, original);
    }
}
