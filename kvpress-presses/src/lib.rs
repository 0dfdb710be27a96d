//! # kvpress-presses
//!
//! KV-cache compression methods ("presses"), one file per press, each implementing
//! [`kvpress_core::Press`] over any burn backend, with the defaults of kvpress 0.5.5.
//!
//! - Scorers (`Knorm`, `SnapKv`, `ExpectedAttention`, `StreamingLlm`, `Tova`,
//!   `ObservedAttention`, `RandomScores`, `KeyDiff`, `LagKv`, `Cur`, `NonCausalAttention`,
//!   `Leverage`, `Compactor`, `Cap`, and from artefact files `QFilter`, `KvZap`,
//!   `ExpectedAttentionStats`) become presses through [`kvpress_core::ScorerPress`] and are what
//!   the wrappers take.
//! - Wrappers of a scorer: `AdaKv` and `CriticalAdaKv` (head-wise budgets; the cache goes ragged
//!   and really shrinks), `CriticalKv`, `PerLayerCompression`, `Chunk`, `ChunkKv`, `Block`,
//!   `KeyRerotation`, `LuKv`, `Merging`, `Dms`, and the decoding-time `Decoding`.
//! - Presses of their own: `PyramidKv`, `Think`, `KvZip` and `FastKvZip` (one budget for the
//!   whole model, applied after the prefill), `DuoAttention`, `SimLayerKv`, `Composed`,
//!   `PrefillDecoding`.
//! - [`registry`] names all of them and builds one from a press expression ([`expr`]), as the
//!   command line does: `registry::build::<B>("adakv(expected_attention)", Some(0.5))`.

pub use kvpress_core::{LayerInputs, Press};

pub mod adakv;
pub mod block;
pub mod cam;
pub mod cap;
pub mod chunk;
pub mod chunkkv;
pub mod compactor;
pub mod composed;
pub mod critical_adakv;
pub mod critical_kv;
pub mod cur;
pub mod decoding;
pub mod dms;
pub mod duo_attention;
pub mod expected_attention;
pub mod expected_attention_stats;
pub mod expr;
pub mod fast_kvzip;
pub mod finch;
pub mod key_rerotation;
pub mod keydiff;
pub mod knorm;
pub mod kvzap;
pub mod kvzip;
pub mod lagkv;
pub mod leverage;
pub mod lukv;
pub mod merging;
pub mod non_causal_attention;
pub mod observed_attention;
pub mod per_layer_compression;
pub mod prefill_decoding;
pub mod pyramidkv;
pub mod qfilter;
pub mod random;
pub mod registry;
pub mod simlayerkv;
pub mod snapkv;
pub mod streaming_llm;
#[cfg(all(test, feature = "flex"))]
mod test_support;
pub mod think;
pub mod tova;
