//! The dense layers' products on host memory for the flex backend.
//!
//! One row times a matrix (a decoding step): burn-flex's gemm runs its single-row path on one
//! core (about 30 GB/s of weight reads out of the ~41 GB/s two cores reach here); this kernel
//! splits the output columns over rayon's threads (the pool burn-flex's gemm already uses) and
//! streams the weight once. More rows: gemm, into an output buffer of ours.
//!
//! The weight is read through its strides, so both layouts of the models serve without a copy:
//! `[k, n]` with rows contiguous (the dense layers store `Wᵀ`) and the transposed view of a
//! contiguous `[n, k]` (the tied LM head, the embedding matrix).

use burn::tensor::{Tensor, TensorData, backend::Backend};
use rayon::prelude::*;

use burn::backend::flex::FlexTensor;

use super::flex_tensor;
use super::math::dot;

/// Output columns per register block (eight AVX-512 accumulators).
const COLUMN_BLOCK: usize = 128;
/// Output columns per task at least (smaller tasks cost more to schedule than they save).
const MIN_TASK: usize = 256;

/// Products of at least this many multiply-adds spread over rayon's threads (burn-flex's
/// threshold).
const PARALLEL_FROM: usize = 192 * 192 * 192;

/// `x · w` on the flex backend by gemm into a buffer of ours; `None` on other backends,
/// element types or layouts with negative strides.
///
/// burn-flex allocates a matmul's output as bytes of alignment 1 and then copies them into an
/// aligned allocation: every dense layer of a prefill wrote its output twice (at 4k tokens the
/// default model's dense outputs are about 85 MB per layer).
///
/// # Shapes
/// - `x`: `[m, k]`, `w`: `[k, n]` (any non-negative strides); returns `[m, n]`
pub(crate) fn matrix_times_matrix<B: Backend>(
    x: &Tensor<B, 2>,
    w: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    let [m, k] = x.dims();
    let [k_w, n] = w.dims();
    if k != k_w || m == 0 || n == 0 || k == 0 {
        return None;
    }
    let (fx, fw) = (flex_tensor(x)?, flex_tensor(w)?);
    let view = |t: &FlexTensor, rows: usize, cols: usize| -> Option<(*const f32, isize, isize)> {
        let layout = t.layout();
        let (rs, cs) = (layout.strides()[0], layout.strides()[1]);
        let data: &[f32] = t.storage();
        let data = data.get(layout.start_offset()..)?;
        let last =
            (rows - 1) * usize::try_from(rs).ok()? + (cols - 1) * usize::try_from(cs).ok()?;
        (last < data.len()).then_some((data.as_ptr(), rs, cs))
    };
    let (x_ptr, x_rs, x_cs) = view(&fx, m, k)?;
    let (w_ptr, w_rs, w_cs) = view(&fw, k, n)?;
    let mut out = vec![0f32; m * n];
    let parallelism = if m * n * k >= PARALLEL_FROM {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `out` is m × n, row-major, and aliases nothing; every element of x (m × k) and
    // w (k × n) read through its strides lies inside its storage (checked above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x_ptr,
            x_cs,
            x_rs,
            w_ptr,
            w_cs,
            w_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    Some(Tensor::from_data(TensorData::new(out, [m, n]), &x.device()))
}

/// `x · w` for a single row `x` on the flex backend; `None` on other backends, element types,
/// more rows, or layouts the kernel does not read.
///
/// # Shapes
/// - `x`: `[1, k]`, `w`: `[k, n]` (rows contiguous, or the transpose of a contiguous `[n, k]`)
/// - returns `[1, n]`
pub(crate) fn row_times_matrix<B: Backend>(
    x: &Tensor<B, 2>,
    w: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    let [m, k] = x.dims();
    let [k_w, n] = w.dims();
    if m != 1 || k != k_w || k == 0 || n == 0 {
        return None;
    }
    let (fx, fw) = (flex_tensor(x)?, flex_tensor(w)?);
    let x_strides = fx.layout().strides();
    if x_strides[1] != 1 {
        return None;
    }
    let x_data: &[f32] = fx.storage();
    let x_row = x_data.get(fx.layout().start_offset()..)?.get(..k)?;
    let layout = fw.layout();
    let (k_stride, n_stride) = (layout.strides()[0], layout.strides()[1]);
    let w_data: &[f32] = fw.storage();
    let w_data = w_data.get(layout.start_offset()..)?;
    let mut out = vec![0f32; n];
    let tasks = super::threads().min(n.div_ceil(MIN_TASK)).max(1);
    let per_task = n.div_ceil(tasks).next_multiple_of(COLUMN_BLOCK);
    // (kernel, stride of its rows, elements from one output column to the next, elements read)
    type Kernel = fn(&[f32], &[f32], usize, &mut [f32]);
    let (kernel, stride, column_step, extent): (Kernel, usize, usize, usize) =
        if n_stride == 1 && k_stride >= n as isize {
            // [k, n], rows contiguous
            let k_stride = k_stride as usize;
            (axpy_rows, k_stride, 1, (k - 1) * k_stride + n)
        } else if k_stride == 1 && n_stride >= k as isize {
            // the transpose of [n, k], rows contiguous
            let n_stride = n_stride as usize;
            (dot_rows, n_stride, n_stride, (n - 1) * n_stride + k)
        } else {
            return None;
        };
    if w_data.len() < extent {
        return None;
    }
    out.par_chunks_mut(per_task)
        .enumerate()
        .for_each(|(task, y)| {
            kernel(x_row, &w_data[task * per_task * column_step..], stride, y);
        });
    Some(Tensor::from_data(TensorData::new(out, [1, n]), &x.device()))
}

widest_simd! {
    /// `y[j] = Σᵢ x[i] · w[i · k_stride + j]` for the `y.len()` columns at the start of `w`.
    fn axpy_rows(x: &[f32], w: &[f32], k_stride: usize, y: &mut [f32]) => axpy_rows_body
}

/// The body of [`axpy_rows`]: a block of columns accumulates in registers while the rows
/// stream past.
#[inline(always)]
fn axpy_rows_body(x: &[f32], w: &[f32], k_stride: usize, y: &mut [f32]) {
    for (block, y) in y.chunks_mut(COLUMN_BLOCK).enumerate() {
        let first = block * COLUMN_BLOCK;
        if let Ok(y) = <&mut [f32; COLUMN_BLOCK]>::try_from(&mut *y) {
            let mut acc = [0f32; COLUMN_BLOCK];
            for (i, &xi) in x.iter().enumerate() {
                let row = &w[i * k_stride + first..][..COLUMN_BLOCK];
                for (a, &wij) in acc.iter_mut().zip(row) {
                    *a += xi * wij;
                }
            }
            *y = acc;
        } else {
            // the last, narrower block
            y.fill(0.0);
            for (i, &xi) in x.iter().enumerate() {
                let row = &w[i * k_stride + first..][..y.len()];
                for (a, &wij) in y.iter_mut().zip(row) {
                    *a += xi * wij;
                }
            }
        }
    }
}

widest_simd! {
    /// `y[j] = Σᵢ x[i] · w[j · n_stride + i]` for the `y.len()` rows at the start of `w`.
    fn dot_rows(x: &[f32], w: &[f32], n_stride: usize, y: &mut [f32]) => dot_rows_body
}

/// The body of [`dot_rows`].
#[inline(always)]
fn dot_rows_body(x: &[f32], w: &[f32], n_stride: usize, y: &mut [f32]) {
    for (j, out) in y.iter_mut().enumerate() {
        *out = dot(x, &w[j * n_stride..][..x.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    fn close(got: Tensor<Flex, 2>, want: Tensor<Flex, 2>) {
        let got: Vec<f32> = got.into_data().to_vec().expect("f32");
        let want: Vec<f32> = want.into_data().to_vec().expect("f32");
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn equals_burns_matmul_in_both_weight_layouts() {
        let dev = Default::default();
        // widths around the block and task sizes, a k that is not a multiple of the lanes
        for (k, n) in [(576, 1536), (37, 129), (64, 1000), (5, 3)] {
            let x = Tensor::<Flex, 2>::random([1, k], Distribution::Normal(0.0, 1.0), &dev);
            let w = Tensor::<Flex, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &dev);
            let got = row_times_matrix(&x, &w).expect("[k, n] rows contiguous");
            close(got, x.clone().matmul(w));
            let w_t = Tensor::<Flex, 2>::random([n, k], Distribution::Normal(0.0, 1.0), &dev);
            let view = w_t.transpose();
            let got = row_times_matrix(&x, &view).expect("the transpose of [n, k]");
            close(got, x.matmul(view));
        }
    }

    #[test]
    fn matrix_products_equal_burns_matmul_in_every_layout() {
        let dev = Default::default();
        for (m, k, n) in [(2, 3, 4), (300, 70, 129), (200, 200, 200)] {
            let x = Tensor::<Flex, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev);
            let w = Tensor::<Flex, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &dev);
            let w_t = Tensor::<Flex, 2>::random([n, k], Distribution::Normal(0.0, 1.0), &dev);
            let x_t = Tensor::<Flex, 2>::random([k, m], Distribution::Normal(0.0, 1.0), &dev);
            for (x, w) in [
                (x.clone(), w.clone()),
                (x.clone(), w_t.transpose()),
                (x_t.transpose(), w),
            ] {
                let got = matrix_times_matrix(&x, &w).expect("non-negative strides");
                close(got, x.matmul(w));
            }
        }
    }

    #[test]
    fn declines_several_rows_and_unread_layouts() {
        let dev = Default::default();
        let w = Tensor::<Flex, 2>::ones([8, 6], &dev);
        assert!(row_times_matrix(&Tensor::<Flex, 2>::ones([2, 8], &dev), &w).is_none());
        assert!(row_times_matrix(&Tensor::<Flex, 2>::ones([1, 6], &dev), &w).is_none());
        // a reshaped narrow view: declined, or whatever layout it has, the right product
        let strided = Tensor::<Flex, 3>::ones([8, 6, 2], &dev)
            .narrow(2, 0, 1)
            .reshape([8, 6]);
        if let Some(out) = row_times_matrix(&Tensor::<Flex, 2>::ones([1, 8], &dev), &strided) {
            close(out, Tensor::<Flex, 2>::ones([1, 6], &dev).mul_scalar(8.0));
        }
    }
}
