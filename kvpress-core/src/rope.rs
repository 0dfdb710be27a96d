//! Rotary position embeddings (RoPE) in the Hugging Face "rotate_half" layout.
//!
//! A head vector `x = [x1; x2]` (two halves of `d/2`) at position `p` becomes
//! `x ⊙ cos(p·θ) + [−x2; x1] ⊙ sin(p·θ)` where `θ = cat(inv_freq, inv_freq)`. The frequencies
//! follow transformers' `_compute_*_rope_parameters` for the `default`, `linear`, `llama3` and
//! `yarn` rope types, computed in `f32` the way torch does so that positions in the thousands
//! rotate identically.

use std::sync::{Arc, Mutex};

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::error::{CoreError, Result};

/// The `rope_scaling` / `rope_parameters` variants of the Llama family.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE (`rope_type: default`).
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// Interpolation factor.
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent interpolation.
    Llama3 {
        /// Interpolation factor for low frequencies.
        factor: f64,
        /// Wavelength threshold (as a fraction of the original context) below which nothing changes.
        low_freq_factor: f64,
        /// Wavelength threshold above which frequencies are fully interpolated.
        high_freq_factor: f64,
        /// Context length the model was trained on before scaling.
        original_max_position_embeddings: f64,
    },
    /// YaRN interpolation with attention scaling.
    Yarn {
        /// Context extension factor.
        factor: f64,
        /// Explicit attention factor (`None`: derived from `factor` / `mscale`).
        attention_factor: Option<f64>,
        /// Fast correction boundary (default 32).
        beta_fast: f64,
        /// Slow correction boundary (default 1).
        beta_slow: f64,
        /// `mscale` of DeepSeek-style configs.
        mscale: Option<f64>,
        /// `mscale_all_dim` of DeepSeek-style configs.
        mscale_all_dim: Option<f64>,
        /// Context length before extension.
        original_max_position_embeddings: f64,
        /// Round the correction range to integers (default true).
        truncate: bool,
    },
}

/// Inverse frequencies and attention scaling of one model; evaluates `cos`/`sin` at any position.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    inv_freq: Vec<f32>,
    attention_scaling: f32,
    head_dim: usize,
    /// The last [`Self::averaged_rotation`] (positions, `d × d` matrix): every layer of a
    /// prefill asks for the same one, and each costs `positions × d/2` sines and cosines.
    last_average: Arc<Mutex<Option<AveragedRotation>>>,
}

/// A remembered averaged rotation: the positions and the `d × d` matrix.
type AveragedRotation = (Vec<usize>, Arc<[f32]>);

impl RotaryEmbedding {
    /// Builds the frequencies for a head dimension `head_dim` (even), base `theta` and a scaling.
    pub fn new(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Result<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(CoreError::Invalid {
                name: "head_dim",
                detail: format!("RoPE needs an even, positive head dimension, got {head_dim}"),
            });
        }
        if theta <= 0.0 || !theta.is_finite() {
            return Err(CoreError::Invalid {
                name: "rope_theta",
                detail: format!("must be positive, got {theta}"),
            });
        }
        let half = head_dim / 2;
        // torch: base ** (arange(0, d, 2).float() / d), in f32; glibc's powf is correctly rounded,
        // so computing in f64 and rounding once gives the same f32.
        let exponent = |i: usize| (2 * i) as f32 / head_dim as f32;
        let pos_freq = |i: usize| (theta.powf(exponent(i) as f64)) as f32;
        let default: Vec<f32> = (0..half).map(|i| 1.0f32 / pos_freq(i)).collect();
        let mut attention_scaling = 1.0f32;
        let inv_freq = match scaling {
            RopeScaling::None => default,
            RopeScaling::Linear { factor } => {
                check_factor(*factor)?;
                default.iter().map(|f| f / *factor as f32).collect()
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_len,
            } => {
                check_factor(*factor)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(CoreError::Invalid {
                        name: "rope_scaling",
                        detail: format!(
                            "llama3 needs high_freq_factor > low_freq_factor, got {high_freq_factor} <= {low_freq_factor}"
                        ),
                    });
                }
                let low_wavelen = old_len / low_freq_factor;
                let high_wavelen = old_len / high_freq_factor;
                default
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f as f64;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / *factor as f32
                        } else {
                            let smooth = ((old_len / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor))
                                as f32;
                            (1.0 - smooth) * f / *factor as f32 + smooth * f
                        }
                    })
                    .collect()
            }
            RopeScaling::Yarn {
                factor,
                attention_factor,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                original_max_position_embeddings: old_len,
                truncate,
            } => {
                check_factor(*factor)?;
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                attention_scaling = match (attention_factor, mscale, mscale_all_dim) {
                    (Some(a), _, _) => *a,
                    (None, Some(m), Some(mad)) if *m != 0.0 && *mad != 0.0 => {
                        get_mscale(*factor, *m) / get_mscale(*factor, *mad)
                    }
                    _ => get_mscale(*factor, 1.0),
                } as f32;
                let dim = head_dim as f64;
                let correction_dim = |rotations: f64| {
                    dim * (old_len / (rotations * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * theta.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0) as f32;
                let mut high = high.min(dim - 1.0) as f32;
                if low == high {
                    high += 0.001;
                }
                (0..half)
                    .map(|i| {
                        let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation_factor = 1.0 - ramp;
                        let pf = pos_freq(i);
                        let extrapolation = 1.0 / pf;
                        let interpolation = 1.0 / (*factor as f32 * pf);
                        interpolation * (1.0 - extrapolation_factor)
                            + extrapolation * extrapolation_factor
                    })
                    .collect()
            }
        };
        Ok(Self {
            inv_freq,
            attention_scaling,
            head_dim,
            last_average: Arc::default(),
        })
    }

    /// Head dimension the tables are built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The `d/2` inverse frequencies.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Scale applied to `cos` and `sin` (1 except for YaRN).
    pub fn attention_scaling(&self) -> f32 {
        self.attention_scaling
    }

    /// `cos` and `sin` at the given absolute positions on the host, each `n × d` row-major (the
    /// halves repeated), computed as torch does (f32 angle, then cos/sin).
    pub fn cos_sin_host(&self, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let d = self.head_dim;
        let half = d / 2;
        let mut cos = vec![0f32; positions.len() * d];
        let mut sin = vec![0f32; positions.len() * d];
        for (row, &p) in positions.iter().enumerate() {
            for (i, &f) in self.inv_freq.iter().enumerate() {
                let angle = (p as f32 * f) as f64;
                let (s, c) = angle.sin_cos();
                let (c, s) = (
                    (c as f32) * self.attention_scaling,
                    (s as f32) * self.attention_scaling,
                );
                let base = row * d;
                cos[base + i] = c;
                cos[base + half + i] = c;
                sin[base + i] = s;
                sin[base + half + i] = s;
            }
        }
        (cos, sin)
    }

    /// `cos` and `sin` at the given absolute positions, each `[n, d]` (the halves repeated).
    pub fn cos_sin<B: Backend>(
        &self,
        positions: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let (cos, sin) = self.cos_sin_host(positions);
        let shape = [positions.len(), self.head_dim];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }

    /// The rotation averaged over `positions`: `R̄ = mean_p (diag(cos_p) + P·diag(sin_p))` with
    /// `P·x = rotate_half(x)`, as a `[d, d]` matrix acting on column vectors (`R̄ x` rotates `x`
    /// "on average" over those positions).
    pub fn averaged_rotation<B: Backend>(
        &self,
        positions: &[usize],
        device: &B::Device,
    ) -> Tensor<B, 2> {
        let d = self.head_dim;
        Tensor::from_data(
            TensorData::new(self.averaged_rotation_shared(positions).to_vec(), [d, d]),
            device,
        )
    }

    /// The [`Self::averaged_rotation`] over `positions` by its nonzero entries: `(diagonal,
    /// across)` with `diagonal[i] = R̄[i][i]` (mean cosines) and `across[i] = R̄[i][i ± d/2]`
    /// (∓ mean sines, the rotate_half partner column).
    pub fn averaged_rotation_pairs(&self, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let d = self.head_dim;
        let r = self.averaged_rotation_shared(positions);
        let diagonal = (0..d).map(|i| r[i * d + i]).collect();
        let across = (0..d).map(|i| r[i * d + (i + d / 2) % d]).collect();
        (diagonal, across)
    }

    /// [`Self::averaged_rotation`] on the host, remembered for the next call.
    fn averaged_rotation_shared(&self, positions: &[usize]) -> Arc<[f32]> {
        let remembered = |last: &Option<AveragedRotation>| {
            last.as_ref()
                .filter(|(at, _)| at.as_slice() == positions)
                .map(|(_, r)| r.clone())
        };
        // a poisoned lock only loses the memo
        let known = self
            .last_average
            .lock()
            .ok()
            .and_then(|last| remembered(&last));
        known.unwrap_or_else(|| {
            let r: Arc<[f32]> = self.averaged_rotation_host(positions).into();
            if let Ok(mut last) = self.last_average.lock() {
                *last = Some((positions.to_vec(), r.clone()));
            }
            r
        })
    }

    /// [`Self::averaged_rotation`] computed on the host, `d × d` row-major.
    fn averaged_rotation_host(&self, positions: &[usize]) -> Vec<f32> {
        let d = self.head_dim;
        let half = d / 2;
        let (cos, sin) = self.cos_sin_host(positions);
        let count = positions.len().max(1) as f32;
        let mean = |table: &[f32], j: usize| table.iter().skip(j).step_by(d).sum::<f32>() / count;
        let mut r = vec![0f32; d * d];
        for i in 0..d {
            r[i * d + i] = mean(&cos, i);
        }
        for i in 0..half {
            // rotate_half: output row i takes −x[i + d/2], output row i + d/2 takes x[i]
            r[i * d + i + half] = -mean(&sin, i + half);
            r[(i + half) * d + i] = mean(&sin, i);
        }
        r
    }

    /// Rotates already-rotated keys `[1, h, n, d]` by a further `deltas[h][i]` positions
    /// (negative: back), so that a key rotated for position `p` becomes the key for `p + Δ`:
    /// `k·cos(Δθ) + rotate_half(k)·sin(Δθ)`. The angle is formed in f32 as torch does; the
    /// attention scaling is not applied again (it is already inside the key).
    pub fn rotate_keys<B: Backend>(
        &self,
        keys: Tensor<B, 4>,
        deltas: &[Vec<i64>],
    ) -> Result<Tensor<B, 4>> {
        let [b, h, n, d] = keys.dims();
        if b != 1 || d != self.head_dim || deltas.len() != h || deltas.iter().any(|r| r.len() != n)
        {
            return Err(CoreError::Shape {
                context: "RotaryEmbedding::rotate_keys",
                detail: format!("keys {:?} with {} delta rows", keys.dims(), deltas.len()),
            });
        }
        let half = d / 2;
        let mut cos = vec![0f32; h * n * d];
        let mut sin = vec![0f32; h * n * d];
        for (row, &delta) in deltas.iter().flatten().enumerate() {
            for (i, &f) in self.inv_freq.iter().enumerate() {
                let (s, c) = ((delta as f32 * f) as f64).sin_cos();
                let base = row * d;
                cos[base + i] = c as f32;
                cos[base + half + i] = c as f32;
                sin[base + i] = s as f32;
                sin[base + half + i] = s as f32;
            }
        }
        let device = keys.device();
        let cos = Tensor::<B, 4>::from_data(TensorData::new(cos, [1, h, n, d]), &device);
        let sin = Tensor::<B, 4>::from_data(TensorData::new(sin, [1, h, n, d]), &device);
        let x1 = keys.clone().narrow(3, 0, half);
        let x2 = keys.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        Ok(keys * cos + rotated * sin)
    }

    /// The `[d, d]` matrix `R` with `x·R = rotate_half(x) = [−x2; x1]` for a row vector `x`.
    pub fn rotate_half_matrix<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2> {
        let d = self.head_dim;
        let half = d / 2;
        let mut m = vec![0f32; d * d];
        for i in 0..half {
            // output column i takes −x[half + i]; output column half + i takes x[i]
            m[(half + i) * d + i] = -1.0;
            m[i * d + half + i] = 1.0;
        }
        Tensor::from_data(TensorData::new(m, [d, d]), device)
    }

    /// `cos`/`sin` laid out for [`Self::apply_flat`] on `heads` heads: each `[1, n, heads·d]`.
    pub fn flat_tables<B: Backend>(
        &self,
        positions: &[usize],
        heads: usize,
        device: &B::Device,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let (cos, sin) = self.cos_sin::<B>(positions, device);
        let n = positions.len();
        let d = self.head_dim;
        let widen = |t: Tensor<B, 2>| {
            let copies = (0..heads).map(|_| t.clone().reshape([n, 1, d])).collect();
            Tensor::cat(copies, 1).reshape([1, n, heads * d])
        };
        (widen(cos), widen(sin))
    }

    /// Rotates the heads of `x` (`[b, n, heads·d]`, the raw projection output) with tables from
    /// [`Self::flat_tables`] and the matrix of [`Self::rotate_half_matrix`]. Only same-shape
    /// element-wise products and one `[·, d] × [d, d]` product, which every backend runs fast.
    pub fn apply_flat<B: Backend>(
        x: Tensor<B, 3>,
        cos: &Tensor<B, 3>,
        sin: &Tensor<B, 3>,
        rotate: &Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let [b, n, width] = x.dims();
        let d = rotate.dims()[0];
        let rotated = x
            .clone()
            .reshape([b * n * width / d, d])
            .matmul(rotate.clone())
            .reshape([b, n, width]);
        let (cos, sin) = if b == 1 {
            (cos.clone(), sin.clone())
        } else {
            (
                cos.clone().expand([b, n, width]),
                sin.clone().expand([b, n, width]),
            )
        };
        x * cos + rotated * sin
    }

    /// Rotates `x` (`[b, h, n, d]`) by `cos`/`sin` (`[n, d]`, from [`Self::cos_sin`]).
    pub fn apply<B: Backend>(
        x: Tensor<B, 4>,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
    ) -> Tensor<B, 4> {
        let [_, _, n, d] = x.dims();
        let half = d / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        let cos = cos.clone().reshape([1, 1, n, d]);
        let sin = sin.clone().reshape([1, 1, n, d]);
        x * cos + rotated * sin
    }
}

fn check_factor(factor: f64) -> Result<()> {
    if factor.is_finite() && factor > 0.0 {
        Ok(())
    } else {
        Err(CoreError::Invalid {
            name: "rope_scaling.factor",
            detail: format!("must be positive, got {factor}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_frequencies_follow_the_formula() {
        let rope = RotaryEmbedding::new(8, 10000.0, &RopeScaling::None).expect("valid");
        let expected = [1.0, 0.1, 0.01, 0.001];
        for (got, want) in rope.inv_freq().iter().zip(expected) {
            assert!((got - want).abs() < 1e-7, "{got} vs {want}");
        }
    }

    #[test]
    fn llama3_keeps_high_and_scales_low_frequencies() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let plain = RotaryEmbedding::new(128, 500000.0, &RopeScaling::None).expect("valid");
        let scaled = RotaryEmbedding::new(128, 500000.0, &scaling).expect("valid");
        // wavelength 2π/f: the first frequency (wavelength 6.28 < 2048) is untouched,
        // the last (wavelength ~2.6M > 8192) is divided by 8.
        assert_eq!(plain.inv_freq()[0], scaled.inv_freq()[0]);
        let last = plain.inv_freq().len() - 1;
        assert!((plain.inv_freq()[last] / 8.0 - scaled.inv_freq()[last]).abs() < 1e-12);
    }

    #[cfg(feature = "flex")]
    #[test]
    fn flat_application_equals_rotate_half() {
        use burn::backend::Flex;
        use burn::tensor::Distribution;
        type B = Flex;
        let dev = Default::default();
        let rope = RotaryEmbedding::new(8, 10000.0, &RopeScaling::None).expect("valid");
        let positions = [3usize, 4, 5, 900];
        let x = Tensor::<B, 4>::random([1, 2, 4, 8], Distribution::Normal(0.0, 1.0), &dev);
        let (cos, sin) = rope.cos_sin::<B>(&positions, &dev);
        let want = RotaryEmbedding::apply(x.clone(), &cos, &sin);
        let flat = x.swap_dims(1, 2).reshape([1, 4, 16]);
        let (fc, fs) = rope.flat_tables::<B>(&positions, 2, &dev);
        let got = RotaryEmbedding::apply_flat(flat, &fc, &fs, &rope.rotate_half_matrix::<B>(&dev))
            .reshape([1, 4, 2, 8])
            .swap_dims(1, 2);
        let diff = (got - want).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }

    #[cfg(feature = "flex")]
    #[test]
    fn averaged_rotation_of_one_position_is_that_rotation() {
        use burn::backend::Flex;
        use burn::tensor::Distribution;
        type B = Flex;
        let dev = Default::default();
        let rope = RotaryEmbedding::new(8, 10000.0, &RopeScaling::None).expect("valid");
        let x = Tensor::<B, 4>::random([1, 1, 1, 8], Distribution::Normal(0.0, 1.0), &dev);
        let (cos, sin) = rope.cos_sin::<B>(&[37], &dev);
        let want = RotaryEmbedding::apply(x.clone(), &cos, &sin).reshape([1, 8]);
        let r = rope.averaged_rotation::<B>(&[37], &dev);
        let got = x.reshape([1, 8]).matmul(r.transpose());
        let diff = (got - want).abs().max().into_scalar();
        assert!(diff < 1e-6, "{diff}");
    }

    /// The pairs are the averaged rotation's only nonzero entries.
    #[cfg(feature = "flex")]
    #[test]
    fn averaged_rotation_pairs_are_its_nonzero_entries() {
        use burn::backend::Flex;
        let d = 16;
        let rope = RotaryEmbedding::new(d, 10000.0, &RopeScaling::None).expect("valid");
        let positions: Vec<usize> = (40..75).collect();
        let r: Vec<f32> = rope
            .averaged_rotation::<Flex>(&positions, &Default::default())
            .into_data()
            .to_vec()
            .expect("f32");
        let (diagonal, across) = rope.averaged_rotation_pairs(&positions);
        for i in 0..d {
            for j in 0..d {
                let want = if j == i {
                    diagonal[i]
                } else if j == (i + d / 2) % d {
                    across[i]
                } else {
                    0.0
                };
                assert_eq!(r[i * d + j], want, "({i}, {j})");
            }
        }
        assert!(diagonal.iter().chain(&across).all(|v| *v != 0.0));
    }

    #[test]
    fn rejects_odd_head_dim() {
        assert!(RotaryEmbedding::new(7, 10000.0, &RopeScaling::None).is_err());
    }

    #[cfg(feature = "flex")]
    #[test]
    fn rotating_keys_by_a_delta_equals_rope_at_the_new_position() {
        use burn::backend::Flex;
        use burn::tensor::Distribution;
        let dev = Default::default();
        for scaling in [
            RopeScaling::None,
            RopeScaling::Yarn {
                factor: 4.0,
                original_max_position_embeddings: 64.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
                attention_factor: None,
                mscale: None,
                mscale_all_dim: None,
                truncate: true,
            },
        ] {
            let rope = RotaryEmbedding::new(16, 10000.0, &scaling).expect("rope");
            let raw =
                Tensor::<Flex, 4>::random([1, 1, 5, 16], Distribution::Normal(0.0, 1.0), &dev);
            let old = [3usize, 9, 10, 40, 41];
            let new = [0usize, 1, 2, 3, 4];
            let (c, s) = rope.cos_sin::<Flex>(&old, &dev);
            let at_old = RotaryEmbedding::apply(raw.clone(), &c, &s);
            let (c, s) = rope.cos_sin::<Flex>(&new, &dev);
            let want = RotaryEmbedding::apply(raw, &c, &s);
            let deltas = vec![
                new.iter()
                    .zip(&old)
                    .map(|(&a, &b)| a as i64 - b as i64)
                    .collect(),
            ];
            let got = rope.rotate_keys(at_old, &deltas).expect("rotate");
            let diff = (got - want).abs().max().into_scalar();
            assert!(diff < 1e-5, "{scaling:?}: {diff}");
        }
    }
}
