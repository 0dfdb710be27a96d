//! LeverageScorePress (kvpress `leverage`): keeps geometric outliers of the key cloud — the
//! approximate statistical leverage of the centred pre-RoPE keys after a Gaussian sketch.
//! Paper: Compactor, arXiv 2507.08143.
//!
//! Per KV head: `K⁰` the pre-RoPE keys (the cached keys rotated back by their positions),
//! `X = (K⁰ − mean) Φ` with `Φ ∈ R^{d×m}` Gaussian / √m, `G = XᵀX` (+ jitter until Cholesky
//! succeeds: 1e-2, ×10, five tries), `ℓ_i = x_iᵀ G⁻¹ x_i ≥ 0`, z-scored over the whole layer.
//! kvpress draws `Φ` afresh on every call; here it is seeded by the layer, so runs repeat.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::{to_host, z_scores};
use kvpress_core::{LayerInputs, Scorer};

/// The leverage scorer (default `sketch_dimension = 48`).
#[derive(Debug, Clone, Copy)]
pub struct Leverage {
    /// Columns of the Gaussian sketch.
    pub sketch_dimension: usize,
}

impl Default for Leverage {
    fn default() -> Self {
        Self {
            sketch_dimension: 48,
        }
    }
}

/// `count` standard normal numbers from a seeded generator (Box–Muller over an LCG).
pub fn gaussians(seed: u64, count: usize) -> Vec<f64> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut uniform = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 11) as f64 / (1u64 << 53) as f64).max(f64::MIN_POSITIVE)
    };
    (0..count)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        })
        .collect()
}

/// Lower Cholesky factor of the symmetric `m × m` matrix `a`, or `None` if not positive definite.
pub fn cholesky(a: &[f64], m: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; m * m];
    for i in 0..m {
        for j in 0..=i {
            let dot: f64 = (0..j).map(|k| l[i * m + k] * l[j * m + k]).sum();
            if i == j {
                let d = a[i * m + i] - dot;
                if d <= 0.0 || !d.is_finite() {
                    return None;
                }
                l[i * m + i] = d.sqrt();
            } else {
                l[i * m + j] = (a[i * m + j] - dot) / l[j * m + j];
            }
        }
    }
    Some(l)
}

/// Leverages `x_iᵀ G⁻¹ x_i` of the rows of `x` (`n × m`), with kvpress's jitter schedule.
fn leverages(x: &[f64], n: usize, m: usize) -> Result<Vec<f32>> {
    let mut g = vec![0f64; m * m];
    for row in x.chunks(m) {
        for a in 0..m {
            for b in 0..m {
                g[a * m + b] += row[a] * row[b];
            }
        }
    }
    let mut jitter = 1e-2;
    let mut factor = None;
    for _ in 0..5 {
        let mut a = g.clone();
        for i in 0..m {
            a[i * m + i] += jitter;
        }
        if let Some(l) = cholesky(&a, m) {
            factor = Some(l);
            break;
        }
        jitter = (jitter * 10.0f64).max(1e-8);
    }
    let l = factor.ok_or_else(|| CoreError::Invalid {
        name: "leverage",
        detail: "the sketched key Gram matrix is not positive definite even with jitter".into(),
    })?;
    Ok((0..n)
        .map(|i| inverse_quadratic(&l, m, &x[i * m..(i + 1) * m]).max(0.0) as f32)
        .collect())
}

/// `xᵀ A⁻¹ x` from the Cholesky factor `l` of `A` (`m × m`): `‖L⁻¹ x‖²` by forward
/// substitution.
pub fn inverse_quadratic(l: &[f64], m: usize, x: &[f64]) -> f64 {
    let mut y = vec![0f64; m];
    for a in 0..m {
        let dot: f64 = (0..a).map(|b| l[a * m + b] * y[b]).sum();
        y[a] = (x[a] - dot) / l[a * m + a];
    }
    y.iter().map(|v| v * v).sum()
}

impl Leverage {
    /// Raw leverages, `h_kv` rows of `n`, of the keys rotated back to pre-RoPE.
    pub fn raw<B: Backend>(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
    ) -> Result<Vec<Vec<f32>>> {
        let [_, h_kv, n, d] = keys.dims();
        let m = self.sketch_dimension;
        if m == 0 || inputs.positions.len() != n {
            return Err(CoreError::Invalid {
                name: "leverage",
                detail: format!(
                    "needs a positive sketch_dimension and the prefill's positions ({} for {n})",
                    inputs.positions.len()
                ),
            });
        }
        let back: Vec<i64> = inputs.positions.iter().map(|&p| -(p as i64)).collect();
        let pre = inputs.rope.rotate_keys(keys.clone(), &vec![back; h_kv])?;
        let host = to_host(pre)?;
        let phi = gaussians(inputs.layer as u64, d * m);
        let scale = (m as f64).sqrt();
        host.chunks(n * d)
            .map(|head| {
                let mut mean = vec![0f64; d];
                for row in head.chunks(d) {
                    for (acc, &x) in mean.iter_mut().zip(row) {
                        *acc += x as f64 / n as f64;
                    }
                }
                let mut x = vec![0f64; n * m];
                for (i, row) in head.chunks(d).enumerate() {
                    for c in 0..m {
                        x[i * m + c] = (0..d)
                            .map(|k| (row[k] as f64 - mean[k]) * phi[k * m + c])
                            .sum::<f64>()
                            / scale;
                    }
                }
                leverages(&x, n, m)
            })
            .collect()
    }
}

impl<B: Backend> Scorer<B> for Leverage {
    /// `[1, h_kv, n]` z-scored leverages.
    fn score(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        _values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        let [_, h_kv, n, _] = keys.dims();
        let mut flat: Vec<f32> = self.raw(inputs, keys)?.into_iter().flatten().collect();
        z_scores(&mut flat);
        Ok(Tensor::from_data(
            TensorData::new(flat, [1, h_kv, n]),
            &keys.device(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leverage_of_rows_by_hand() {
        // X = [[1, 0], [0, 2], [1, 2]]: G = [[2, 2], [2, 8]] + 0.01 I
        // ℓ = xᵀ G⁻¹ x with G⁻¹ = [[8.01, −2], [−2, 2.01]] / (2.01·8.01 − 4)
        let x = [1.0, 0.0, 0.0, 2.0, 1.0, 2.0];
        let got = leverages(&x, 3, 2).expect("leverages");
        let det = 2.01 * 8.01 - 4.0;
        let want = [
            8.01 / det,
            4.0 * 2.01 / det,
            (8.01 - 8.0 + 4.0 * 2.01) / det,
        ];
        for (a, b) in got.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
}
