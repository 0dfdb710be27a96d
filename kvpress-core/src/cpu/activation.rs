//! The MLP's gated activation `silu(gate) · up` in one vectorised pass over host memory
//! (burn-flex runs `silu` through a scalar `expf` per element, then a second pass to multiply),
//! and the presses' softmax averaged over head groups.

use burn::backend::flex::FlexTensor;
use burn::tensor::{Tensor, TensorData, backend::Backend};

use rayon::prelude::*;

use super::flex_tensor;
use super::math::{add_softmax, exp};

/// Elements per task.
const CHUNK: usize = 1 << 16;

/// `silu(gate) · up` on the flex backend; `None` on other backends, element types, or when
/// either tensor is not contiguous or their shapes differ.
pub(crate) fn silu_mul<B: Backend, const D: usize>(
    gate: &Tensor<B, D>,
    up: &Tensor<B, D>,
) -> Option<Tensor<B, D>> {
    if gate.dims() != up.dims() {
        return None;
    }
    let (g, u) = (flex_tensor(gate)?, flex_tensor(up)?);
    let n = gate.shape().num_elements();
    let (g, u) = (contiguous(&g, n)?, contiguous(&u, n)?);
    let mut out = vec![0f32; g.len()];
    if g.len() <= CHUNK {
        // a decoding step: not worth a task
        silu_mul_widest(g, u, &mut out);
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| silu_mul_widest(g, u, o));
    }
    Some(Tensor::from_data(
        TensorData::new(out, gate.shape()),
        &gate.device(),
    ))
}

/// The `n` elements of a contiguous tensor.
fn contiguous(t: &FlexTensor, n: usize) -> Option<&[f32]> {
    if !t.is_contiguous() {
        return None;
    }
    let start = t.layout().start_offset();
    let data: &[f32] = t.storage();
    data.get(start..start + n)
}

widest_simd! {
    /// [`silu_mul_slices`] for the widest vector unit.
    fn silu_mul_widest(g: &[f32], u: &[f32], out: &mut [f32]) => silu_mul_slices
}

/// `out = g · σ(g) · u`, with `σ(g) = 1 / (1 + e⁻ᵍ)` computed from `e = exp(−|g|)` so that the
/// exponential never overflows.
#[inline(always)]
fn silu_mul_slices(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        let e = exp(-g.abs());
        let numerator = if g >= 0.0 { 1.0 } else { e };
        *o = g * (numerator / (1.0 + e)) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::activation::silu;

    #[test]
    fn equals_burns_silu_times_up() {
        let dev = Default::default();
        let n = 3 * CHUNK + 17;
        let ramp: Vec<f32> = (0..n)
            .map(|i| (i as f32 / n as f32 - 0.5) * 200.0)
            .collect();
        let gate = Tensor::<Flex, 2>::from_data(TensorData::new(ramp, [1, n]), &dev);
        let up = gate.clone().cos();
        let got: Vec<f32> = silu_mul(&gate, &up)
            .expect("flex, contiguous")
            .into_data()
            .to_vec()
            .expect("f32");
        let want: Vec<f32> = (silu(gate) * up).into_data().to_vec().expect("f32");
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn declines_views_it_cannot_read_in_place() {
        let dev = Default::default();
        let x = Tensor::<Flex, 2>::ones([4, 6], &dev);
        assert!(silu_mul(&x.clone().swap_dims(0, 1), &x.clone().swap_dims(0, 1)).is_none());
        assert!(silu_mul(&x, &Tensor::<Flex, 2>::ones([6, 4], &dev)).is_none());
    }
}

/// Row softmax of `[1, h_kv, g, n]` logits averaged over `g`, on the flex backend: `[1, h_kv, n]`;
/// `None` on other backends, element types or layouts (contiguous only).
pub(crate) fn grouped_softmax_mean<B: Backend>(logits: &Tensor<B, 4>) -> Option<Tensor<B, 3>> {
    let [b, h_kv, g, n] = logits.dims();
    if b != 1 || g == 0 || n == 0 {
        return None;
    }
    let flex = flex_tensor(logits)?;
    let x = contiguous(&flex, h_kv * g * n)?;
    let mut out = vec![0f32; h_kv * n];
    out.par_chunks_mut(n)
        .zip(x.par_chunks(g * n))
        .for_each(|(mean, rows)| {
            let mut scratch = vec![0f32; n];
            for row in rows.chunks_exact(n) {
                scratch.copy_from_slice(row);
                add_group_softmax(&mut scratch, 1.0 / g as f32, mean);
            }
        });
    Some(Tensor::from_data(
        TensorData::new(out, [1, h_kv, n]),
        &logits.device(),
    ))
}

widest_simd! {
    /// [`add_softmax`] for the widest vector unit.
    fn add_group_softmax(x: &mut [f32], weight: f32, mean: &mut [f32]) => add_softmax
}
