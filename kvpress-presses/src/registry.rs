//! Every press by name, and the builder that turns a press expression ([`crate::expr`]) into a
//! press.
//!
//! Names and defaults are kvpress 0.5.5's. Three kinds of names exist:
//! - **scorers** (`knorm`, `snapkv`, …) score entries; alone they make a top-k press, and they
//!   are what the wrappers take as their first argument;
//! - **wrappers** (`adakv`, `chunk`, …) take a scorer and decide how its scores are used;
//! - **presses** (`pyramidkv`, `think`, `composed`) stand on their own.
//!
//! The compression ratio given to [`build`] (the command line's `--compression-ratio`) belongs
//! to the outer press, as in kvpress; in `composed(...)` it goes to every member that does not
//! set `compression_ratio=` itself. `think` takes it as its `key_channel_compression_ratio`.

use burn::tensor::backend::Backend;
use kvpress_core::error::CoreError;
use kvpress_core::{Press, Scorer, ScorerPress};

use crate::adakv::AdaKv;
use crate::block::Block;
use crate::cam::Cam;
use crate::cap::Cap;
use crate::chunk::Chunk;
use crate::chunkkv::ChunkKv;
use crate::compactor::Compactor;
use crate::composed::Composed;
use crate::critical_adakv::CriticalAdaKv;
use crate::critical_kv::CriticalKv;
use crate::cur::{Cur, Leverage as CurLeverage};
use crate::decoding::{Decoding, Target};
use crate::dms::Dms;
use crate::duo_attention::DuoAttention;
use crate::expected_attention::ExpectedAttention;
use crate::expected_attention_stats::ExpectedAttentionStats;
use crate::expr::{Arg, ExprError, PressExpr, Span, Value, parse};
use crate::fast_kvzip::FastKvZip;
use crate::finch::Finch;
use crate::key_rerotation::KeyRerotation;
use crate::keydiff::KeyDiff;
use crate::knorm::Knorm;
use crate::kvzap::KvZap;
use crate::kvzip::KvZip;
use crate::lagkv::LagKv;
use crate::leverage::Leverage;
use crate::lukv::LuKv;
use crate::merging::Merging;
use crate::non_causal_attention::NonCausalAttention;
use crate::observed_attention::ObservedAttention;
use crate::per_layer_compression::PerLayerCompression;
use crate::prefill_decoding::PrefillDecoding;
use crate::pyramidkv::PyramidKv;
use crate::qfilter::QFilter;
use crate::random::RandomScores;
use crate::simlayerkv::SimLayerKv;
use crate::snapkv::SnapKv;
use crate::streaming_llm::StreamingLlm;
use crate::think::Think;
use crate::tova::Tova;

/// What a name stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Scores entries; a top-k press on its own, or the argument of a wrapper.
    Scorer,
    /// Takes a scorer as its first argument.
    Wrapper,
    /// A press of its own.
    Press,
}

/// One keyword parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// Keyword.
    pub name: &'static str,
    /// Default, as written in an expression (`required` when there is none).
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
}

/// One entry of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct PressInfo {
    /// Name in expressions.
    pub name: &'static str,
    /// Scorer, wrapper or press.
    pub kind: Kind,
    /// One line on what it does.
    pub summary: &'static str,
    /// Keyword parameters (besides `compression_ratio`, which every scorer and wrapper takes).
    pub params: &'static [Param],
}

const fn param(name: &'static str, default: &'static str, doc: &'static str) -> Param {
    Param { name, default, doc }
}

// Parameters several presses share.
const COMPRESSION_INTERVAL: Param = param(
    "compression_interval",
    "512",
    "generated tokens between compressions",
);
const TARGET_SIZE: Param = param(
    "target_size",
    "2048",
    "entries per layer kept by each compression",
);
const BUFFER_SIZE: Param = param(
    "hidden_states_buffer_size",
    "256",
    "recent tokens whose queries the scorer sees",
);
const N_SINK: Param = param("n_sink", "4", "first tokens always kept");
const SNAPKV_WINDOW: Param = param("window_size", "64", "observation window (always kept)");
const SNAPKV_KERNEL: Param = param("kernel_size", "5", "width of the average pool (odd)");
const N_FUTURE: Param = param(
    "n_future_positions",
    "512",
    "future positions the RoPE rotation is averaged over",
);
const USE_VNORM: Param = param("use_vnorm", "true", "weight by the value norm");
const ALPHA: Param = param(
    "alpha_safeguard",
    "0.2",
    "share of its even budget every head keeps",
);

/// Every press this crate provides.
pub const CATALOGUE: &[PressInfo] = &[
    PressInfo {
        name: "knorm",
        kind: Kind::Scorer,
        summary: "keeps the keys with the smallest L2 norm",
        params: &[],
    },
    PressInfo {
        name: "snapkv",
        kind: Kind::Scorer,
        summary: "attention paid by the last window_size tokens, average-pooled; the window is kept",
        params: &[SNAPKV_WINDOW, SNAPKV_KERNEL],
    },
    PressInfo {
        name: "expected_attention",
        kind: Kind::Scorer,
        summary: "attention expected from future queries modelled as a Gaussian, times the value norm",
        params: &[
            N_FUTURE,
            N_SINK,
            param(
                "use_covariance",
                "true",
                "include the query covariance term",
            ),
            USE_VNORM,
            param(
                "epsilon",
                "0.0",
                "added to the attention before the value weighting",
            ),
        ],
    },
    PressInfo {
        name: "expected_attention_stats",
        kind: Kind::Scorer,
        summary: "expected_attention with query statistics from a calibration file (kvpress calibrate)",
        params: &[
            param(
                "path",
                "required",
                "safetensors file with query_mean and query_cov",
            ),
            N_FUTURE,
            N_SINK,
            USE_VNORM,
            param(
                "epsilon",
                "0.0",
                "added to the attention before the value weighting",
            ),
        ],
    },
    PressInfo {
        name: "streaming_llm",
        kind: Kind::Scorer,
        summary: "keeps the first n_sink tokens and the most recent ones",
        params: &[N_SINK],
    },
    PressInfo {
        name: "tova",
        kind: Kind::Scorer,
        summary: "attention of the last token averaged over all heads (same tokens in every head)",
        params: &[],
    },
    PressInfo {
        name: "observed_attention",
        kind: Kind::Scorer,
        summary: "attention each key received during prefill, per query that could see it (H2O)",
        params: &[],
    },
    PressInfo {
        name: "random",
        kind: Kind::Scorer,
        summary: "uniform random scores (a baseline), reproducible from the seed",
        params: &[param("seed", "0", "random seed")],
    },
    PressInfo {
        name: "keydiff",
        kind: Kind::Scorer,
        summary: "keeps the keys least similar to the mean key direction",
        params: &[],
    },
    PressInfo {
        name: "lagkv",
        kind: Kind::Scorer,
        summary: "keeps tokens whose channels vary most relative to the next partition's range",
        params: &[
            N_SINK,
            param("lag_size", "128", "partition length"),
            param(
                "cross_scoring",
                "false",
                "keep softmax scores instead of ranks",
            ),
        ],
    },
    PressInfo {
        name: "cur",
        kind: Kind::Scorer,
        summary: "CUR-style leverage: locally normalised key and value norms combined",
        params: &[
            param("num_sinks", "4", "first tokens always kept"),
            param(
                "leverage_type",
                "'kv_product'",
                "'key', 'value', 'kv_avg' or 'kv_product'",
            ),
            param(
                "use_random_leverage",
                "false",
                "project on 20 random directions first",
            ),
            param(
                "use_local_approximation",
                "true",
                "normalise inside local windows",
            ),
            param(
                "local_window_size",
                "16",
                "window of the local normalisation",
            ),
        ],
    },
    PressInfo {
        name: "non_causal_attention",
        kind: Kind::Scorer,
        summary: "attention received inside bidirectional chunks, times the value norm (z-scored)",
        params: &[param("chunk_size", "256", "tokens per chunk")],
    },
    PressInfo {
        name: "leverage",
        kind: Kind::Scorer,
        summary: "statistical leverage of the centred pre-RoPE keys after a Gaussian sketch",
        params: &[param("sketch_dimension", "48", "columns of the sketch")],
    },
    PressInfo {
        name: "compactor",
        kind: Kind::Scorer,
        summary: "blend of leverage and non-causal chunked attention; edges kept",
        params: &[
            param("sink_size_start", "8", "first tokens kept"),
            param("sink_size_end", "4", "last tokens kept"),
            param("chunk_size", "256", "chunk of the attention term"),
            param("sketch_dimension", "48", "columns of the leverage sketch"),
            param(
                "blending",
                "--compression-ratio",
                "weight of the leverage term",
            ),
        ],
    },
    PressInfo {
        name: "cap",
        kind: Kind::Scorer,
        summary: "keys aligned with the expected queries and values not yet covered (CAPKV)",
        params: &[
            param("tau", "5.0", "sharpness of the alignment weights"),
            param(
                "n_future_positions",
                "512",
                "future positions of the query anchor",
            ),
            N_SINK,
            param(
                "epsilon",
                "1e-6",
                "added to the weights of the capacity matrix",
            ),
        ],
    },
    PressInfo {
        name: "qfilter",
        kind: Kind::Scorer,
        summary: "learned per-head query direction projected on the keys (file: q_filters [L, Hkv, d])",
        params: &[param(
            "path",
            "required",
            "safetensors file with `q_filters` [layers, kv_heads, head_dim]",
        )],
    },
    PressInfo {
        name: "kvzap",
        kind: Kind::Scorer,
        summary: "learned per-layer surrogate of KVzip+ scores from hidden states (file)",
        params: &[
            param(
                "path",
                "required",
                "safetensors file with layers.{l}[.fc1/.fc2].weight/bias",
            ),
            param("model_type", "'mlp'", "'mlp' or 'linear'"),
        ],
    },
    PressInfo {
        name: "adakv",
        kind: Kind::Wrapper,
        summary: "head-wise budgets: all heads of a layer compete for its budget (memory really freed)",
        params: &[ALPHA],
    },
    PressInfo {
        name: "critical_kv",
        kind: Kind::Wrapper,
        summary: "half the budget by score, the rest by score times the output-projected value norm",
        params: &[
            param(
                "epsilon",
                "1e-4",
                "added to the score before the value weighting",
            ),
            param(
                "first_stage_ratio",
                "0.5",
                "share of the budget chosen by score alone",
            ),
        ],
    },
    PressInfo {
        name: "critical_adakv",
        kind: Kind::Wrapper,
        summary: "adakv's head-wise budgets with critical_kv's two-stage selection in each head",
        params: &[
            ALPHA,
            param(
                "epsilon",
                "1e-4",
                "added to the score before the value weighting",
            ),
            param(
                "first_stage_ratio",
                "0.5",
                "share of each head's budget chosen by score alone",
            ),
        ],
    },
    PressInfo {
        name: "per_layer_compression",
        kind: Kind::Wrapper,
        summary: "the scorer with its own compression ratio on every layer",
        params: &[param(
            "compression_ratios",
            "required",
            "one ratio in [0, 1) per layer",
        )],
    },
    PressInfo {
        name: "chunk",
        kind: Kind::Wrapper,
        summary: "scores and selects in fixed chunks, so every part of the context keeps its share",
        params: &[param("chunk_length", "1024", "tokens per chunk")],
    },
    PressInfo {
        name: "chunkkv",
        kind: Kind::Wrapper,
        summary: "keeps whole contiguous chunks, the same in every head",
        params: &[param("chunk_length", "20", "tokens per chunk")],
    },
    PressInfo {
        name: "block",
        kind: Kind::Wrapper,
        summary: "streaming eviction: adds block_size tokens at a time and re-selects",
        params: &[param("block_size", "128", "tokens added per step")],
    },
    PressInfo {
        name: "key_rerotation",
        kind: Kind::Wrapper,
        summary: "re-rotates the kept keys to contiguous positions; the question follows them",
        params: &[],
    },
    PressInfo {
        name: "lukv",
        kind: Kind::Wrapper,
        summary: "per-head budgets from an offline budget curve (file); scorer default expected_attention(epsilon=0.02)",
        params: &[
            param(
                "path",
                "required",
                ".npy or JSON curve [99, layers, kv_heads] of prune ratios",
            ),
            param("sink", "4", "first tokens always kept"),
            param("window", "1", "last tokens always kept"),
        ],
    },
    PressInfo {
        name: "merging",
        kind: Kind::Wrapper,
        summary: "folds each evicted value into the kept entry with the most similar key",
        params: &[
            param(
                "similarity_threshold",
                "0.0",
                "smallest cosine similarity that merges",
            ),
            param(
                "merge_fraction",
                "1.0",
                "share of the passing evicted entries that merge",
            ),
        ],
    },
    PressInfo {
        name: "decoding",
        kind: Kind::Wrapper,
        summary: "compresses while generating: every compression_interval steps, back to target_size",
        params: &[COMPRESSION_INTERVAL, TARGET_SIZE, BUFFER_SIZE],
    },
    PressInfo {
        name: "dms",
        kind: Kind::Wrapper,
        summary: "evicts tokens leaving a sliding window when their score is below a threshold",
        params: &[
            param(
                "threshold",
                "required",
                "tokens scoring below it are evicted",
            ),
            param("sliding_window_size", "128", "recent tokens always kept"),
            param("decoding", "false", "also evict while generating"),
        ],
    },
    PressInfo {
        name: "cam",
        kind: Kind::Wrapper,
        summary: "decoding-time eviction that first merges evicted values into the next kept ones",
        params: &[
            COMPRESSION_INTERVAL,
            TARGET_SIZE,
            BUFFER_SIZE,
            param(
                "merge_budget",
                "32",
                "kept tokens after an evicted one sharing its value",
            ),
        ],
    },
    PressInfo {
        name: "compression_ratio_decoding",
        kind: Kind::Wrapper,
        summary: "decoding, keeping a fixed fraction of all tokens seen so far",
        params: &[
            param(
                "target_compression_ratio",
                "--compression-ratio",
                "fraction of the tokens seen that is removed",
            ),
            COMPRESSION_INTERVAL,
            BUFFER_SIZE,
        ],
    },
    PressInfo {
        name: "prefill_decoding",
        kind: Kind::Press,
        summary: "one press for the prefill, another while generating: prefill_decoding(P, D)",
        params: &[
            param("prefilling_press", "none", "compresses the context"),
            param(
                "decoding_press",
                "none",
                "compresses while generating (e.g. decoding(knorm))",
            ),
        ],
    },
    PressInfo {
        name: "kvzip",
        kind: Kind::Press,
        summary: "attention from reconstructing the context after the prefill; one budget for all heads",
        params: &[
            param(
                "layerwise",
                "false",
                "one budget per layer instead of one for the model",
            ),
            N_SINK,
            param(
                "kvzip_plus_normalization",
                "false",
                "KVzip+: weight by ‖v W_O‖ / ‖x‖",
            ),
        ],
    },
    PressInfo {
        name: "simlayerkv",
        kind: Kind::Press,
        summary: "lazy layers (attention on initial + recent tokens) keep only those",
        params: &[
            param(
                "lazy_threshold",
                "1.0",
                "attention share making a layer lazy (1: off)",
            ),
            param("n_last", "1", "last queries whose attention is measured"),
            param("n_recent", "1024", "recent tokens a lazy layer keeps"),
            param("n_initial", "4", "initial tokens a lazy layer keeps"),
        ],
    },
    PressInfo {
        name: "duo_attention",
        kind: Kind::Press,
        summary: "the lowest-scored KV heads keep only sinks and recent tokens (head scores file)",
        params: &[
            param(
                "path",
                "required",
                "TSV of head scores, a line per layer (kvpress calibrate --target duo-attention)",
            ),
            param(
                "head_compression_ratio",
                "--compression-ratio",
                "fraction of KV heads that stream",
            ),
            param("sink_size", "128", "first tokens a streaming head keeps"),
            param("recent_size", "256", "last tokens a streaming head keeps"),
        ],
    },
    PressInfo {
        name: "fast_kvzip",
        kind: Kind::Press,
        summary: "trained gates predict KVzip's scores during the prefill (gates file); one budget",
        params: &[
            param(
                "path",
                "required",
                "safetensors gates (layers.{l}.q_proj/k_proj/q_norm/k_norm/k_base/bias)",
            ),
            param(
                "layerwise",
                "false",
                "one budget per layer instead of one for the model",
            ),
            N_SINK,
            param(
                "window_size",
                "4096",
                "local window kept from 32k tokens on",
            ),
            param(
                "window_ratio",
                "0.02",
                "share of the context kept as local window below 32k",
            ),
        ],
    },
    PressInfo {
        name: "finch",
        kind: Kind::Press,
        summary: "prompt-guided snapkv: the question (--query-aware) is the window; keys re-rotated",
        params: &[
            param("chunk_length", "none", "select per chunk of this length"),
            param(
                "normalize_scores",
                "true",
                "weight each question row by its position",
            ),
            param(
                "rerotate_keys",
                "true",
                "move the kept keys to positions 0..kept",
            ),
            param(
                "window_size",
                "the question",
                "question length when not --query-aware",
            ),
        ],
    },
    PressInfo {
        name: "pyramidkv",
        kind: Kind::Press,
        summary: "snapkv with layer budgets shrinking linearly with depth",
        params: &[
            SNAPKV_WINDOW,
            SNAPKV_KERNEL,
            param(
                "beta",
                "20",
                "ratio of the largest to the smallest layer budget",
            ),
        ],
    },
    PressInfo {
        name: "think",
        kind: Kind::Press,
        summary: "zeroes the key channels least used by the recent queries (no token dropped)",
        params: &[
            param(
                "key_channel_compression_ratio",
                "--compression-ratio",
                "fraction of key channels zeroed",
            ),
            param(
                "window_size",
                "32",
                "recent queries whose energy is measured",
            ),
        ],
    },
    PressInfo {
        name: "composed",
        kind: Kind::Press,
        summary: "several presses applied one after the other: composed(p1, p2, ...)",
        params: &[],
    },
];

/// The catalogue entry of `name`.
pub fn info(name: &str) -> Option<&'static PressInfo> {
    CATALOGUE.iter().find(|p| p.name == name)
}

/// Builds the press written as `src`, with `compression_ratio` for the outer press.
///
/// # Errors
/// An [`ExprError`] pointing at the bad part: a syntax error, an unknown press or parameter, a
/// value of the wrong type or range, a press where a scorer is required, a missing ratio.
pub fn build<B: Backend>(
    src: &str,
    compression_ratio: Option<f64>,
) -> Result<Box<dyn Press<B>>, ExprError> {
    let expr = parse(src)?;
    Builder { src }.press(&expr, compression_ratio)
}

struct Builder<'s> {
    src: &'s str,
}

/// The arguments of one press application, checked against its catalogue entry.
struct Args<'e> {
    expr: &'e PressExpr,
    info: &'static PressInfo,
}

impl Builder<'_> {
    fn error(&self, message: impl Into<String>, span: Span) -> ExprError {
        ExprError::new(message, span, self.src)
    }

    /// Looks `expr` up and checks its keywords.
    fn args<'e>(&self, expr: &'e PressExpr) -> Result<Args<'e>, ExprError> {
        let Some(info) = info(&expr.name) else {
            let names: Vec<&str> = CATALOGUE.iter().map(|p| p.name).collect();
            return Err(self.error(
                format!(
                    "unknown press `{}`; known presses: {} (`kvpress presses` describes them)",
                    expr.name,
                    names.join(", ")
                ),
                expr.name_span,
            ));
        };
        let takes_ratio = !matches!(
            info.name,
            "composed"
                | "per_layer_compression"
                | "decoding"
                | "compression_ratio_decoding"
                | "prefill_decoding"
                | "simlayerkv"
                | "dms"
                | "cam"
        );
        for (i, arg) in expr.args.iter().enumerate() {
            match &arg.key {
                Some(key) => {
                    let known = info.params.iter().any(|p| p.name == key)
                        || (takes_ratio && key == "compression_ratio");
                    if !known {
                        let mut names: Vec<&str> = info.params.iter().map(|p| p.name).collect();
                        if takes_ratio {
                            names.push("compression_ratio");
                        }
                        let expected = if names.is_empty() {
                            "it takes none".to_string()
                        } else {
                            format!("expected one of: {}", names.join(", "))
                        };
                        return Err(self.error(
                            format!("`{}` has no parameter `{key}`; {expected}", info.name),
                            arg.span,
                        ));
                    }
                    if expr.args[..i].iter().any(|a| a.key.as_deref() == Some(key)) {
                        return Err(self.error(format!("`{key}` is given twice"), arg.span));
                    }
                }
                None => {
                    let positional_ok = match info.kind {
                        Kind::Wrapper => i == 0,
                        Kind::Press => {
                            info.name == "composed" || (info.name == "prefill_decoding" && i < 2)
                        }
                        Kind::Scorer => false,
                    };
                    if !positional_ok {
                        let hint = match info.kind {
                            Kind::Wrapper => {
                                "only the scorer is positional; name the others, e.g. `chunk_length=512`"
                            }
                            _ => "name it, e.g. `window_size=32`",
                        };
                        return Err(self.error(
                            format!("`{}` takes no positional argument here: {hint}", info.name),
                            arg.span,
                        ));
                    }
                }
            }
        }
        Ok(Args { expr, info })
    }

    /// A press: a scorer (top-k), a wrapper or a press of its own.
    fn press<B: Backend>(
        &self,
        expr: &PressExpr,
        inherited: Option<f64>,
    ) -> Result<Box<dyn Press<B>>, ExprError> {
        let args = self.args(expr)?;
        let name = args.info.name;
        let at = expr.span;
        Ok(match args.info.kind {
            Kind::Scorer => {
                let ratio = self.ratio(&args, inherited)?;
                Box::new(self.at(
                    ScorerPress::new(self.scorer::<B>(expr, true, Some(ratio))?, ratio),
                    at,
                )?)
            }
            Kind::Wrapper => {
                let own = self.opt_float(&args, "compression_ratio")?.or(inherited);
                let scorer = self.inner_scorer::<B>(&args, own)?;
                if name == "decoding" || name == "compression_ratio_decoding" {
                    let target = if name == "decoding" {
                        Target::Size(self.positive(&args, "target_size", 2048)?)
                    } else {
                        let r = match self.opt_float(&args, "target_compression_ratio")? {
                            Some(r) => r,
                            None => inherited.ok_or_else(|| {
                                self.error(
                                    "no target ratio: pass --compression-ratio R or \
                                     target_compression_ratio=R",
                                    expr.name_span,
                                )
                            })?,
                        };
                        if !(0.0..1.0).contains(&r) {
                            return Err(self.error(
                                format!("target_compression_ratio must be in [0, 1), got {r}"),
                                self.span_of(&args, "target_compression_ratio"),
                            ));
                        }
                        Target::Ratio(r)
                    };
                    let mut p = Decoding::<B, _>::with_target(scorer, target);
                    p.compression_interval = self.positive(&args, "compression_interval", 512)?;
                    p.hidden_states_buffer_size =
                        self.count(&args, "hidden_states_buffer_size", 256)?;
                    return Ok(Box::new(p));
                }
                if name == "cam" {
                    let mut p = Cam::<B, _>::new(scorer);
                    p.compression_interval = self.positive(&args, "compression_interval", 512)?;
                    p.target_size = self.positive(&args, "target_size", 2048)?;
                    p.hidden_states_buffer_size =
                        self.count(&args, "hidden_states_buffer_size", 256)?;
                    p.merge_budget = self.positive(&args, "merge_budget", 32)?;
                    return Ok(Box::new(p));
                }
                if name == "dms" {
                    let threshold = self.opt_float(&args, "threshold")?.ok_or_else(|| {
                        self.error(
                            "`dms` needs a `threshold=`, e.g. dms(knorm, threshold=-5)",
                            expr.span,
                        )
                    })?;
                    let mut p = Dms::new(scorer, threshold);
                    p.sliding_window_size = self.positive(&args, "sliding_window_size", 128)?;
                    p.decoding = self.boolean(&args, "decoding", false)?;
                    return Ok(Box::new(p));
                }
                if name == "per_layer_compression" {
                    let ratios = self.f64_list(&args, "compression_ratios")?;
                    return Ok(Box::new(
                        self.at(PerLayerCompression::new(scorer, ratios), at)?,
                    ));
                }
                let ratio = self.ratio(&args, inherited)?;
                match name {
                    "adakv" => {
                        let mut p = self.at(AdaKv::new(scorer, ratio), at)?;
                        p.alpha_safeguard = self.unit(&args, "alpha_safeguard", 0.2)?;
                        Box::new(p)
                    }
                    "critical_kv" => {
                        let mut p = self.at(CriticalKv::new(scorer, ratio), at)?;
                        p.epsilon = self.float(&args, "epsilon", 1e-4)?;
                        p.first_stage_ratio = self.unit(&args, "first_stage_ratio", 0.5)?;
                        Box::new(p)
                    }
                    "critical_adakv" => {
                        let mut p = self.at(CriticalAdaKv::new(scorer, ratio), at)?;
                        p.alpha_safeguard = self.unit(&args, "alpha_safeguard", 0.2)?;
                        p.epsilon = self.float(&args, "epsilon", 1e-4)?;
                        p.first_stage_ratio = self.unit(&args, "first_stage_ratio", 0.5)?;
                        Box::new(p)
                    }
                    "chunk" => {
                        let mut p = self.at(Chunk::new(scorer, ratio), at)?;
                        p.chunk_length = self.positive(&args, "chunk_length", 1024)?;
                        Box::new(p)
                    }
                    "chunkkv" => {
                        let mut p = self.at(ChunkKv::new(scorer, ratio), at)?;
                        p.chunk_length = self.positive(&args, "chunk_length", 20)?;
                        Box::new(p)
                    }
                    "block" => {
                        let mut p = self.at(Block::new(scorer, ratio), at)?;
                        p.block_size = self.positive(&args, "block_size", 128)?;
                        Box::new(p)
                    }
                    "lukv" => {
                        let (path, span) = self.required_text(&args, "path")?;
                        let mut p = LuKv::load(scorer, ratio, std::path::Path::new(&path))
                            .map_err(|e| self.error(e.to_string(), span))?;
                        p.sink = self.count(&args, "sink", 4)?;
                        p.window = self.count(&args, "window", 1)?;
                        Box::new(p)
                    }
                    "merging" => {
                        let mut p = self.at(Merging::new(scorer, ratio), at)?;
                        p.similarity_threshold = self.unit(&args, "similarity_threshold", 0.0)?;
                        p.merge_fraction = self.unit(&args, "merge_fraction", 1.0)?;
                        if p.merge_fraction == 0.0 {
                            return Err(self.error(
                                "`merge_fraction` must be above 0",
                                self.span_of(&args, "merge_fraction"),
                            ));
                        }
                        Box::new(p)
                    }
                    _ => Box::new(self.at(KeyRerotation::new(scorer, ratio), at)?),
                }
            }
            Kind::Press => {
                match name {
                    "pyramidkv" => {
                        let mut p = self.at(PyramidKv::new(self.ratio(&args, inherited)?), at)?;
                        p.snapkv = self.snapkv(&args)?;
                        p.beta = self.float(&args, "beta", 20.0)?;
                        if p.beta < 1.0 {
                            return Err(self
                                .error("`beta` must be at least 1", self.span_of(&args, "beta")));
                        }
                        Box::new(p)
                    }
                    "prefill_decoding" => {
                        let member = |key: &str, index: usize| -> Result<Option<Box<dyn Press<B>>>, ExprError> {
                        let arg = find(&args, key).or_else(|| {
                            args.expr.args.iter().filter(|a| a.key.is_none()).nth(index)
                        });
                        match arg.map(|a| (&a.value, a.span)) {
                            None | Some((Value::None, _)) => Ok(None),
                            Some((Value::Press(p), _)) => self.press::<B>(p, inherited).map(Some),
                            Some((other, span)) => Err(self.error(
                                format!("prefill_decoding takes presses or none, got {}", other.kind()),
                                span,
                            )),
                        }
                    };
                        Box::new(PrefillDecoding {
                            prefill: member("prefilling_press", 0)?,
                            decoding: member("decoding_press", 1)?,
                        })
                    }
                    "simlayerkv" => {
                        let p = SimLayerKv {
                            lazy_threshold: self.unit(&args, "lazy_threshold", 1.0)?,
                            n_last: self.positive(&args, "n_last", 1)?,
                            n_recent: self.positive(&args, "n_recent", 1024)?,
                            n_initial: self.count(&args, "n_initial", 4)?,
                        };
                        if p.n_recent <= p.n_last {
                            return Err(self.error("`n_recent` must exceed `n_last`", expr.span));
                        }
                        Box::new(p)
                    }
                    "duo_attention" => {
                        let (path, span) = self.required_text(&args, "path")?;
                        let ratio = match self.opt_float(&args, "head_compression_ratio")? {
                            Some(r) => r,
                            None => self.ratio(&args, inherited)?,
                        };
                        let mut p = DuoAttention::load(std::path::Path::new(&path), ratio)
                            .map_err(|e| self.error(e.to_string(), span))?;
                        p.sink_size = self.count(&args, "sink_size", 128)?;
                        p.recent_size = self.count(&args, "recent_size", 256)?;
                        Box::new(p)
                    }
                    "fast_kvzip" => {
                        let (path, span) = self.required_text(&args, "path")?;
                        let ratio = self.ratio(&args, inherited)?;
                        let mut p = FastKvZip::load(std::path::Path::new(&path), ratio)
                            .map_err(|e| self.error(e.to_string(), span))?;
                        p.layerwise = self.boolean(&args, "layerwise", false)?;
                        p.n_sink = self.count(&args, "n_sink", 4)?;
                        p.window_size = self.count(&args, "window_size", 4096)?;
                        p.window_ratio = self.unit(&args, "window_ratio", 0.02)?;
                        Box::new(p)
                    }
                    "finch" => {
                        let mut p = self.at(Finch::new(self.ratio(&args, inherited)?), at)?;
                        p.normalize_scores = self.boolean(&args, "normalize_scores", true)?;
                        p.rerotate_keys = self.boolean(&args, "rerotate_keys", true)?;
                        p.chunk_length = find(&args, "chunk_length")
                            .is_some()
                            .then(|| self.positive(&args, "chunk_length", 1))
                            .transpose()?;
                        p.window_size = find(&args, "window_size")
                            .is_some()
                            .then(|| self.positive(&args, "window_size", 1))
                            .transpose()?;
                        Box::new(p)
                    }
                    "kvzip" => {
                        let mut p = self.at(KvZip::new(self.ratio(&args, inherited)?), at)?;
                        p.layerwise = self.boolean(&args, "layerwise", false)?;
                        p.n_sink = self.count(&args, "n_sink", 4)?;
                        p.kvzip_plus_normalization =
                            self.boolean(&args, "kvzip_plus_normalization", false)?;
                        Box::new(p)
                    }
                    "think" => {
                        let ratio = match self.opt_float(&args, "key_channel_compression_ratio")? {
                            Some(r) => r,
                            None => self.ratio(&args, inherited)?,
                        };
                        let mut p = self.at(Think::new(ratio), at)?;
                        p.window_size = self.positive(&args, "window_size", 32)?;
                        Box::new(p)
                    }
                    _ => {
                        let members: Vec<&PressExpr> = self.composed_members(&args)?;
                        let presses = members
                            .into_iter()
                            .map(|m| self.press::<B>(m, inherited))
                            .collect::<Result<Vec<_>, _>>()?;
                        Box::new(Composed { presses })
                    }
                }
            }
        })
    }

    /// The members of `composed(p1, p2, …)` or `composed([p1, p2, …])`.
    fn composed_members<'e>(&self, args: &Args<'e>) -> Result<Vec<&'e PressExpr>, ExprError> {
        let mut members = Vec::new();
        for arg in &args.expr.args {
            match &arg.value {
                Value::Press(p) => members.push(p),
                Value::List(items) => {
                    for (item, span) in items {
                        match item {
                            Value::Press(p) => members.push(p),
                            other => {
                                return Err(self.error(
                                    format!("composed takes presses, got {}", other.kind()),
                                    *span,
                                ));
                            }
                        }
                    }
                }
                other => {
                    return Err(self.error(
                        format!("composed takes presses, got {}", other.kind()),
                        arg.span,
                    ));
                }
            }
        }
        if members.is_empty() {
            return Err(self.error(
                "composed needs at least one press, e.g. composed(snapkv, think)",
                args.expr.span,
            ));
        }
        Ok(members)
    }

    /// The scorer a wrapper takes as its first argument.
    fn inner_scorer<B: Backend>(
        &self,
        args: &Args<'_>,
        ratio: Option<f64>,
    ) -> Result<Box<dyn Scorer<B>>, ExprError> {
        let name = args.info.name;
        let first = args.expr.args.first().filter(|a| a.key.is_none());
        if first.is_none() && name == "lukv" {
            return Ok(Box::new(ExpectedAttention {
                epsilon: 0.02,
                ..Default::default()
            }));
        }
        let Some(first) = first else {
            return Err(self.error(
                format!("`{name}` needs a scorer as its first argument, e.g. `{name}(snapkv)`"),
                args.expr.span,
            ));
        };
        match &first.value {
            Value::Press(inner) => self.scorer(inner, false, ratio),
            other => Err(self.error(
                format!(
                    "`{name}` needs a scorer as its first argument, got {}",
                    other.kind()
                ),
                first.span,
            )),
        }
    }

    /// A scorer; `outer` when it is the whole expression (then it may carry the ratio).
    /// `ratio` is the press's compression ratio, Compactor's default blending.
    fn scorer<B: Backend>(
        &self,
        expr: &PressExpr,
        outer: bool,
        ratio: Option<f64>,
    ) -> Result<Box<dyn Scorer<B>>, ExprError> {
        let args = self.args(expr)?;
        if args.info.kind != Kind::Scorer {
            let scorers: Vec<&str> = CATALOGUE
                .iter()
                .filter(|p| p.kind == Kind::Scorer)
                .map(|p| p.name)
                .collect();
            return Err(self.error(
                format!(
                    "a scorer is required here, and `{}` is not one; scorers: {}",
                    expr.name,
                    scorers.join(", ")
                ),
                expr.name_span,
            ));
        }
        if !outer && let Some(arg) = find(&args, "compression_ratio") {
            return Err(self.error(
                "the compression ratio belongs to the outer press (as in kvpress): set it there \
                 or with --compression-ratio",
                arg.span,
            ));
        }
        Ok(match expr.name.as_str() {
            "knorm" => Box::new(Knorm),
            "snapkv" => Box::new(self.snapkv(&args)?),
            "expected_attention" => Box::new(ExpectedAttention {
                n_future_positions: self.positive(&args, "n_future_positions", 512)?,
                n_sink: self.count(&args, "n_sink", 4)?,
                use_covariance: self.boolean(&args, "use_covariance", true)?,
                use_vnorm: self.boolean(&args, "use_vnorm", true)?,
                epsilon: self.float(&args, "epsilon", 0.0)?,
            }),
            "streaming_llm" => Box::new(StreamingLlm {
                n_sink: self.count(&args, "n_sink", 4)?,
            }),
            "tova" => Box::new(Tova),
            "observed_attention" => Box::new(ObservedAttention),
            "random" => Box::new(RandomScores {
                seed: self.count(&args, "seed", 0)? as u64,
            }),
            "keydiff" => Box::new(KeyDiff),
            "non_causal_attention" => Box::new(NonCausalAttention {
                chunk_size: self.positive(&args, "chunk_size", 256)?,
            }),
            "expected_attention_stats" => {
                let (path, span) = self.required_text(&args, "path")?;
                let base = ExpectedAttention {
                    n_future_positions: self.positive(&args, "n_future_positions", 512)?,
                    n_sink: self.count(&args, "n_sink", 4)?,
                    use_covariance: true,
                    use_vnorm: self.boolean(&args, "use_vnorm", true)?,
                    epsilon: self.float(&args, "epsilon", 0.0)?,
                };
                Box::new(
                    ExpectedAttentionStats::load(std::path::Path::new(&path), base)
                        .map_err(|e| self.error(e.to_string(), span))?,
                )
            }
            "qfilter" => {
                let (path, span) = self.required_text(&args, "path")?;
                Box::new(
                    QFilter::load(std::path::Path::new(&path))
                        .map_err(|e| self.error(e.to_string(), span))?,
                )
            }
            "kvzap" => {
                let (path, span) = self.required_text(&args, "path")?;
                let mlp = match find(&args, "model_type").map(|a| (&a.value, a.span)) {
                    None => true,
                    Some((Value::Str(t), _)) if t == "mlp" => true,
                    Some((Value::Str(t), _)) if t == "linear" => false,
                    Some((_, span)) => {
                        return Err(self.error("`model_type` must be 'mlp' or 'linear'", span));
                    }
                };
                Box::new(
                    KvZap::load(std::path::Path::new(&path), mlp)
                        .map_err(|e| self.error(e.to_string(), span))?,
                )
            }
            "cap" => Box::new(Cap {
                tau: self.float(&args, "tau", 5.0)?,
                n_future_positions: self.positive(&args, "n_future_positions", 512)?,
                n_sink: self.count(&args, "n_sink", 4)?,
                epsilon: self.float(&args, "epsilon", 1e-6)?,
            }),
            "leverage" => Box::new(Leverage {
                sketch_dimension: self.positive(&args, "sketch_dimension", 48)?,
            }),
            "compactor" => Box::new(Compactor {
                sink_size_start: self.count(&args, "sink_size_start", 8)?,
                sink_size_end: self.count(&args, "sink_size_end", 4)?,
                chunk_size: self.positive(&args, "chunk_size", 256)?,
                sketch_dimension: self.positive(&args, "sketch_dimension", 48)?,
                blending: match self.opt_float(&args, "blending")? {
                    Some(b) => b,
                    None => ratio.unwrap_or(0.35),
                },
            }),
            "cur" => {
                let leverage = match find(&args, "leverage_type") {
                    None => CurLeverage::KvProduct,
                    Some(arg) => match &arg.value {
                        Value::Str(name) => CurLeverage::parse(name).ok_or_else(|| {
                            self.error(
                                format!(
                                    "unknown leverage_type '{name}'; expected 'key', 'value', \
                                     'kv_avg' or 'kv_product'"
                                ),
                                arg.span,
                            )
                        })?,
                        other => {
                            return Err(self.error(
                                format!("`leverage_type` must be a string, got {}", other.kind()),
                                arg.span,
                            ));
                        }
                    },
                };
                Box::new(Cur {
                    num_sinks: self.count(&args, "num_sinks", 4)?,
                    leverage_type: leverage,
                    use_random_leverage: self.boolean(&args, "use_random_leverage", false)?,
                    use_local_approximation: self.boolean(
                        &args,
                        "use_local_approximation",
                        true,
                    )?,
                    local_window_size: self.positive(&args, "local_window_size", 16)?,
                })
            }
            _ => Box::new(LagKv {
                n_sink: self.count(&args, "n_sink", 4)?,
                lag_size: self.positive(&args, "lag_size", 128)?,
                cross_scoring: self.boolean(&args, "cross_scoring", false)?,
            }),
        })
    }

    fn snapkv(&self, args: &Args<'_>) -> Result<SnapKv, ExprError> {
        let kernel_size = self.positive(args, "kernel_size", 5)?;
        if kernel_size % 2 == 0 {
            return Err(self.error(
                format!("`kernel_size` must be odd, got {kernel_size}"),
                self.span_of(args, "kernel_size"),
            ));
        }
        Ok(SnapKv {
            window_size: self.positive(args, "window_size", 64)?,
            kernel_size,
        })
    }

    /// The ratio of this press: its own `compression_ratio=`, else the one handed down.
    fn ratio(&self, args: &Args<'_>, inherited: Option<f64>) -> Result<f64, ExprError> {
        let ratio = match self.opt_float(args, "compression_ratio")? {
            Some(r) => r,
            None => inherited.ok_or_else(|| {
                self.error(
                    format!(
                        "no compression ratio for `{0}`: pass --compression-ratio R or write \
                         {0}(compression_ratio=R)",
                        args.info.name
                    ),
                    args.expr.name_span,
                )
            })?,
        };
        if !(0.0..1.0).contains(&ratio) {
            let span = find(args, "compression_ratio").map_or(args.expr.span, |a| a.span);
            return Err(self.error(
                format!("compression ratio must be in [0, 1), got {ratio}"),
                span,
            ));
        }
        Ok(ratio)
    }

    /// A constructor's error, pointed at the press it builds.
    fn at<T>(&self, r: Result<T, CoreError>, span: Span) -> Result<T, ExprError> {
        r.map_err(|e| self.error(e.to_string(), span))
    }

    fn span_of(&self, args: &Args<'_>, key: &str) -> Span {
        find(args, key).map_or(args.expr.span, |a| a.span)
    }

    fn opt_float(&self, args: &Args<'_>, key: &str) -> Result<Option<f64>, ExprError> {
        let Some(arg) = find(args, key) else {
            return Ok(None);
        };
        match arg.value.as_f64() {
            Some(x) if x.is_finite() => Ok(Some(x)),
            _ => Err(self.error(
                format!("`{key}` must be a number, got {}", arg.value.kind()),
                arg.span,
            )),
        }
    }

    fn float(&self, args: &Args<'_>, key: &str, default: f64) -> Result<f64, ExprError> {
        Ok(self.opt_float(args, key)?.unwrap_or(default))
    }

    /// A number in `[0, 1]`.
    fn unit(&self, args: &Args<'_>, key: &str, default: f64) -> Result<f64, ExprError> {
        let x = self.float(args, key, default)?;
        if (0.0..=1.0).contains(&x) {
            Ok(x)
        } else {
            Err(self.error(
                format!("`{key}` must be in [0, 1], got {x}"),
                self.span_of(args, key),
            ))
        }
    }

    /// A non-negative integer.
    fn count(&self, args: &Args<'_>, key: &str, default: usize) -> Result<usize, ExprError> {
        let Some(arg) = find(args, key) else {
            return Ok(default);
        };
        match arg.value {
            Value::Int(i) if i >= 0 => Ok(i as usize),
            _ => Err(self.error(
                format!(
                    "`{key}` must be a non-negative integer, got {}",
                    describe(&arg.value)
                ),
                arg.span,
            )),
        }
    }

    /// A positive integer.
    fn positive(&self, args: &Args<'_>, key: &str, default: usize) -> Result<usize, ExprError> {
        let x = self.count(args, key, default)?;
        if x == 0 {
            return Err(self.error(format!("`{key}` must be positive"), self.span_of(args, key)));
        }
        Ok(x)
    }

    fn boolean(&self, args: &Args<'_>, key: &str, default: bool) -> Result<bool, ExprError> {
        let Some(arg) = find(args, key) else {
            return Ok(default);
        };
        match arg.value {
            Value::Bool(b) => Ok(b),
            _ => Err(self.error(
                format!(
                    "`{key}` must be true or false, got {}",
                    describe(&arg.value)
                ),
                arg.span,
            )),
        }
    }

    /// A required string argument and its span.
    fn required_text(&self, args: &Args<'_>, key: &str) -> Result<(String, Span), ExprError> {
        match find(args, key) {
            Some(Arg {
                value: Value::Str(text),
                span,
                ..
            }) => Ok((text.clone(), *span)),
            Some(arg) => Err(self.error(
                format!("`{key}` must be a quoted string, got {}", arg.value.kind()),
                arg.span,
            )),
            None => Err(self.error(
                format!(
                    "`{}` needs `{key}='…'` (a local file; see `kvpress presses`)",
                    args.info.name
                ),
                args.expr.span,
            )),
        }
    }

    /// A required list of ratios in `[0, 1)`.
    fn f64_list(&self, args: &Args<'_>, key: &str) -> Result<Vec<f64>, ExprError> {
        let Some(arg) = find(args, key) else {
            return Err(self.error(
                format!(
                    "`{}` needs `{key}=[r0, r1, …]`, one ratio per layer",
                    args.info.name
                ),
                args.expr.span,
            ));
        };
        let Value::List(items) = &arg.value else {
            return Err(self.error(
                format!(
                    "`{key}` must be a list of numbers, got {}",
                    arg.value.kind()
                ),
                arg.span,
            ));
        };
        items
            .iter()
            .map(|(v, span)| match v.as_f64() {
                Some(r) if (0.0..1.0).contains(&r) => Ok(r),
                _ => Err(self.error(
                    format!("each ratio must be a number in [0, 1), got {}", describe(v)),
                    *span,
                )),
            })
            .collect()
    }
}

fn find<'e>(args: &Args<'e>, key: &str) -> Option<&'e Arg> {
    args.expr
        .args
        .iter()
        .find(|a| a.key.as_deref() == Some(key))
}

fn describe(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        other => other.kind().to_string(),
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::test_support::{Fixture, kept_positions};
    use burn::backend::Flex;
    use kvpress_core::LayerCache;

    fn err(src: &str, ratio: Option<f64>) -> ExprError {
        match build::<Flex>(src, ratio) {
            Ok(_) => panic!("`{src}` should not build"),
            Err(e) => e,
        }
    }

    /// `qfilter(path=…)` / `kvzap(path=…, model_type='linear')` over random artefacts for the
    /// fixtures (one layer, 2 KV heads of 8, hidden size 8), written once.
    fn artefact_expression(name: &str) -> String {
        use kvpress_core::artifacts::write_f32;
        let dir = std::env::temp_dir().join(format!("kvpress-registry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let random = |n: usize| (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0).collect();
        let path = dir.join(format!("{name}.safetensors"));
        if name == "duo_attention" {
            // one layer, head 0 scores lower: at ratio 0.5 it streams (10 sinks + 140 recent)
            let path = dir.join("duo.tsv");
            std::fs::write(&path, "0.1\t0.9\n").expect("write");
            return format!(
                "duo_attention(path='{}', sink_size=10, recent_size=140)",
                path.display()
            );
        }
        if name == "lukv" {
            // prune ratio 0.25 everywhere: a 0.25-ratio row keeps 75 % of every head
            let path = dir.join("lukv.json");
            let layer = "[0.25, 0.25]";
            let rows = vec![format!("[{layer}]"); 99].join(", ");
            std::fs::write(&path, format!("[{rows}]")).expect("write");
            return format!("lukv(knorm, path='{}')", path.display());
        }
        let tensors = match name {
            "fast_kvzip" => {
                // h_kv 2, g 2, m 4, S 2, hidden 8
                let t =
                    |n: &str, s: Vec<usize>, len: usize| (format!("layers.0.{n}"), s, random(len));
                vec![
                    t("q_proj.weight", vec![16, 8], 128),
                    t("q_proj.bias", vec![16], 16),
                    t("q_norm.weight", vec![4], 4),
                    t("k_proj.weight", vec![8, 8], 64),
                    t("k_norm.weight", vec![4], 4),
                    t("k_base", vec![2, 2, 4], 16),
                    t("bias", vec![2, 2], 4),
                ]
            }
            "qfilter" => vec![("q_filters".to_string(), vec![1, 2, 8], random(16))],
            "expected_attention_stats" => {
                let identity: Vec<f32> = (0..4 * 64).map(|i| f32::from(i % 64 % 9 == 0)).collect();
                vec![
                    ("query_mean".to_string(), vec![1, 4, 8], random(32)),
                    ("query_cov".to_string(), vec![1, 4, 8, 8], identity),
                ]
            }
            _ => vec![
                ("layers.0.weight".to_string(), vec![2, 8], random(16)),
                ("layers.0.bias".to_string(), vec![2], random(2)),
            ],
        };
        write_f32(&path, &tensors).expect("write");
        let extra = if name == "kvzap" {
            ", model_type='linear'"
        } else {
            ""
        };
        format!("{name}(path='{}'{extra})", path.display())
    }

    /// An expression of `info`'s press with its defaults (and the artefacts it needs);
    /// `per_layer_compression` gets `ratio`.
    fn default_expression(info: &PressInfo, ratio: f64) -> String {
        match (info.kind, info.name) {
            (Kind::Wrapper, "per_layer_compression") => {
                format!("{}(knorm, compression_ratios=[{ratio}])", info.name)
            }
            (Kind::Wrapper, "dms") => "dms(knorm, threshold=-1e9)".to_string(),
            (Kind::Wrapper, "lukv") => artefact_expression("lukv"),
            (Kind::Wrapper, _) => format!("{}(snapkv)", info.name),
            (_, "composed") => "composed(knorm, think)".to_string(),
            (_, "finch") => "finch(window_size=8)".to_string(),
            (_, "prefill_decoding") => "prefill_decoding(knorm, decoding(knorm))".to_string(),
            (
                _,
                "qfilter"
                | "kvzap"
                | "expected_attention_stats"
                | "lukv"
                | "duo_attention"
                | "fast_kvzip",
            ) => artefact_expression(info.name),
            _ => info.name.to_string(),
        }
    }

    fn pointed(e: &ExprError) -> &str {
        &e.source[e.span.start..e.span.end]
    }

    #[test]
    fn every_catalogue_entry_builds_with_its_defaults() {
        for info in CATALOGUE {
            let src = default_expression(info, 0.25);
            let press = match build::<Flex>(&src, Some(0.25)) {
                Ok(p) => p,
                Err(e) => panic!("{src}: {e}"),
            };
            // and runs on a 300-token layer, keeping 225 entries per head on average
            let f = Fixture::new(2, 2, 300, 8);
            let kept = kept_positions(&f, press.as_ref());
            let total: usize = kept.iter().map(Vec::len).sum();
            // decoding presses leave the prefill alone; duo_attention: round(2 heads · 0.25) = 0 stream
            let want = match info.name {
                "think"
                | "decoding"
                | "compression_ratio_decoding"
                | "kvzip"
                | "simlayerkv"
                | "dms"
                | "duo_attention"
                | "fast_kvzip"
                | "cam" => 600,
                _ => 450,
            };
            assert!(
                total == want || info.name == "chunkkv" || info.name == "pyramidkv",
                "{src}: {total} entries kept"
            );
        }
    }

    #[test]
    fn ratio_zero_leaves_the_cache_untouched() {
        let f = Fixture::new(2, 2, 300, 8);
        for info in CATALOGUE {
            let src = default_expression(info, 0.0);
            let press = build::<Flex>(&src, Some(0.0)).unwrap_or_else(|e| panic!("{src}: {e}"));
            let mut cache = LayerCache::default();
            cache
                .append(f.keys.clone(), f.keys.clone(), &f.positions)
                .expect("append");
            press.compress(&f.inputs(), &mut cache).expect("compress");
            let all: Vec<usize> = (0..300).collect();
            assert_eq!(cache.positions(), &[all.clone(), all], "{src}");
            let (keys, _) = cache.keys_values().expect("dense").expect("kept");
            let diff = (keys.clone() - f.keys.clone()).abs().max().into_scalar();
            assert_eq!(diff, 0.0, "{src}: keys changed");
        }
    }

    #[test]
    fn contexts_shorter_than_a_window_are_clear_errors() {
        let f = Fixture::new(2, 2, 40, 8);
        for (src, word) in [
            ("snapkv", "window"),
            ("pyramidkv", "window"),
            ("adakv(snapkv)", "window"),
            ("streaming_llm(n_sink=40)", "sink"),
            ("expected_attention(n_sink=64)", "sink"),
            ("lagkv(n_sink=50)", "sink"),
        ] {
            let press = build::<Flex>(src, Some(0.5)).expect("build");
            let mut cache = LayerCache::default();
            cache
                .append(f.keys.clone(), f.keys.clone(), &f.positions)
                .expect("append");
            let err = press.compress(&f.inputs(), &mut cache).expect_err(src);
            assert!(err.to_string().contains(word), "{src}: {err}");
        }
    }

    #[test]
    fn built_presses_behave_like_the_hand_built_ones() {
        let f = Fixture::new(2, 2, 40, 8);
        let built =
            build::<Flex>("snapkv(window_size=8, kernel_size=3)", Some(0.5)).expect("build");
        let direct = ScorerPress::new(
            SnapKv {
                window_size: 8,
                kernel_size: 3,
            },
            0.5,
        )
        .expect("press");
        assert_eq!(
            kept_positions(&f, built.as_ref()),
            kept_positions(&f, &direct)
        );
        // the keyword ratio counts when no outer ratio is given
        let built = build::<Flex>("knorm(compression_ratio=0.75)", None).expect("build");
        assert!(
            kept_positions(&f, built.as_ref())
                .iter()
                .all(|h| h.len() == 10)
        );
        // composed: members without a ratio take the outer one
        let built = build::<Flex>(
            "composed(knorm, streaming_llm(compression_ratio=0.5))",
            Some(0.5),
        )
        .expect("build");
        assert!(
            kept_positions(&f, built.as_ref())
                .iter()
                .all(|h| h.len() == 10)
        );
    }

    #[test]
    fn errors_name_the_bad_part() {
        let e = err("adakv(snapk)", Some(0.5));
        assert!(e.message.contains("unknown press `snapk`"), "{e}");
        assert_eq!(pointed(&e), "snapk");

        let e = err("snapkv(window=3)", Some(0.5));
        assert!(e.message.contains("no parameter `window`"), "{e}");
        assert!(e.message.contains("window_size"), "{e}");
        assert_eq!(pointed(&e), "window=3");

        let e = err("snapkv(window_size=2.5)", Some(0.5));
        assert!(e.message.contains("non-negative integer"), "{e}");

        let e = err("snapkv(kernel_size=4)", Some(0.5));
        assert!(e.message.contains("odd"), "{e}");

        let e = err("adakv(pyramidkv)", Some(0.5));
        assert!(e.message.contains("scorer is required"), "{e}");
        assert_eq!(pointed(&e), "pyramidkv");

        let e = err("adakv(adakv(knorm))", Some(0.5));
        assert!(e.message.contains("scorer is required"), "{e}");

        let e = err("adakv(alpha_safeguard=0.2)", Some(0.5));
        assert!(e.message.contains("needs a scorer"), "{e}");

        let e = err("adakv(knorm, alpha_safeguard=1.5)", Some(0.5));
        assert!(e.message.contains("[0, 1]"), "{e}");
        assert_eq!(pointed(&e), "alpha_safeguard=1.5");

        let e = err("knorm", Some(1.0));
        assert!(e.message.contains("[0, 1)"), "{e}");
        let e = err("knorm(compression_ratio=-0.1)", None);
        assert!(e.message.contains("[0, 1)"), "{e}");
        assert_eq!(pointed(&e), "compression_ratio=-0.1");

        let e = err("knorm", None);
        assert!(e.message.contains("--compression-ratio"), "{e}");

        let e = err("adakv(knorm(compression_ratio=0.3))", Some(0.5));
        assert!(e.message.contains("outer press"), "{e}");

        let e = err(
            "per_layer_compression(knorm, compression_ratios=[0.1, 1.2])",
            None,
        );
        assert_eq!(pointed(&e), "1.2");

        let e = err("composed(knorm, 3)", Some(0.5));
        assert!(e.message.contains("composed takes presses"), "{e}");

        let e = err("snapkv(window_size=8, window_size=9)", Some(0.5));
        assert!(e.message.contains("twice"), "{e}");

        let e = err("chunk(snapkv, 512)", Some(0.5));
        assert!(e.message.contains("positional"), "{e}");
    }
}
