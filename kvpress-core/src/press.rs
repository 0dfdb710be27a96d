//! The hook through which a press compresses a layer's cache during prefill.
//!
//! The model calls [`Press::compress`] once per layer, after that layer's attention output was
//! computed over the full context and its keys/values were written to the cache. Later layers
//! therefore see the uncompressed hidden states; only later forwards (question, decoding) read
//! the compressed cache.

use burn::tensor::{Tensor, backend::Backend};

use crate::cache::LayerCache;
use crate::error::Result;
use crate::rope::RotaryEmbedding;

/// What a press may read about the layer being compressed.
///
/// # Shapes
/// - `hidden_states`: `[b, n, hidden]`, the attention input (after the input RMSNorm)
/// - `queries`: `[b, h_q, n, d]`, after RoPE
/// - `positions`: `n` absolute positions of the tokens of this forward
#[derive(Debug)]
pub struct LayerInputs<'a, B: Backend> {
    /// Index of the decoder layer.
    pub layer: usize,
    /// Number of decoder layers of the model.
    pub num_layers: usize,
    /// Attention-input hidden states.
    pub hidden_states: &'a Tensor<B, 3>,
    /// Post-RoPE queries of this forward.
    pub queries: &'a Tensor<B, 4>,
    /// Absolute positions of the tokens of this forward.
    pub positions: &'a [usize],
    /// The model's rotary embedding, to evaluate RoPE at any position.
    pub rope: &'a RotaryEmbedding,
}

/// A KV-cache compression method applied layer by layer during prefill.
pub trait Press<B: Backend>: Send + Sync {
    /// Compresses `cache` (the layer's full prefilled cache) in place.
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()>;
}
