//! [`crate::moments`] on host memory for the flex backend: the AVX-512 kernels of
//! [`super::symmetric`] or gemm read the per-head matrices through their strides (burn's path
//! forms a broadcast matmul for the mean and `g` products, element-wise products and reductions
//! for the quadratic forms, each a pass over memory).

use burn::tensor::{Tensor, TensorData, backend::Backend};
use rayon::prelude::*;

use super::math::dot;
use super::{flex_tensor, strided, symmetric};

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
            add_rows(x, view.row_stride, count, sum);
            if symmetric::second_moment(x, view.row_stride, count, d, inverse, product) {
                return;
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

/// `xᵢᵀ·Cⱼ·xᵢ + lⱼ·xᵢ` per head, form and row; `None` unless all are flex f32 tensors (keys
/// with contiguous rows).
///
/// # Shapes
/// - `keys`: `[1, h, n, d]`, `forms`: `[1, h, g, d, d]`, `linear`: `[1, h, g, d]`; returns
///   `[1, h, g, n]`
pub(crate) fn quadratic_forms<B: Backend>(
    keys: &Tensor<B, 4>,
    forms: &Tensor<B, 5>,
    linear: &Tensor<B, 4>,
) -> Option<Tensor<B, 4>> {
    let [b, h, n, d] = keys.dims();
    let [fb, fh, g, fd, fd2] = forms.dims();
    if b != 1 || fb != 1 || fh != h || fd != d || fd2 != d || n == 0 || g == 0 {
        return None;
    }
    if linear.dims() != [1, h, g, d] {
        return None;
    }
    let flex = flex_tensor(keys)?;
    let view = strided(&flex)?;
    if !view.covers(h, n, d) {
        return None;
    }
    // a few d × d matrices and vectors: read back once
    flex_tensor(forms)?;
    flex_tensor(linear)?;
    let forms: Vec<f32> = forms.clone().into_data().to_vec().ok()?;
    let linear: Vec<f32> = linear.clone().into_data().to_vec().ok()?;
    let blocks = n.div_ceil(ROWS_PER_TASK);
    let width = g * d;
    // AVX-512: each form's upper triangle (`symmetric::upper_form`); otherwise, per head, the
    // forms side by side (`[d, g·d]`: element (a, j·d + b) is Cⱼ[a][b]) so that one gemm
    // projects a row for every form of the head
    let triangles = symmetric::supported(d);
    let prepared: Vec<f32> = if triangles {
        forms
            .chunks_exact(d * d)
            .flat_map(|c| symmetric::upper_form(c, d))
            .collect()
    } else {
        let mut side_by_side = vec![0f32; h * d * width];
        for head in 0..h {
            for j in 0..g {
                for a in 0..d {
                    let from = &forms[((head * g + j) * d + a) * d..][..d];
                    side_by_side[(head * d + a) * width + j * d..][..d].copy_from_slice(from);
                }
            }
        }
        side_by_side
    };
    // tasks of (head, block of rows): a block's rows stay in the core's cache; rows as [g, rows]
    let parts: Vec<Vec<f32>> = (0..h * blocks)
        .into_par_iter()
        .map(|task| {
            let (head, block) = (task / blocks, task % blocks);
            let first = block * ROWS_PER_TASK;
            let rows = ROWS_PER_TASK.min(n - first);
            let x = view.rows_from(head, first);
            let mut out = vec![0f32; g * rows];
            if triangles {
                for (j, out) in out.chunks_exact_mut(rows).enumerate() {
                    let form = head * g + j;
                    let upper = &prepared[form * d * d..][..d * d];
                    let line = &linear[form * d..][..d];
                    let done =
                        symmetric::quadratic_forms(x, view.row_stride, rows, d, upper, line, out);
                    debug_assert!(done, "supported head dimension, rows inside the view");
                }
                return out;
            }
            // projected rows start as the linear terms: x·C + l, then dotted with x
            let lines = &linear[head * width..][..width];
            let mut projected: Vec<f32> = lines.repeat(rows);
            // SAFETY: `projected` is rows × g·d, row-major, unaliased; x's rows lie inside the
            // view (checked), the head's side-by-side forms are d × g·d row-major.
            unsafe {
                gemm::gemm(
                    rows,
                    width,
                    d,
                    projected.as_mut_ptr(),
                    1,
                    width as isize,
                    true,
                    x.as_ptr(),
                    1,
                    view.row_stride as isize,
                    prepared[head * d * width..].as_ptr(),
                    1,
                    width as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            row_dots(x, view.row_stride, &projected, g, &mut out);
            out
        })
        .collect();
    Some(assemble(&parts, h, g, n, blocks, &keys.device()))
}

/// `[1, h, g, n]` from the tasks' parts: part `head·blocks + block` holds `[g, rows]` of rows
/// `block·ROWS_PER_TASK..`.
fn assemble<B: Backend>(
    parts: &[Vec<f32>],
    h: usize,
    g: usize,
    n: usize,
    blocks: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let mut out = vec![0f32; h * g * n];
    for (task, part) in parts.iter().enumerate() {
        let (head, block) = (task / blocks, task % blocks);
        let rows = part.len() / g;
        for (j, values) in part.chunks_exact(rows).enumerate() {
            out[(head * g + j) * n + block * ROWS_PER_TASK..][..rows].copy_from_slice(values);
        }
    }
    Tensor::from_data(TensorData::new(out, [1, h, g, n]), device)
}

widest_simd! {
    /// `sum += Σᵢ xᵢ` over `rows` rows of `x` (`sum.len()` wide, at `row_stride`).
    fn add_rows(x: &[f32], row_stride: usize, rows: usize, sum: &mut [f32]) => add_rows_body
}

/// The body of [`add_rows`].
#[inline(always)]
fn add_rows_body(x: &[f32], row_stride: usize, rows: usize, sum: &mut [f32]) {
    let d = sum.len();
    for r in 0..rows {
        for (m, v) in sum.iter_mut().zip(&x[r * row_stride..][..d]) {
            *m += v;
        }
    }
}

widest_simd! {
    /// `out[form·rows + i] = xᵢ · projectedᵢ[form·d..]` for the rows of `projected`
    /// (`[rows, forms·d]`) and the rows of `x` at `row_stride`.
    fn row_dots(
        x: &[f32],
        row_stride: usize,
        projected: &[f32],
        forms: usize,
        out: &mut [f32],
    ) => row_dots_body
}

/// The body of [`row_dots`].
#[inline(always)]
fn row_dots_body(x: &[f32], row_stride: usize, projected: &[f32], forms: usize, out: &mut [f32]) {
    let rows = out.len() / forms.max(1);
    let width = projected.len() / rows.max(1);
    let d = width / forms.max(1);
    for (i, p) in projected.chunks_exact(width).enumerate() {
        let x = &x[i * row_stride..][..d];
        for (form, p) in p.chunks_exact(d).enumerate() {
            out[form * rows + i] = dot(x, p);
        }
    }
}

/// The L2 norm of every row of every head; `None` unless `x` is a flex f32 view with
/// contiguous rows.
///
/// # Shapes
/// - `x`: `[1, h, n, d]`; returns `[1, h, n]`
pub(crate) fn row_norms<B: Backend>(x: &Tensor<B, 4>) -> Option<Tensor<B, 3>> {
    let [b, h, n, d] = x.dims();
    if b != 1 || n == 0 {
        return None;
    }
    let flex = flex_tensor(x)?;
    let view = strided(&flex)?;
    if !view.covers(h, n, d) {
        return None;
    }
    let mut out = vec![0f32; h * n];
    out.par_chunks_mut(n).enumerate().for_each(|(head, out)| {
        out.par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(block, out)| {
                norms(
                    view.rows_from(head, block * ROWS_PER_TASK),
                    view.row_stride,
                    d,
                    out,
                );
            });
    });
    Some(Tensor::from_data(
        TensorData::new(out, [1, h, n]),
        &x.device(),
    ))
}

widest_simd! {
    /// `out[i] = ‖xᵢ‖₂` for the rows of `x` (`d` wide, at `row_stride`).
    fn norms(x: &[f32], row_stride: usize, d: usize, out: &mut [f32]) => norms_body
}

/// The body of [`norms`].
#[inline(always)]
fn norms_body(x: &[f32], row_stride: usize, d: usize, out: &mut [f32]) {
    for (i, norm) in out.iter_mut().enumerate() {
        let row = &x[i * row_stride..][..d];
        *norm = dot(row, row).sqrt();
    }
}
