//! The product of the models' dense layers, with a decoding-step kernel where a backend gains
//! from it.

use burn::tensor::{Tensor, backend::Backend};

/// `x · w`.
///
/// On the flex backend a single row (a decoding step) goes through a matrix–vector kernel that
/// reads the weight once on all cores, more rows through gemm into an output of ours (burn-flex
/// copies each matmul output once more); other backends run burn's matmul.
///
/// # Shapes
/// - `x`: `[m, k]`, `w`: `[k, n]` (any layout); returns `[m, n]`
pub fn matmul<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    if let Some(out) = crate::cpu::matvec::row_times_matrix(&x, &w)
        .or_else(|| crate::cpu::matvec::matrix_times_matrix(&x, &w))
    {
        return out;
    }
    x.matmul(w)
}
