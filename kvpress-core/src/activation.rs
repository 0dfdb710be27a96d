//! Activation functions of the models, fused where a backend gains from it.

use burn::tensor::{
    Tensor,
    activation::{silu, softmax},
    backend::Backend,
};

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

/// Softmax over the last axis, then the mean over the heads of each group: the attention a
/// KV head's entries receive, averaged over its query heads (one pass per row on the flex
/// backend, burn's ops elsewhere).
///
/// # Shapes
/// - `logits`: `[1, h_kv, g, n]`; returns `[1, h_kv, n]`
pub fn grouped_softmax_mean<B: Backend>(logits: Tensor<B, 4>) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    if let Some(mean) = crate::cpu::activation::grouped_softmax_mean(&logits) {
        return mean;
    }
    grouped_softmax_mean_by_burn(logits)
}

/// [`grouped_softmax_mean`] in burn's ops.
fn grouped_softmax_mean_by_burn<B: Backend>(logits: Tensor<B, 4>) -> Tensor<B, 3> {
    let [_, h_kv, _, n] = logits.dims();
    softmax(logits, 3).mean_dim(2).reshape([1, h_kv, n])
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    #[test]
    fn grouped_softmax_mean_equals_a_direct_sum() {
        let dev = Default::default();
        let (h_kv, g, n) = (3, 3, 1500);
        let logits =
            Tensor::<Flex, 4>::random([1, h_kv, g, n], Distribution::Normal(0.0, 3.0), &dev);
        let x: Vec<f32> = logits.clone().into_data().to_vec().expect("f32");
        let mut want = vec![0f64; h_kv * n];
        for kv in 0..h_kv {
            for head in 0..g {
                let row = &x[(kv * g + head) * n..][..n];
                let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let total: f64 = row.iter().map(|&v| (v as f64 - top).exp()).sum();
                for (j, &v) in row.iter().enumerate() {
                    want[kv * n + j] += (v as f64 - top).exp() / total / g as f64;
                }
            }
        }
        for got in [
            grouped_softmax_mean(logits.clone()),
            grouped_softmax_mean_by_burn(logits),
        ] {
            assert_eq!(got.dims(), [1, h_kv, n]);
            let got: Vec<f32> = got.into_data().to_vec().expect("f32");
            for (a, b) in got.iter().zip(&want) {
                // f32 sums of 1500 terms and a polynomial exp: about 2e-6 relative
                assert!((*a as f64 - b).abs() <= 1e-5 * b.max(1e-6), "{a} vs {b}");
            }
        }
    }
}
