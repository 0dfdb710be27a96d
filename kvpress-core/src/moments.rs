//! Statistics over the rows of per-head matrices: the mean and second moment of queries, and
//! quadratic forms of keys (the statistics of ExpectedAttention and its relatives).

use burn::tensor::{Tensor, backend::Backend};

use crate::RotaryEmbedding;

/// Per head, the mean `μ` of the rows of `x` and their covariance `Σᵢ xᵢ·xᵢᵀ / T − μ·μᵀ`.
///
/// # Shapes
/// - `x`: `[1, h, T, d]` (any layout with contiguous rows on the flex backend)
/// - returns `(mean [1, h, 1, d], covariance [1, h, d, d])`
pub fn row_moments<B: Backend>(x: &Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
    #[cfg(feature = "flex")]
    if let Some(moments) = crate::cpu::moments::row_moments(x) {
        return moments;
    }
    row_moments_by_burn(x)
}

/// [`row_moments`] in burn's ops (matmuls read a strided view as it is).
fn row_moments_by_burn<B: Backend>(x: &Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let rows = x.dims()[2];
    let ones = Tensor::<B, 4>::ones([1, 1, 1, rows], &x.device());
    let mean = ones.matmul(x.clone()).div_scalar(rows as f32);
    let second = x
        .clone()
        .swap_dims(2, 3)
        .matmul(x.clone())
        .div_scalar(rows as f32);
    let covariance = second - mean.clone().swap_dims(2, 3).matmul(mean.clone());
    (mean, covariance)
}

/// `xᵢᵀ·Cⱼ·xᵢ + lⱼ·xᵢ` for every row `xᵢ` of every head's `keys` and every form (`Cⱼ`,
/// `lⱼ`) of that head: the logits of a Gaussian's moment-generating function.
///
/// # Shapes
/// - `keys`: `[1, h, n, d]` (any layout with contiguous rows on the flex backend)
/// - `forms`: `[1, h, g, d, d]`, `linear`: `[1, h, g, d]`
/// - returns `[1, h, g, n]`
pub fn quadratic_forms<B: Backend>(
    keys: &Tensor<B, 4>,
    forms: &Tensor<B, 5>,
    linear: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    if let Some(out) = crate::cpu::moments::quadratic_forms(keys, forms, linear) {
        return out;
    }
    quadratic_forms_by_burn(keys, forms, linear)
}

/// [`quadratic_forms`] in burn's ops (the path of every backend without a kernel of ours).
fn quadratic_forms_by_burn<B: Backend>(
    keys: &Tensor<B, 4>,
    forms: &Tensor<B, 5>,
    linear: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [_, h, g, d, _] = forms.dims();
    let per_form: Vec<Tensor<B, 4>> = (0..g)
        .map(|j| {
            let form = forms.clone().narrow(2, j, 1).reshape([1, h, d, d]);
            let line = linear.clone().narrow(2, j, 1); // [1, h, 1, d]
            // xᵀ(Cx + l)
            ((keys.clone().matmul(form.swap_dims(2, 3)) + line) * keys.clone()).sum_dim(3)
        })
        .collect();
    Tensor::cat(per_form, 3).swap_dims(2, 3) // [1, h, n, g] → [1, h, g, n]
}

/// The logits of keys under Gaussian queries rotated to future positions: for every key `kᵢ`
/// of a KV head and every one of the `g` query heads of its group (mean `μⱼ`, covariance
/// `Σⱼ`), `zᵢⱼ = mean_scale·(R̄μⱼ)·kᵢ + cov_scale·kᵢᵀ(R̄ΣⱼR̄ᵀ)kᵢ` (the second term left out
/// without `cov`), with `R̄` the rotation averaged over `positions`
/// ([`RotaryEmbedding::averaged_rotation`]).
///
/// On the flex backend `R̄`'s two entries per row are used as such and the forms stay on the
/// host for [`quadratic_forms`]' kernel; elsewhere matmuls.
///
/// # Shapes
/// - `keys`: `[1, h_kv, n, d]`, `mean`: `[1, h_kv·g, 1, d]`, `cov`: `[1, h_kv·g, d, d]`
/// - returns `[1, h_kv, g, n]`
pub fn gaussian_logits<B: Backend>(
    rope: &RotaryEmbedding,
    positions: &[usize],
    keys: &Tensor<B, 4>,
    mean: &Tensor<B, 4>,
    cov: Option<&Tensor<B, 4>>,
    (mean_scale, cov_scale): (f32, f32),
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    {
        let (diagonal, across) = rope.averaged_rotation_pairs(positions);
        let logits = crate::cpu::moments::gaussian_logits(
            keys, mean, cov, &diagonal, &across, mean_scale, cov_scale,
        );
        if let Some(logits) = logits {
            return logits;
        }
    }
    let r = rope.averaged_rotation::<B>(positions, &keys.device());
    gaussian_logits_by_burn(keys, mean, cov, r, (mean_scale, cov_scale))
}

/// [`gaussian_logits`] in burn's ops, for the rotation matrix `r` (`[d, d]`).
fn gaussian_logits_by_burn<B: Backend>(
    keys: &Tensor<B, 4>,
    mean: &Tensor<B, 4>,
    cov: Option<&Tensor<B, 4>>,
    r: Tensor<B, 2>,
    (mean_scale, cov_scale): (f32, f32),
) -> Tensor<B, 4> {
    let [_, h_kv, _, d] = keys.dims();
    let g = mean.dims()[1] / h_kv.max(1);
    let r = r.reshape([1, 1, d, d]);
    let r_t = r.clone().swap_dims(2, 3);
    // (R̄μ)ᵀ = μᵀR̄ᵀ per query head, grouped by KV head
    let linear = mean
        .clone()
        .matmul(r_t.clone())
        .mul_scalar(mean_scale)
        .reshape([1, h_kv, g, d]);
    match cov {
        Some(cov) => {
            let forms = r
                .matmul(cov.clone())
                .matmul(r_t)
                .mul_scalar(cov_scale)
                .reshape([1, h_kv, g, d, d]);
            quadratic_forms(keys, &forms, &linear)
        }
        // [1, h_kv, n, d] · [1, h_kv, d, g] → [1, h_kv, n, g]
        None => keys.clone().matmul(linear.swap_dims(2, 3)).swap_dims(2, 3),
    }
}

/// The L2 norm of every row (over the last dimension).
///
/// # Shapes
/// - `x`: `[1, h, n, d]` (any layout with contiguous rows on the flex backend)
/// - returns `[1, h, n]`
pub fn row_norms<B: Backend>(x: &Tensor<B, 4>) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    if let Some(norms) = crate::cpu::moments::row_norms(x) {
        return norms;
    }
    row_norms_by_burn(x)
}

/// [`row_norms`] in burn's ops.
fn row_norms_by_burn<B: Backend>(x: &Tensor<B, 4>) -> Tensor<B, 3> {
    let [_, h, n, _] = x.dims();
    (x.clone() * x.clone()).sum_dim(3).sqrt().reshape([1, h, n])
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

    /// Head dimensions of the gemm path (8) and of the AVX-512 kernels (64, 128).
    const DIMS: [usize; 3] = [8, 64, 128];

    #[test]
    fn moments_equal_direct_sums_for_strided_views() {
        for d in DIMS {
            moments_equal_direct_sums(d);
        }
    }

    fn moments_equal_direct_sums(d: usize) {
        let dev = Default::default();
        // enough rows for the flex kernel to split each head between two tasks, and for the
        // AVX-512 kernel's blocks of 64 rows to end in a partial one
        let (h, t) = (3, 601);
        // a heads-first view of token-major data, narrowed past its first rows (as the
        // presses hand queries over)
        let x = Tensor::<Flex, 4>::random([1, t + 2, h, d], Distribution::Default, &dev)
            .swap_dims(1, 2)
            .narrow(2, 2, t);
        let data = host(x.clone());
        let (mean, covariance) = row_moments(&x);
        let mut want_mean = vec![0f64; h * d];
        let mut want_covariance = vec![0f64; h * d * d];
        for head in 0..h {
            for r in 0..t {
                let row = &data[(head * t + r) * d..][..d];
                for a in 0..d {
                    want_mean[head * d + a] += row[a] as f64 / t as f64;
                }
            }
            let mean = &want_mean[head * d..][..d];
            for r in 0..t {
                let row = &data[(head * t + r) * d..][..d];
                for a in 0..d {
                    for b in 0..d {
                        want_covariance[(head * d + a) * d + b] +=
                            (row[a] as f64 - mean[a]) * (row[b] as f64 - mean[b]) / t as f64;
                    }
                }
            }
        }
        assert_eq!(mean.dims(), [1, h, 1, d]);
        assert_close(&host(mean), &want_mean, 1e-5);
        assert_close(&host(covariance), &want_covariance, 1e-5);
        let (mean, covariance) = row_moments_by_burn(&x);
        assert_close(&host(mean), &want_mean, 1e-5);
        assert_close(&host(covariance), &want_covariance, 1e-5);
    }

    #[test]
    fn quadratic_forms_equal_direct_sums() {
        for d in DIMS {
            quadratic_forms_equal_direct_sums_at(d);
        }
    }

    fn quadratic_forms_equal_direct_sums_at(d: usize) {
        let dev = Default::default();
        // more rows than one task of the flex kernel takes, a count that leaves single rows
        // after the kernel's groups, narrowed past the first rows
        let (h, n, g) = (2, 1101, 3);
        let keys = Tensor::<Flex, 4>::random([1, n + 3, h, d], Distribution::Default, &dev)
            .swap_dims(1, 2)
            .narrow(2, 3, n);
        let forms = Tensor::<Flex, 5>::random([1, h, g, d, d], Distribution::Default, &dev);
        let linear = Tensor::<Flex, 4>::random([1, h, g, d], Distribution::Default, &dev);
        let (k, c, l) = (
            host(keys.clone()),
            host(forms.clone()),
            host(linear.clone()),
        );
        let mut want = vec![0f64; h * g * n];
        for head in 0..h {
            for i in 0..n {
                let x = &k[(head * n + i) * d..][..d];
                for j in 0..g {
                    let form = &c[((head * g + j) * d) * d..][..d * d];
                    let line = &l[(head * g + j) * d..][..d];
                    let quadratic: f64 = (0..d)
                        .flat_map(|a| (0..d).map(move |b| (a, b)))
                        .map(|(a, b)| x[a] as f64 * form[a * d + b] as f64 * x[b] as f64)
                        .sum();
                    let affine: f64 = (0..d).map(|a| line[a] as f64 * x[a] as f64).sum();
                    want[(head * g + j) * n + i] = quadratic + affine;
                }
            }
        }
        let got = quadratic_forms(&keys, &forms, &linear);
        assert_eq!(got.dims(), [1, h, g, n]);
        assert_close(&host(got), &want, 1e-5);
        let by_burn = quadratic_forms_by_burn(&keys, &forms, &linear);
        assert_eq!(by_burn.dims(), [1, h, g, n]);
        assert_close(&host(by_burn), &want, 1e-5);
    }

    #[test]
    fn gaussian_logits_equal_direct_sums() {
        for d in DIMS {
            for with_cov in [true, false] {
                gaussian_logits_equal_direct_sums_at(d, with_cov);
            }
        }
    }

    /// Both paths against `mean_scale·(R̄μ)·k + cov_scale·kᵀR̄ΣR̄ᵀk` summed in f64 from the
    /// averaged rotation's matrix, for random non-symmetric Σ, 2 KV heads of 3 query heads.
    fn gaussian_logits_equal_direct_sums_at(d: usize, with_cov: bool) {
        let dev = Default::default();
        let (h_kv, g, n, scales) = (2, 3, 700, (0.5f32, 0.25f32));
        let h = h_kv * g;
        let rope = RotaryEmbedding::new(d, 10000.0, &crate::RopeScaling::None).expect("valid");
        let positions: Vec<usize> = (n..n + 40).collect();
        let keys = Tensor::<Flex, 4>::random([1, n + 3, h_kv, d], Distribution::Default, &dev)
            .swap_dims(1, 2)
            .narrow(2, 3, n);
        let mean = Tensor::<Flex, 4>::random([1, h, 1, d], Distribution::Default, &dev);
        let cov = Tensor::<Flex, 4>::random([1, h, d, d], Distribution::Default, &dev);
        let r = rope.averaged_rotation::<Flex>(&positions, &dev);
        let (k, mu, c, rm) = (
            host(keys.clone()),
            host(mean.clone()),
            host(cov.clone()),
            host(r.clone()),
        );
        let mut want = vec![0f64; h * n];
        for head in 0..h {
            let rotated_mean: Vec<f64> = (0..d)
                .map(|i| {
                    (0..d)
                        .map(|a| rm[i * d + a] as f64 * mu[head * d + a] as f64)
                        .sum()
                })
                .collect();
            let c = &c[head * d * d..][..d * d];
            // R̄·(Σ·R̄ᵀ)
            let right: Vec<f64> = (0..d * d)
                .map(|aj| {
                    let (a, j) = (aj / d, aj % d);
                    (0..d)
                        .map(|b| c[a * d + b] as f64 * rm[j * d + b] as f64)
                        .sum()
                })
                .collect();
            let form: Vec<f64> = (0..d * d)
                .map(|ij| {
                    let (i, j) = (ij / d, ij % d);
                    (0..d)
                        .map(|a| rm[i * d + a] as f64 * right[a * d + j])
                        .sum()
                })
                .collect();
            for i in 0..n {
                let x = &k[((head / g) * n + i) * d..][..d];
                let linear: f64 = (0..d).map(|a| rotated_mean[a] * x[a] as f64).sum();
                let quadratic: f64 = (0..d * d)
                    .map(|ab| x[ab / d] as f64 * form[ab] * x[ab % d] as f64)
                    .sum();
                want[head * n + i] = scales.0 as f64 * linear
                    + if with_cov {
                        scales.1 as f64 * quadratic
                    } else {
                        0.0
                    };
            }
        }
        let cov = with_cov.then_some(&cov);
        let got = gaussian_logits(&rope, &positions, &keys, &mean, cov, scales);
        assert_eq!(got.dims(), [1, h_kv, g, n]);
        assert_close(&host(got), &want, 1e-5);
        let by_burn = gaussian_logits_by_burn(&keys, &mean, cov, r, scales);
        assert_close(&host(by_burn), &want, 1e-5);
    }

    #[test]
    fn row_norms_equal_direct_sums() {
        let dev = Default::default();
        let (h, n, d) = (3, 700, 64);
        let x = Tensor::<Flex, 4>::random([1, n, h, d], Distribution::Default, &dev)
            .swap_dims(1, 2)
            .narrow(2, 5, n - 5);
        let data = host(x.clone());
        let want: Vec<f64> = data
            .chunks_exact(d)
            .map(|row| row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt())
            .collect();
        let got = row_norms(&x);
        assert_eq!(got.dims(), [1, h, n - 5]);
        assert_close(&host(got), &want, 1e-6);
        assert_close(&host(row_norms_by_burn(&x)), &want, 1e-6);
    }
}
