//! Statistics over the rows of per-head matrices: the mean and second moment of queries, and
//! quadratic forms of keys (the statistics of ExpectedAttention and its relatives).

use burn::tensor::{Tensor, backend::Backend};

/// Per head, the mean of the rows of `x` and their second moment `Σᵢ xᵢ·xᵢᵀ / T`.
///
/// # Shapes
/// - `x`: `[1, h, T, d]` (any layout with contiguous rows on the flex backend)
/// - returns `(mean [1, h, 1, d], second moment [1, h, d, d])`
pub fn row_moments<B: Backend>(x: &Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
    #[cfg(feature = "flex")]
    if let Some(moments) = crate::cpu::moments::row_moments(x) {
        return moments;
    }
    let rows = x.dims()[2];
    let ones = Tensor::<B, 4>::ones([1, 1, 1, rows], &x.device());
    let mean = ones.matmul(x.clone()).div_scalar(rows as f32);
    let second = x
        .clone()
        .swap_dims(2, 3)
        .matmul(x.clone())
        .div_scalar(rows as f32);
    (mean, second)
}

/// `xᵢᵀ·Cⱼ·xᵢ` for every row `xᵢ` of every head's `keys` and every form `Cⱼ` of that head.
///
/// # Shapes
/// - `keys`: `[1, h, n, d]`, `forms`: `[1, h, g, d, d]`
/// - returns `[1, h, n, g]`
pub fn quadratic_forms<B: Backend>(keys: &Tensor<B, 4>, forms: &Tensor<B, 5>) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    if let Some(out) = crate::cpu::moments::quadratic_forms(keys, forms) {
        return out;
    }
    let [_, h, g, d, _] = forms.dims();
    let per_form: Vec<Tensor<B, 4>> = (0..g)
        .map(|j| {
            let form = forms.clone().narrow(2, j, 1).reshape([1, h, d, d]);
            (keys.clone().matmul(form) * keys.clone()).sum_dim(3) // [1, h, n, 1]
        })
        .collect();
    Tensor::cat(per_form, 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    fn host<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
        t.into_data().to_vec().expect("f32")
    }

    fn assert_close(got: &[f32], want: &[f64], tolerance: f64) {
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(want) {
            assert!(
                (*a as f64 - b).abs() <= tolerance * b.abs().max(1.0),
                "{a} vs {b}"
            );
        }
    }

    #[test]
    fn moments_equal_direct_sums_for_strided_views() {
        let dev = Default::default();
        // enough rows for the flex kernel to split each head between two tasks
        let (h, t, d) = (3, 601, 8);
        // a heads-first view of token-major data, narrowed past its first rows (as the
        // presses hand queries over)
        let x = Tensor::<Flex, 4>::random([1, t + 2, h, d], Distribution::Default, &dev)
            .swap_dims(1, 2)
            .narrow(2, 2, t);
        let data = host(x.clone());
        let (mean, second) = row_moments(&x);
        let mut want_mean = vec![0f64; h * d];
        let mut want_second = vec![0f64; h * d * d];
        for head in 0..h {
            for r in 0..t {
                let row = &data[(head * t + r) * d..][..d];
                for a in 0..d {
                    want_mean[head * d + a] += row[a] as f64 / t as f64;
                    for b in 0..d {
                        want_second[(head * d + a) * d + b] += (row[a] * row[b]) as f64 / t as f64;
                    }
                }
            }
        }
        assert_eq!(mean.dims(), [1, h, 1, d]);
        assert_close(&host(mean), &want_mean, 1e-5);
        assert_close(&host(second), &want_second, 1e-5);
    }

    #[test]
    fn quadratic_forms_equal_direct_sums() {
        let dev = Default::default();
        // more rows than one task of the flex kernel takes
        let (h, n, g, d) = (2, 1100, 3, 8);
        let keys =
            Tensor::<Flex, 4>::random([1, n, h, d], Distribution::Default, &dev).swap_dims(1, 2);
        let forms = Tensor::<Flex, 5>::random([1, h, g, d, d], Distribution::Default, &dev);
        let (k, c) = (host(keys.clone()), host(forms.clone()));
        let got = quadratic_forms(&keys, &forms);
        assert_eq!(got.dims(), [1, h, n, g]);
        let mut want = vec![0f64; h * n * g];
        for head in 0..h {
            for i in 0..n {
                let x = &k[(head * n + i) * d..][..d];
                for j in 0..g {
                    let form = &c[((head * g + j) * d) * d..][..d * d];
                    want[(head * n + i) * g + j] = (0..d)
                        .flat_map(|a| (0..d).map(move |b| (a, b)))
                        .map(|(a, b)| x[a] as f64 * form[a * d + b] as f64 * x[b] as f64)
                        .sum();
                }
            }
        }
        assert_close(&host(got), &want, 1e-5);
    }
}
