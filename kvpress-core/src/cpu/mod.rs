//! Kernels of ours for the flex (CPU) backend, where burn-flex's own are slow: prefill's causal
//! attention and the presses' window attention ([`attention`]), and the gated activation of the
//! MLP ([`activation`]).
//!
//! Each entry point takes burn tensors of any backend and returns `None` unless the backend is
//! [`Flex`] with f32 data in a layout the kernel reads (then the caller runs its generic burn
//! ops). The kernels read the tensors' memory in place and vectorise with the widest unit the
//! CPU has (`math::widest_simd`).

#[macro_use]
mod math;
pub(crate) mod activation;
pub(crate) mod attention;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, backend::Backend};

/// The flex tensor behind `t` when `B` is [`Flex`] and `t` holds f32.
fn flex_tensor<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<FlexTensor> {
    if std::any::TypeId::of::<B>() != std::any::TypeId::of::<Flex>() {
        return None;
    }
    let primitive: Box<dyn std::any::Any> = Box::new(t.clone().into_primitive().tensor());
    let tensor = *primitive.downcast::<FlexTensor>().ok()?;
    (tensor.dtype() == DType::F32).then_some(tensor)
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
