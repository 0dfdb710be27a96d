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
