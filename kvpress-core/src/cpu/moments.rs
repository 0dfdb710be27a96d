//! [`crate::moments`] on host memory for the flex backend: gemm reads the per-head matrices
//! through their strides (burn's path forms a broadcast matmul for the mean and `g` products,
//! element-wise products and reductions for the quadratic forms, each a pass over memory).

use burn::tensor::{Tensor, TensorData, backend::Backend};
use rayon::prelude::*;

use super::math::dot;
use super::{flex_tensor, strided};

/// Rows per task of [`quadratic_forms`].
const ROWS_PER_TASK: usize = 512;

/// Rows below which a head is not split between tasks.
const MIN_ROWS_PER_TASK: usize = 256;

/// Mean and second moment of the rows of each head; `None` unless `x` is a flex f32 view
/// with contiguous rows.
///
/// # Shapes
/// - `x`: `[1, h, T, d]`; returns `([1, h, 1, d], [1, h, d, d])`
pub(crate) fn row_moments<B: Backend>(x: &Tensor<B, 4>) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
    let [b, h, rows, d] = x.dims();
    if b != 1 || rows == 0 || d == 0 {
        return None;
    }
    let flex = flex_tensor(x)?;
    let view = strided(&flex)?;
    if !view.covers(h, rows, d) {
        return None;
    }
    let inverse = 1.0 / rows as f32;
    // Tasks of (head, half of the rows) keep both threads busy to the end (9 heads would
    // leave one thread a head behind); the halves' sums are added afterwards.
    let halves = if rows >= 2 * MIN_ROWS_PER_TASK { 2 } else { 1 };
    let per_half = rows.div_ceil(halves);
    let mut sums = vec![0f32; h * halves * d];
    let mut products = vec![0f32; h * halves * d * d];
    sums.par_chunks_mut(d)
        .zip(products.par_chunks_mut(d * d))
        .enumerate()
        .for_each(|(task, (sum, product))| {
            let (head, half) = (task / halves, task % halves);
            let first = half * per_half;
            let count = per_half.min(rows - first);
            let x = view.rows_from(head, first);
            for r in 0..count {
                for (m, v) in sum.iter_mut().zip(&x[r * view.row_stride..][..d]) {
                    *m += v;
                }
            }
            // product = xᵀ·x / T: lhs element (a, t) at t·row_stride + a, rhs (t, b) likewise
            // SAFETY: `product` is d × d, row-major, and aliases nothing; every (t, a) read lies
            // inside the view (checked to cover [h, rows, d]).
            unsafe {
                gemm::gemm(
                    d,
                    d,
                    count,
                    product.as_mut_ptr(),
                    1,
                    d as isize,
                    false,
                    x.as_ptr(),
                    view.row_stride as isize,
                    1,
                    x.as_ptr(),
                    1,
                    view.row_stride as isize,
                    0.0,
                    inverse,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
    let add_halves = |parts: &[f32], width: usize, scale: f32| -> Vec<f32> {
        parts
            .chunks_exact(halves * width)
            .flat_map(|head| {
                (0..width).map(move |i| {
                    (0..halves).map(|half| head[half * width + i]).sum::<f32>() * scale
                })
            })
            .collect()
    };
    let mean = add_halves(&sums, d, inverse);
    let second = add_halves(&products, d * d, 1.0);
    let device = x.device();
    Some((
        Tensor::from_data(TensorData::new(mean, [1, h, 1, d]), &device),
        Tensor::from_data(TensorData::new(second, [1, h, d, d]), &device),
    ))
}

/// `xᵢᵀ·Cⱼ·xᵢ` per head, row and form; `None` unless both are flex f32 tensors (keys with
/// contiguous rows).
///
/// # Shapes
/// - `keys`: `[1, h, n, d]`, `forms`: `[1, h, g, d, d]`; returns `[1, h, n, g]`
pub(crate) fn quadratic_forms<B: Backend>(
    keys: &Tensor<B, 4>,
    forms: &Tensor<B, 5>,
) -> Option<Tensor<B, 4>> {
    let [b, h, n, d] = keys.dims();
    let [fb, fh, g, fd, fd2] = forms.dims();
    if b != 1 || fb != 1 || fh != h || fd != d || fd2 != d || n == 0 || g == 0 {
        return None;
    }
    let flex = flex_tensor(keys)?;
    let view = strided(&flex)?;
    if !view.covers(h, n, d) {
        return None;
    }
    // a few d × d matrices: read back once
    flex_tensor(forms)?;
    let forms: Vec<f32> = forms.clone().into_data().to_vec().ok()?;
    let mut out = vec![0f32; h * n * g];
    // tasks of (head, block of rows): the projection of a block stays in the core's cache
    out.par_chunks_mut(n * g)
        .enumerate()
        .for_each(|(head, out)| {
            out.par_chunks_mut(ROWS_PER_TASK * g)
                .enumerate()
                .for_each(|(block, out)| {
                    let rows = out.len() / g;
                    let x = view.rows_from(head, block * ROWS_PER_TASK);
                    let mut projected = vec![0f32; rows * d];
                    for j in 0..g {
                        let form = &forms[(head * g + j) * d * d..][..d * d];
                        // projected = x · Cⱼ
                        // SAFETY: `projected` is rows × d, row-major, unaliased; x's rows lie
                        // inside the view (checked), `form` is d × d row-major.
                        unsafe {
                            gemm::gemm(
                                rows,
                                d,
                                d,
                                projected.as_mut_ptr(),
                                1,
                                d as isize,
                                false,
                                x.as_ptr(),
                                1,
                                view.row_stride as isize,
                                form.as_ptr(),
                                1,
                                d as isize,
                                0.0,
                                1.0,
                                false,
                                false,
                                false,
                                gemm::Parallelism::None,
                            );
                        }
                        row_dots(x, view.row_stride, &projected, j, g, out);
                    }
                });
        });
    Some(Tensor::from_data(
        TensorData::new(out, [1, h, n, g]),
        &keys.device(),
    ))
}

widest_simd! {
    /// `out[i·forms + form] = xᵢ · projectedᵢ` for the rows of `projected` (`[n, d]`) and the
    /// rows of `x` at `row_stride`.
    fn row_dots(
        x: &[f32],
        row_stride: usize,
        projected: &[f32],
        form: usize,
        forms: usize,
        out: &mut [f32],
    ) => row_dots_body
}

/// The body of [`row_dots`].
#[inline(always)]
fn row_dots_body(
    x: &[f32],
    row_stride: usize,
    projected: &[f32],
    form: usize,
    forms: usize,
    out: &mut [f32],
) {
    let d = projected.len() / (out.len() / forms).max(1);
    for (i, p) in projected.chunks_exact(d).enumerate() {
        out[i * forms + form] = dot(&x[i * row_stride..][..d], p);
    }
}
