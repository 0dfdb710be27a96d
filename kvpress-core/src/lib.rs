//! # kvpress-core
//!
//! The pieces every other kvpress-rs crate shares:
//!
//! - [`cache`]: the per-layer key/value cache with the original position of every kept entry,
//!   dense or ragged (heads keeping different counts hold exactly their entries), and
//!   [`cache::KvCache::bytes`] reporting what it really holds;
//! - [`quant`]: int8/int4/int2 storage of cache entries (per-token groups, f16 scale and
//!   zero-point), read back on the fly by attention;
//! - [`rope`]: rotary position embeddings in the Hugging Face half-split layout, with the
//!   `linear`, `llama3` and `yarn` scalings;
//! - [`attention`]: grouped-query attention computed in query chunks, so that no `n × n` score
//!   matrix is ever materialised (on the flex backend, prefill's causal attention runs a tiled
//!   kernel of ours that skips the masked tiles and vectorises the softmax);
//! - [`press`]: the hook through which a press compresses one layer's cache during prefill, the
//!   scorer trait and the shared top-k / head-wise budget selections.
//!
//! Everything is generic over a burn [`Backend`](burn::tensor::backend::Backend).

pub mod activation;
pub mod allocator;
pub mod artifacts;
pub mod attention;
pub mod cache;
#[cfg(feature = "flex")]
mod cpu;
pub mod dense;
pub mod error;
pub mod moments;
pub mod press;
pub mod quant;
pub mod rope;
pub mod threads;

pub use cache::{CacheMark, KvCache, LayerCache};
pub use error::CoreError;
pub use press::{
    AttentionWeights, HostScores, LayerInputs, Press, Scorer, ScorerPress, host_scores,
    keep_top_scored, top_k_flattened, top_scored_indices,
};
pub use quant::{KvBits, KvQuantization, Quantized, hadamard};
pub use rope::{RopeScaling, RotaryEmbedding};
