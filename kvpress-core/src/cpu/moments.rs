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

/// Mean and covariance of the rows of each head; `None` unless `x` is a flex f32 view with
/// contiguous rows.
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
    let (stride, inverse) = (view.row_stride, 1.0 / rows as f32);
    let mut mean = vec![0f32; h * d];
    let mut second = vec![0f32; h * d * d];
    mean.par_chunks_mut(d)
        .zip(second.par_chunks_mut(d * d))
        .enumerate()
        .for_each(|(head, (sum, product))| {
            let x = view.rows_from(head, 0);
            // a long head in two halves, so that both threads stay busy to the end (9 heads
            // would leave one a head behind)
            if rows >= 2 * MIN_ROWS_PER_TASK {
                let half = rows / 2;
                let (mut other_sum, mut other_product) = (vec![0f32; d], vec![0f32; d * d]);
                rayon::join(
                    || add_moments(x, stride, half, sum, product),
                    || {
                        let rest = view.rows_from(head, half);
                        add_moments(
                            rest,
                            stride,
                            rows - half,
                            &mut other_sum,
                            &mut other_product,
                        )
                    },
                );
                sum.iter_mut().zip(&other_sum).for_each(|(s, o)| *s += o);
                product
                    .iter_mut()
                    .zip(&other_product)
                    .for_each(|(p, o)| *p += o);
            } else {
                add_moments(x, stride, rows, sum, product);
            }
            // mean = Σx/T, covariance = Σx·xᵀ/T − mean·meanᵀ; the lower triangle mirrors the
            // upper one
            sum.iter_mut().for_each(|s| *s *= inverse);
            for a in 0..d {
                for (p, m) in product[a * d + a..(a + 1) * d].iter_mut().zip(&sum[a..]) {
                    *p = *p * inverse - sum[a] * m;
                }
                for b in 0..a {
                    product[a * d + b] = product[b * d + a];
                }
            }
        });
    let device = x.device();
    Some((
        Tensor::from_data(TensorData::new(mean, [1, h, 1, d]), &device),
        Tensor::from_data(TensorData::new(second, [1, h, d, d]), &device),
    ))
}

/// For every key `kᵢ` of every KV head and every one of the `g` query heads of its group
/// (statistics `μⱼ`, `Σⱼ`): `zᵢⱼ = mean_scale·(R·μⱼ)·kᵢ + cov_scale·kᵢᵀ·(R·Σⱼ·Rᵀ)·kᵢ`, with `R`
/// nonzero only on its diagonal (`diagonal[i] = R[i][i]`) and in each row's rotate_half
/// partner column (`across[i] = R[i][i ± d/2]`), as RoPE's rotations are; `None` unless all
/// are flex f32 tensors with contiguous rows.
///
/// # Shapes
/// - `keys`: `[1, h_kv, n, d]`, `mean`: `[1, h_kv·g, 1, d]`, `cov`: `[1, h_kv·g, d, d]`
/// - returns `[1, h_kv, g, n]`
#[allow(clippy::too_many_arguments)]
pub(crate) fn gaussian_logits<B: Backend>(
    keys: &Tensor<B, 4>,
    mean: &Tensor<B, 4>,
    cov: Option<&Tensor<B, 4>>,
    diagonal: &[f32],
    across: &[f32],
    mean_scale: f32,
    cov_scale: f32,
) -> Option<Tensor<B, 4>> {
    let [b, h_kv, n, d] = keys.dims();
    let h = mean.dims()[1];
    let fits = b == 1
        && n > 0
        && h_kv > 0
        && h.is_multiple_of(h_kv)
        && d.is_multiple_of(2)
        && mean.dims() == [1, h, 1, d]
        && cov.is_none_or(|c| c.dims() == [1, h, d, d])
        && diagonal.len() == d
        && across.len() == d;
    if !fits {
        return None;
    }
    let g = h / h_kv;
    let flex = flex_tensor(keys)?;
    let view = strided(&flex)?;
    let mean_flex = flex_tensor(mean)?;
    let mean_view = strided(&mean_flex)?;
    if !view.covers(h_kv, n, d) || !mean_view.covers(h, 1, d) {
        return None;
    }
    let rotated = |x: &[f32], i: usize| diagonal[i] * x[i] + across[i] * x[(i + d / 2) % d];
    // linear terms: mean_scale · R·μ per query head
    let linear: Vec<f32> = (0..h)
        .flat_map(|head| {
            let mu = &mean_view.rows_from(head, 0)[..d];
            (0..d).map(move |i| mean_scale * rotated(mu, i))
        })
        .collect();
    let out = match cov {
        Some(cov) => {
            let cov_flex = flex_tensor(cov)?;
            let cov_view = strided(&cov_flex)?;
            if !cov_view.covers(h, d, d) {
                return None;
            }
            let forms = PreparedForms::build(h_kv, g, d, |head, form| {
                paired_congruence(&cov_view, head, diagonal, across, cov_scale, form)
            });
            forms_of_rows(&view, h_kv, n, g, &forms, &linear)
        }
        None => {
            let mut out = vec![0f32; h * n];
            out.par_chunks_mut(n).enumerate().for_each(|(head, out)| {
                let (x, line) = (view.rows_from(head / g, 0), &linear[head * d..][..d]);
                for (i, z) in out.iter_mut().enumerate() {
                    *z = dot(&x[i * view.row_stride..][..d], line);
                }
            });
            out
        }
    };
    Some(Tensor::from_data(
        TensorData::new(out, [1, h_kv, g, n]),
        &keys.device(),
    ))
}

/// `form = scale · R·C·Rᵀ` for head `head`'s `C` in `cov` (rows of `d`), `R` as in
/// [`gaussian_logits`]: two products per entry instead of `d`.
fn paired_congruence(
    cov: &super::Strided<'_>,
    head: usize,
    diagonal: &[f32],
    across: &[f32],
    scale: f32,
    form: &mut [f32],
) {
    let d = diagonal.len();
    let half = d / 2;
    let (d1, d2) = diagonal.split_at(half);
    let (a1, a2) = across.split_at(half);
    // right = C·Rᵀ: right[a][j] = C[a][j]·R[j][j] + C[a][partner(j)]·R[j][partner(j)]
    let mut right = vec![0f32; d * d];
    for (a, right) in right.chunks_exact_mut(d).enumerate() {
        let (c1, c2) = cov.rows_from(head, a)[..d].split_at(half);
        let (r1, r2) = right.split_at_mut(half);
        for ((((r1, r2), c1), c2), ((d1, d2), (a1, a2))) in r1
            .iter_mut()
            .zip(r2.iter_mut())
            .zip(c1)
            .zip(c2)
            .zip(d1.iter().zip(d2).zip(a1.iter().zip(a2)))
        {
            *r1 = c1 * d1 + c2 * a1;
            *r2 = c2 * d2 + c1 * a2;
        }
    }
    // form = scale · R·right: row i = R[i][i]·right[i] + R[i][partner(i)]·right[partner(i)]
    for (i, form) in form.chunks_exact_mut(d).enumerate() {
        let partner = if i < half { i + half } else { i - half };
        let (own, other) = (&right[i * d..][..d], &right[partner * d..][..d]);
        let (di, ai) = (scale * diagonal[i], scale * across[i]);
        for ((value, a), o) in form.iter_mut().zip(own).zip(other) {
            *value = di * a + ai * o;
        }
    }
}

/// `sum += Σₜ xₜ` and, at least on and above the diagonal, `product += Σₜ xₜ·xₜᵀ` over
/// `rows` rows of `x` at `row_stride` (`sum`: `d`, `product`: `d × d`), by the AVX-512 kernel
/// or gemm.
fn add_moments(x: &[f32], row_stride: usize, rows: usize, sum: &mut [f32], product: &mut [f32]) {
    let d = sum.len();
    if symmetric::add_moments(x, row_stride, rows, d, sum, product) {
        return;
    }
    add_rows(x, row_stride, rows, sum);
    // product += xᵀ·x: lhs element (a, t) at t·row_stride + a, rhs (t, b) likewise
    assert!(product.len() == d * d && super::rows_fit(x, row_stride, rows, d));
    // SAFETY: `product` is d × d, row-major, and aliases nothing; every (t, a) read lies inside
    // `x` (both checked above).
    unsafe {
        gemm::gemm(
            d,
            d,
            rows,
            product.as_mut_ptr(),
            1,
            d as isize,
            true,
            x.as_ptr(),
            row_stride as isize,
            1,
            x.as_ptr(),
            1,
            row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
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
    let out = forms_of_rows(
        &view,
        h,
        n,
        g,
        &PreparedForms::build(h, g, d, |j, form| {
            form.copy_from_slice(&forms[j * d * d..][..d * d])
        }),
        &linear,
    );
    Some(Tensor::from_data(
        TensorData::new(out, [1, h, g, n]),
        &keys.device(),
    ))
}

/// The `h·g` forms `Cⱼ` (`d × d` each) laid out for the kernels of [`forms_of_rows`].
enum PreparedForms {
    /// AVX-512: each form's upper triangle (`symmetric::upper_form`).
    Upper(Vec<f32>),
    /// Otherwise, per head, the forms side by side (`[d, g·d]`: element (a, j·d + b) is
    /// Cⱼ[a][b]) so that one gemm projects a row for every form of the head.
    SideBySide(Vec<f32>),
}

impl PreparedForms {
    /// The `h·g` forms, form `j` written by `form(j, out)` (`d × d`, row-major), by the threads;
    /// each form's upper triangle taken as it is written.
    fn build(h: usize, g: usize, d: usize, form: impl Fn(usize, &mut [f32]) + Sync) -> Self {
        let mut forms = vec![0f32; h * g * d * d];
        if symmetric::supported(d) {
            forms
                .par_chunks_mut(d * d)
                .enumerate()
                .for_each(|(j, upper)| {
                    let mut full = vec![0f32; d * d];
                    form(j, &mut full);
                    symmetric::upper_form(&full, d, upper);
                });
            return Self::Upper(forms);
        }
        forms
            .par_chunks_mut(d * d)
            .enumerate()
            .for_each(|(j, out)| form(j, out));
        let width = g * d;
        let mut side_by_side = vec![0f32; h * d * width];
        for head in 0..h {
            for j in 0..g {
                for a in 0..d {
                    let from = &forms[((head * g + j) * d + a) * d..][..d];
                    side_by_side[(head * d + a) * width + j * d..][..d].copy_from_slice(from);
                }
            }
        }
        Self::SideBySide(side_by_side)
    }
}

/// `xᵢᵀ·Cⱼ·xᵢ + lⱼ·xᵢ` for the `n` rows of every head of `view` and its `g` forms (`h·g`
/// matrices `d × d`, prepared; `linear`: `h·g` vectors of `d`), as `[h, g, n]`.
fn forms_of_rows(
    view: &super::Strided<'_>,
    h: usize,
    n: usize,
    g: usize,
    forms: &PreparedForms,
    linear: &[f32],
) -> Vec<f32> {
    let d = linear.len() / (h * g).max(1);
    let blocks = n.div_ceil(ROWS_PER_TASK);
    let width = g * d;
    // tasks of (head, block of rows): a block's rows stay in the core's cache; rows as [g, rows]
    let parts: Vec<Vec<f32>> = (0..h * blocks)
        .into_par_iter()
        .map(|task| {
            let (head, block) = (task / blocks, task % blocks);
            let first = block * ROWS_PER_TASK;
            let rows = ROWS_PER_TASK.min(n - first);
            let x = view.rows_from(head, first);
            let mut out = vec![0f32; g * rows];
            let side_by_side = match forms {
                PreparedForms::Upper(upper) => {
                    for (j, out) in out.chunks_exact_mut(rows).enumerate() {
                        let form = head * g + j;
                        let upper = &upper[form * d * d..][..d * d];
                        let line = &linear[form * d..][..d];
                        let done = symmetric::quadratic_forms(
                            x,
                            view.row_stride,
                            rows,
                            d,
                            upper,
                            line,
                            out,
                        );
                        debug_assert!(done, "supported head dimension, rows inside the view");
                    }
                    return out;
                }
                PreparedForms::SideBySide(forms) => forms,
            };
            // projected rows start as the linear terms: x·C + l, then dotted with x
            let lines = &linear[head * width..][..width];
            let mut projected: Vec<f32> = lines.repeat(rows);
            // SAFETY: `projected` is rows × g·d, row-major, unaliased; x's rows lie inside the
            // view (checked by the callers), the head's side-by-side forms are d × g·d
            // row-major.
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
                    side_by_side[head * d * width..].as_ptr(),
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
    assemble(&parts, h, g, n, blocks)
}

/// `[h, g, n]` from the tasks' parts: part `head·blocks + block` holds `[g, rows]` of rows
/// `block·ROWS_PER_TASK..`.
fn assemble(parts: &[Vec<f32>], h: usize, g: usize, n: usize, blocks: usize) -> Vec<f32> {
    let mut out = vec![0f32; h * g * n];
    for (task, part) in parts.iter().enumerate() {
        let (head, block) = (task / blocks, task % blocks);
        let rows = part.len() / g;
        for (j, values) in part.chunks_exact(rows).enumerate() {
            out[(head * g + j) * n + block * ROWS_PER_TASK..][..rows].copy_from_slice(values);
        }
    }
    out
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
