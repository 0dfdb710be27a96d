//! Kernels of ours for the flex (CPU) backend, where burn-flex's own are slow: prefill's causal
//! and decoding attention and the presses' window attention ([`attention`], prefill's blocks
//! on AVX-512 by [`flash`]), the gated activation of the MLP ([`activation`]), the dense
//! layers' products ([`matvec`]), the presses' query statistics ([`moments`], on AVX-512 by
//! [`symmetric`]), and in-place writes and row selections of the cache.
//!
//! Each entry point takes burn tensors of any backend and returns `None` unless the backend is
//! [`Flex`] with f32 data in a layout the kernel reads (then the caller runs its generic burn
//! ops). The kernels read the tensors' memory in place and vectorise with the widest unit the
//! CPU has (`math::widest_simd`); [`flash`] and [`symmetric`] are written in AVX-512
//! intrinsics, with gemm as the path of other CPUs.

#[macro_use]
mod math;
pub(crate) mod activation;
pub(crate) mod attention;
mod flash;
pub(crate) mod matvec;
pub(crate) mod moments;
mod symmetric;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive, backend::Backend};
use rayon::prelude::*;

/// The flex tensor behind `t` when `B` is [`Flex`] and `t` holds f32.
fn flex_tensor<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<FlexTensor> {
    if std::any::TypeId::of::<B>() != std::any::TypeId::of::<Flex>() {
        return None;
    }
    let primitive: Box<dyn std::any::Any> = Box::new(t.clone().into_primitive().tensor());
    let tensor = *primitive.downcast::<FlexTensor>().ok()?;
    (tensor.dtype() == DType::F32).then_some(tensor)
}

/// `t`'s flex tensor, taken out of it (no copy), when `B` is [`Flex`]; `t` back otherwise.
fn into_flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<FlexTensor, Tensor<B, D>> {
    if std::any::TypeId::of::<B>() != std::any::TypeId::of::<Flex>() {
        return Err(t);
    }
    let primitive: Box<dyn std::any::Any> = Box::new(t.into_primitive().tensor());
    match primitive.downcast::<FlexTensor>() {
        Ok(flex) => Ok(*flex),
        // B is Flex, whose float primitive is FlexTensor
        Err(_) => unreachable!("the float primitive of Flex is FlexTensor"),
    }
}

/// The inverse of [`into_flex`]; only called once `B` is known to be [`Flex`].
fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
    let primitive: Box<dyn std::any::Any> = Box::new(t);
    match primitive.downcast::<B::FloatTensorPrimitive>() {
        Ok(p) => Tensor::from_primitive(TensorPrimitive::Float(*p)),
        Err(_) => unreachable!("B is Flex, whose float primitive is FlexTensor"),
    }
}

/// `buffer` (`[1, h, capacity, d]`) with `new` (`[1, h, s, d]`) written at rows
/// `at..at + s` of every head, in place; the buffer back, untouched, unless it is a contiguous
/// f32 flex tensor that alone owns its memory and `new` a flex f32 view with contiguous rows.
pub(crate) fn write_rows<B: Backend>(
    buffer: Tensor<B, 4>,
    at: usize,
    new: &Tensor<B, 4>,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let [_, h, capacity, d] = buffer.dims();
    let [_, new_h, s, new_d] = new.dims();
    let Some(source) = flex_tensor(new) else {
        return Err(buffer);
    };
    let source = match strided(&source) {
        Some(view) if new_h == h && new_d == d && at + s <= capacity && view.covers(h, s, d) => {
            view
        }
        _ => return Err(buffer),
    };
    let mut flex = into_flex(buffer)?;
    let whole = flex.is_contiguous()
        && flex.layout().start_offset() == 0
        && flex.dtype() == DType::F32
        && flex.layout().num_elements() == h * capacity * d;
    let written = match flex.try_storage_mut::<f32>() {
        Some(target) if whole && target.len() >= h * capacity * d => {
            for head in 0..h {
                let rows = &mut target[(head * capacity + at) * d..][..s * d];
                for (r, row) in rows.chunks_exact_mut(d).enumerate() {
                    row.copy_from_slice(&source.rows_from(head, r)[..d]);
                }
            }
            true
        }
        _ => false,
    };
    if written {
        Ok(from_flex(flex))
    } else {
        Err(from_flex(flex))
    }
}

/// The rows `indices` of every head of `t` (`[1, h, n, d]`, a flex f32 view with contiguous
/// rows), copied whole into `[1, h, indices.len(), d]`; `None` otherwise or when an index is
/// out of range.
pub(crate) fn select_rows<B: Backend>(t: &Tensor<B, 4>, indices: &[usize]) -> Option<Tensor<B, 4>> {
    select_rows_per_head(t, &vec![indices.to_vec(); t.dims()[1]])
}

/// Row `indices[h][i]` of head `h` of `t` (`[1, h, n, d]`, a flex f32 view with contiguous
/// rows) at row `i` of `[1, h, k, d]`, every list `k` long; `None` otherwise or when an index
/// is out of range.
pub(crate) fn select_rows_per_head<B: Backend>(
    t: &Tensor<B, 4>,
    indices: &[Vec<usize>],
) -> Option<Tensor<B, 4>> {
    let [b, h, n, d] = t.dims();
    let k = indices.first()?.len();
    let fits = b == 1
        && indices.len() == h
        && indices
            .iter()
            .all(|idx| idx.len() == k && idx.iter().all(|&i| i < n));
    if !fits {
        return None;
    }
    let flex = flex_tensor(t)?;
    let view = strided(&flex)?;
    if !view.covers(h, n, d) {
        return None;
    }
    // both threads copy (a head's kept rows in two halves); each row of the output is written
    // once, without zeroing it first
    let mut out: Vec<f32> = Vec::with_capacity(h * k * d);
    let half = k.div_ceil(2).max(1);
    out.spare_capacity_mut()[..h * k * d]
        .par_chunks_mut(k * d)
        .zip(indices)
        .enumerate()
        .for_each(|(head, (out, idx))| {
            let rows = view.rows_from(head, 0);
            out.par_chunks_mut(half * d)
                .zip(idx.par_chunks(half))
                .for_each(|(out, idx)| {
                    for (out, &i) in out.chunks_exact_mut(d).zip(idx) {
                        for (o, &v) in out.iter_mut().zip(&rows[i * view.row_stride..][..d]) {
                            o.write(v);
                        }
                    }
                });
        });
    // SAFETY: every one of the h·k·d values was written above (k rows of d per head).
    unsafe { out.set_len(h * k * d) };
    Some(Tensor::from_data(
        burn::tensor::TensorData::new(out, [1, h, k, d]),
        &t.device(),
    ))
}

/// `t` laid out contiguously when it is a flex view whose rows (last dimension) are contiguous
/// but whose other dimensions are permuted or sliced, copied row by row (burn-flex walks such
/// views element by element, in its copies and in every element-wise op on them); `None`
/// otherwise (other backends, already contiguous, other layouts).
pub(crate) fn contiguous<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    let flex = flex_tensor(t)?;
    let layout = flex.layout();
    let (shape, strides) = (layout.shape(), layout.strides());
    if flex.is_contiguous() || D == 0 || strides[D - 1] != 1 || strides.iter().any(|&s| s < 0) {
        return None;
    }
    let row = shape[D - 1];
    let rows: usize = (0..D - 1).map(|i| shape[i]).product();
    let data: &[f32] = flex.storage();
    let mut out = Vec::with_capacity(rows * row);
    let mut index = [0usize; D];
    for _ in 0..rows {
        let start = layout.start_offset()
            + (0..D - 1)
                .map(|i| index[i] * strides[i] as usize)
                .sum::<usize>();
        out.extend_from_slice(data.get(start..start + row)?);
        // next row index, last outer dimension fastest
        for i in (0..D - 1).rev() {
            index[i] += 1;
            if index[i] < shape[i] {
                break;
            }
            index[i] = 0;
        }
    }
    Some(Tensor::from_data(
        burn::tensor::TensorData::new(out, t.shape()),
        &t.device(),
    ))
}

/// True when `rows` rows of `width` values, `stride` apart, lie inside `data`.
fn rows_fit(data: &[f32], stride: usize, rows: usize, width: usize) -> bool {
    rows == 0 || (rows - 1) * stride + width <= data.len()
}

/// f32 lanes of an AVX-512 vector ([`flash`] and [`symmetric`]).
const LANES: usize = 16;

/// True when this CPU runs the AVX-512 kernels ([`flash`], [`symmetric`]) for head dimension
/// `d` (64 or 128).
fn avx512_runs(d: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (d == 64 || d == 128) && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = d;
        false
    }
}

/// The available cores (read once).
fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// A `[heads, rows, dim]` view of f32 memory: element `(h, r, c)` at
/// `h · head_stride + r · row_stride + c` (rows are contiguous, heads and rows may interleave).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Strided<'a> {
    pub data: &'a [f32],
    pub head_stride: usize,
    pub row_stride: usize,
}

impl Strided<'_> {
    /// Rows `first..` of head `h`, as a slice starting at row `first`.
    fn rows_from(&self, h: usize, first: usize) -> &[f32] {
        &self.data[h * self.head_stride + first * self.row_stride..]
    }

    /// True when every element of `[heads, rows, dim]` lies inside `data`.
    fn covers(&self, heads: usize, rows: usize, dim: usize) -> bool {
        heads == 0
            || rows == 0
            || (heads - 1) * self.head_stride + (rows - 1) * self.row_stride + dim
                <= self.data.len()
    }
}

/// A `[1, heads, rows, dim]` flex tensor as a [`Strided`] view, when its rows are contiguous
/// and its strides non-negative.
fn strided(t: &FlexTensor) -> Option<Strided<'_>> {
    let layout = t.layout();
    let strides = layout.strides();
    if strides.len() != 4 || strides[3] != 1 || strides[1] < 0 || strides[2] < 0 {
        return None;
    }
    let data: &[f32] = t.storage();
    Some(Strided {
        data: data.get(layout.start_offset()..)?,
        head_stride: strides[1] as usize,
        row_stride: strides[2] as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn rows_are_written_in_place_into_a_buffer_that_owns_its_memory() {
        let dev = Default::default();
        let buffer = Tensor::<Flex, 4>::zeros([1, 2, 6, 3], &dev);
        let address = flex_tensor(&buffer).map(|t| t.storage::<f32>().as_ptr());
        // a strided source: the heads-first view of token-major memory
        let new =
            Tensor::<Flex, 4>::random([1, 2, 2, 3], Distribution::Default, &dev).swap_dims(1, 2);
        let want = Tensor::<Flex, 4>::zeros([1, 2, 6, 3], &dev)
            .slice_assign([0..1, 0..2, 3..5, 0..3], new.clone());
        let written = write_rows(buffer, 3, &new).expect("a buffer that owns its memory");
        assert_eq!(
            flex_tensor(&written).map(|t| t.storage::<f32>().as_ptr()),
            address,
            "written in place"
        );
        let got: Vec<f32> = written.into_data().to_vec().expect("f32");
        let want: Vec<f32> = want.into_data().to_vec().expect("f32");
        assert_eq!(got, want);
        // a buffer whose memory is shared is handed back untouched
        let shared = Tensor::<Flex, 4>::zeros([1, 2, 6, 3], &dev);
        let other = shared.clone();
        assert!(write_rows(shared, 0, &new).is_err());
        drop(other);
        // rows beyond the capacity: handed back
        let small = Tensor::<Flex, 4>::zeros([1, 2, 2, 3], &dev);
        assert!(write_rows(small, 1, &new).is_err());
    }

    #[test]
    fn selected_rows_equal_burns_select() {
        let dev = Default::default();
        let x = Tensor::<Flex, 4>::random([1, 5, 3, 4], Distribution::Default, &dev)
            .swap_dims(1, 2)
            .narrow(2, 1, 4); // [1, 3, 4, 4], strided
        let indices = [3, 0, 2, 2];
        let ids = Tensor::<Flex, 1, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(vec![3i64, 0, 2, 2], [4]),
            &dev,
        );
        let want: Vec<f32> = x.clone().select(2, ids).into_data().to_vec().expect("f32");
        let got: Vec<f32> = select_rows(&x, &indices)
            .expect("a view with contiguous rows")
            .into_data()
            .to_vec()
            .expect("f32");
        assert_eq!(got, want);
        assert!(select_rows(&x, &[4]).is_none(), "out of range");
    }

    #[test]
    fn contiguous_copies_of_views_hold_the_same_values() {
        let dev = Default::default();
        let x = Tensor::<Flex, 4>::random([1, 7, 3, 5], Distribution::Default, &dev);
        let views = [
            x.clone().swap_dims(1, 2),
            x.clone().narrow(1, 2, 4),
            x.clone().swap_dims(1, 2).narrow(2, 1, 5),
        ];
        for view in views {
            let want: Vec<f32> = view.clone().into_data().to_vec().expect("f32");
            let laid_out = contiguous(&view).expect("a view with contiguous rows");
            assert_eq!(laid_out.dims(), view.dims());
            let got: Vec<f32> = laid_out.into_data().to_vec().expect("f32");
            assert_eq!(got, want);
        }
        assert!(contiguous(&x).is_none(), "already contiguous");
        assert!(
            contiguous(&x.swap_dims(2, 3)).is_none(),
            "rows not contiguous"
        );
    }
}
