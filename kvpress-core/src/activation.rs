//! Activation functions of the models, fused where a backend gains from it.

use burn::tensor::{Tensor, activation::silu, backend::Backend};

/// `silu(gate) · up`, the gated activation of Llama's MLP (one pass over memory on the flex
/// backend, burn's ops elsewhere).
///
/// # Shapes
/// - `gate`, `up`: the same shape; returns that shape
pub fn silu_mul<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    if let Some(out) = crate::cpu::activation::silu_mul(&gate, &up) {
        return out;
    }
    silu(gate) * up
}
