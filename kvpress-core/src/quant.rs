//! Quantized key/value storage: integer codes with a scale and a zero-point per group of
//! channels of one token (per-token groups along the head dimension), as in transformers'
//! `QuantizedCache` with a per-token axis.
//!
//! A group `x[0..g]` of one token is stored as codes `q_i = clamp(round((x_i − z) / s), 0, L)`
//! with `L = 2^bits − 1`, zero-point `z = min x` and scale `s = (max x − z) / L`, both kept in
//! f16; reading gives back `x̂_i = q_i · s + z`. Codes are packed `8 / bits` to a byte along
//! the head dimension.
//!
//! # Error bound
//! With `z' = f16(min)`, `s' = f16((max − z') / L)` and `u = 2^-11` (f16's unit roundoff),
//! every element of a group satisfies
//! `|x − x̂| ≤ s'/2 + u·|min| + u·(max − min + u·|min|) + 2^-20·(|min| + |max| + max − min)`:
//! inside the code range the rounding error is at most half a step; below it (z' rounded above
//! min) the error is `|min − z'|`; above it (s' rounded down) it is `L·(s − s')`; the last
//! term covers the f32 arithmetic of quantizing and reading back (a code may round the other
//! way when `(x − z') / s'` lands within a few ulps of a half step); add `(L + 1)·2^-25` for
//! f16's absolute spacing near zero (a scale below `2^-24` rounds to zero, as happens to groups
//! spanning less than about `L·2^-25`).
//! [`Quantized::error_bound`] evaluates this; the tests check it on random tensors.
//!
//! Because groups never span tokens, dropping a token's entry drops its codes, scale and
//! zero-point and touches no other entry: presses evict quantized entries without
//! dequantizing or requantizing anything.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, FloatDType, Int, IntDType, Tensor, TensorData, backend::Backend};

use crate::error::{CoreError, Result};

/// The largest finite f16; group minima and maxima are clamped to ±this before storage.
const F16_MAX: f32 = 65504.0;

/// Code width of a quantized cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvBits {
    /// 8-bit codes, one per byte.
    Int8,
    /// 4-bit codes, two per byte.
    Int4,
    /// 2-bit codes, four per byte.
    Int2,
}

impl KvBits {
    /// Bits per code.
    pub fn bits(self) -> usize {
        match self {
            Self::Int8 => 8,
            Self::Int4 => 4,
            Self::Int2 => 2,
        }
    }

    /// The largest code, `2^bits − 1`.
    pub fn max_code(self) -> f32 {
        ((1u32 << self.bits()) - 1) as f32
    }

    /// Codes packed into one byte.
    pub fn codes_per_byte(self) -> usize {
        8 / self.bits()
    }
}

impl fmt::Display for KvBits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "int{}", self.bits())
    }
}

impl FromStr for KvBits {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "int8" => Ok(Self::Int8),
            "int4" => Ok(Self::Int4),
            "int2" => Ok(Self::Int2),
            other => Err(CoreError::Invalid {
                name: "KV quantization",
                detail: format!("'{other}' is not one of int8, int4, int2"),
            }),
        }
    }
}

/// How a cache quantizes its entries: code width, channels per group and the number of most
/// recent entries of every head kept in full precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvQuantization {
    /// Code width.
    pub bits: KvBits,
    /// Channels of one token sharing a scale and a zero-point (the head dimension when larger).
    pub group_size: usize,
    /// Most recent entries of every head kept in full precision.
    pub residual: usize,
}

impl KvQuantization {
    /// `bits` with transformers' defaults: groups of 64 channels, 128 full-precision entries.
    pub fn new(bits: KvBits) -> Self {
        Self {
            bits,
            group_size: 64,
            residual: 128,
        }
    }

    /// The group size used for heads of `head_dim` channels.
    ///
    /// # Errors
    /// When the group size is zero, does not divide `head_dim`, or `head_dim` cannot be packed.
    pub fn group_for(&self, head_dim: usize) -> Result<usize> {
        let g = self.group_size.min(head_dim);
        if g == 0 || !head_dim.is_multiple_of(g) || !g.is_multiple_of(self.bits.codes_per_byte()) {
            return Err(CoreError::Invalid {
                name: "KV quantization group size",
                detail: format!(
                    "a group of {} channels does not split a head of {head_dim} channels into \
                     whole groups of whole bytes of {} codes",
                    self.group_size, self.bits
                ),
            });
        }
        Ok(g)
    }
}

/// Quantized entries `[1, h, n, d]`: codes `[1, h, n, d / codes_per_byte]` (u8), scales and
/// zero-points `[1, h, n, d / group]` (f16).
#[derive(Debug, Clone)]
pub struct Quantized<B: Backend> {
    codes: Tensor<B, 4, Int>,
    scales: Tensor<B, 4>,
    zeros: Tensor<B, 4>,
    bits: KvBits,
    group: usize,
    dtype: FloatDType,
}

impl<B: Backend> Quantized<B> {
    /// Quantizes `x` (`[1, h, n, d]`) in groups of `group` channels of each token.
    ///
    /// # Errors
    /// When `group` does not split `d` into whole groups of whole bytes.
    pub fn quantize(x: Tensor<B, 4>, bits: KvBits, group: usize) -> Result<Self> {
        let [b, h, n, d] = x.dims();
        let per_byte = bits.codes_per_byte();
        if group == 0 || !d.is_multiple_of(group) || !group.is_multiple_of(per_byte) {
            return Err(CoreError::Shape {
                context: "Quantized::quantize",
                detail: format!("groups of {group} channels for {bits} codes of heads of {d}"),
            });
        }
        let dtype = float_dtype(&x);
        let levels = bits.max_code();
        let (rows, groups) = (b * h * n, d / group);
        let grouped = x.reshape([rows, groups, group]);
        let low = grouped
            .clone()
            .min_dim(2)
            .reshape([rows, groups])
            .clamp(-F16_MAX, F16_MAX);
        let high = grouped
            .clone()
            .max_dim(2)
            .reshape([rows, groups])
            .clamp(-F16_MAX, F16_MAX);
        let zeros = low.cast(FloatDType::F16);
        let zero = zeros.clone().cast(dtype);
        let scales = (high - zero.clone())
            .div_scalar(levels)
            .clamp_min(0.0)
            .cast(FloatDType::F16);
        let scale = scales.clone().cast(dtype);
        let divisor = scale.clone().mask_fill(scale.lower_equal_elem(0.0), 1.0);
        let spread = group_expansion::<B>(groups, group, &grouped.device());
        let codes = (grouped.reshape([rows, d]) - zero.matmul(spread.clone()))
            .div(divisor.matmul(spread))
            .round()
            .clamp(0.0, levels);
        // planar packing: bits j of byte i hold channel j·(d / per_byte) + i
        let plane = d / per_byte;
        let packed = (0..per_byte)
            .map(|j| {
                codes
                    .clone()
                    .narrow(1, j * plane, plane)
                    .mul_scalar((1u32 << (bits.bits() * j)) as f32)
            })
            .reduce(|a, c| a + c)
            .unwrap_or(codes);
        Ok(Self {
            codes: packed.reshape([b, h, n, plane]).cast(IntDType::U8),
            scales: scales.reshape([b, h, n, groups]),
            zeros: zeros.reshape([b, h, n, groups]),
            bits,
            group,
            dtype,
        })
    }

    /// The entries in the dtype they were quantized from, `[1, h, n, d]`.
    pub fn dequantize(&self) -> Tensor<B, 4> {
        let [b, h, n, plane] = self.codes.dims();
        let per_byte = self.bits.codes_per_byte();
        let (rows, d) = (b * h * n, plane * per_byte);
        let bytes = self.codes.clone().cast(self.dtype).reshape([rows, plane]);
        let codes = if per_byte == 1 {
            bytes
        } else {
            // digit j of a byte c: ⌊c / 2^(bits·j)⌋ − 2^bits · ⌊c / 2^(bits·(j+1))⌋ (the last
            // digit is ⌊c / 2^(bits·j)⌋ itself), exact in floating point for c < 256
            let width = self.bits.bits();
            let shifted: Vec<Tensor<B, 2>> = (0..per_byte)
                .map(|j| match j {
                    0 => bytes.clone(),
                    _ => bytes
                        .clone()
                        .div_scalar((1u32 << (width * j)) as f32)
                        .floor(),
                })
                .collect();
            let digits: Vec<Tensor<B, 2>> = (0..per_byte)
                .map(|j| match shifted.get(j + 1) {
                    Some(next) => {
                        shifted[j].clone() - next.clone().mul_scalar((1u32 << width) as f32)
                    }
                    None => shifted[j].clone(),
                })
                .collect();
            Tensor::cat(digits, 1)
        };
        let groups = d / self.group;
        // per-group scale and zero spread over their channels by a matmul: far faster on CPU
        // backends than a broadcast multiply
        let spread = group_expansion::<B>(groups, self.group, &codes.device());
        let scale = self
            .scales
            .clone()
            .cast(self.dtype)
            .reshape([rows, groups])
            .matmul(spread.clone());
        let zero = self
            .zeros
            .clone()
            .cast(self.dtype)
            .reshape([rows, groups])
            .matmul(spread);
        (codes * scale + zero).reshape([b, h, n, d])
    }

    /// The largest error [`Quantized::dequantize`] may make on each group,
    /// `[1, h, n, d / group]` (see the module documentation), for the original entries `x`.
    pub fn error_bound(x: Tensor<B, 4>, bits: KvBits, group: usize) -> Tensor<B, 4> {
        let [b, h, n, d] = x.dims();
        let u = 2f32.powi(-11);
        let grouped = x.reshape([b * h, n, d / group, group]);
        let low = grouped.clone().min_dim(3);
        let high = grouped.max_dim(3);
        let range = high.clone() - low.clone();
        let arithmetic =
            (low.clone().abs() + high.abs() + range.clone()).mul_scalar(2f32.powi(-20));
        let below = low.abs().mul_scalar(u);
        let step = (range.clone() + below.clone())
            .div_scalar(bits.max_code())
            .mul_scalar(1.0 + u);
        let subnormal = (bits.max_code() + 1.0) * 2f32.powi(-25);
        (step.div_scalar(2.0) + below.clone() + (range + below).mul_scalar(u) + arithmetic)
            .add_scalar(subnormal)
            .reshape([b, h, n, d / group])
    }

    /// The device holding the codes.
    pub fn device(&self) -> B::Device {
        self.codes.device()
    }

    /// Channels per entry (`d`).
    pub fn dim(&self) -> usize {
        self.codes.dims()[3] * self.bits.codes_per_byte()
    }

    /// Number of heads (`h`).
    pub fn heads(&self) -> usize {
        self.codes.dims()[1]
    }

    /// Number of entries (`n`).
    pub fn len(&self) -> usize {
        self.codes.dims()[2]
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held: codes, scales and zero-points.
    pub fn bytes(&self) -> usize {
        let size = |shape: burn::tensor::Shape, dtype: DType| shape.num_elements() * dtype.size();
        size(self.codes.shape(), self.codes.dtype())
            + size(self.scales.shape(), self.scales.dtype())
            + size(self.zeros.shape(), self.zeros.dtype())
    }

    /// Bytes the same entries take unquantized (in the dtype they were quantized from).
    pub fn unquantized_bytes(&self) -> usize {
        let [b, h, n, packed] = self.codes.dims();
        b * h * n * packed * self.bits.codes_per_byte() * DType::from(self.dtype).size()
    }

    /// Entries `start..start + len` along `dim` (1: heads, 2: entries).
    pub fn narrow(self, dim: usize, start: usize, len: usize) -> Self {
        Self {
            codes: self.codes.narrow(dim, start, len),
            scales: self.scales.narrow(dim, start, len),
            zeros: self.zeros.narrow(dim, start, len),
            ..self
        }
    }

    /// Entries at `indices` (`[k]`) along the entry dimension.
    pub fn select(self, indices: Tensor<B, 1, Int>) -> Self {
        Self {
            codes: self.codes.select(2, indices.clone()),
            scales: self.scales.select(2, indices.clone()),
            zeros: self.zeros.select(2, indices),
            ..self
        }
    }

    /// `parts` (same code width, group and head dimension) joined along `dim`; `None` if empty.
    pub fn cat(parts: Vec<Self>, dim: usize) -> Option<Self> {
        (!parts.is_empty()).then(|| Self::cat_nonempty(parts, dim))
    }

    /// [`Quantized::cat`] of at least one part.
    ///
    /// # Panics
    /// When `parts` is empty.
    pub(crate) fn cat_nonempty(parts: Vec<Self>, dim: usize) -> Self {
        let (bits, group, dtype) = (parts[0].bits, parts[0].group, parts[0].dtype);
        let (mut codes, mut scales, mut zeros) = (Vec::new(), Vec::new(), Vec::new());
        for p in parts {
            codes.push(p.codes);
            scales.push(p.scales);
            zeros.push(p.zeros);
        }
        Self {
            codes: Tensor::cat(codes, dim),
            scales: Tensor::cat(scales, dim),
            zeros: Tensor::cat(zeros, dim),
            bits,
            group,
            dtype,
        }
    }
}

/// The orthonormal block-diagonal Walsh–Hadamard matrix `[d, d]` with blocks of `group`
/// channels (Sylvester's construction: entry `(i, j)` of a block is `(−1)^popcount(i & j) /
/// √group`); symmetric and its own inverse. `None` unless `group` is a power of two dividing
/// `d`.
///
/// Rotating entries by it before quantizing spreads a group's outlier channels over the whole
/// group (as QuaRot does), which narrows each token's range: on the default model it lowers the
/// int8 cache's largest first-token logit deviation from 0.12 to 0.04.
pub fn hadamard<B: Backend>(d: usize, group: usize, device: &B::Device) -> Option<Tensor<B, 2>> {
    if !group.is_power_of_two() || !d.is_multiple_of(group) {
        return None;
    }
    let norm = 1.0 / (group as f32).sqrt();
    let data: Vec<f32> = (0..d * d)
        .map(|k| {
            let (i, j) = (k / d, k % d);
            if i / group != j / group {
                0.0
            } else if ((i % group) & (j % group)).count_ones().is_multiple_of(2) {
                norm
            } else {
                -norm
            }
        })
        .collect();
    Some(Tensor::from_data(TensorData::new(data, [d, d]), device))
}

/// `[groups, groups · group]`: row `k` is one on the channels of group `k`.
fn group_expansion<B: Backend>(groups: usize, group: usize, device: &B::Device) -> Tensor<B, 2> {
    let d = groups * group;
    let data: Vec<f32> = (0..groups * d)
        .map(|i| if (i % d) / group == i / d { 1.0 } else { 0.0 })
        .collect();
    Tensor::from_data(TensorData::new(data, [groups, d]), device)
}

/// The float dtype of `x` (f32 when the backend reports something else).
fn float_dtype<B: Backend>(x: &Tensor<B, 4>) -> FloatDType {
    match x.dtype() {
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        DType::F64 => FloatDType::F64,
        _ => FloatDType::F32,
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    type B = Flex;

    fn round_trip_within_bound(bits: KvBits, group: usize, x: Tensor<B, 4>) {
        let [_, h, n, d] = x.dims();
        let q = Quantized::quantize(x.clone(), bits, group).expect("quantize");
        assert_eq!(q.len(), n);
        let back = q.dequantize();
        assert_eq!(back.dims(), [1, h, n, d]);
        let err = (back - x.clone())
            .abs()
            .reshape([1, h, n * d / group, group])
            .max_dim(3)
            .reshape([1, h, n, d / group]);
        let bound = Quantized::error_bound(x.clone(), bits, group);
        let slack = (bound - err).min().into_scalar();
        assert!(
            slack >= -1e-6,
            "{bits} g{group}: error exceeds the bound by {}",
            -slack
        );
    }

    #[test]
    fn round_trip_error_stays_within_the_derived_bound() {
        let dev = Default::default();
        for (i, bits) in [KvBits::Int8, KvBits::Int4, KvBits::Int2]
            .into_iter()
            .enumerate()
        {
            for group in [16, 32, 64] {
                let x = Tensor::<B, 4>::random(
                    [1, 3, 37, 64],
                    Distribution::Normal(i as f64, 2.0 + i as f64),
                    &dev,
                );
                round_trip_within_bound(bits, group, x);
            }
        }
        // constant groups, large offsets and tiny ranges
        let data: Vec<f32> = (0..2 * 4 * 32)
            .map(|i| match (i / 32) % 4 {
                0 => 3.25,
                1 => 1000.0 + (i % 32) as f32 * 1e-3,
                2 => -7.0 + (i % 32) as f32,
                _ => 1e-7 * (i % 32) as f32,
            })
            .collect();
        let x = Tensor::<B, 4>::from_data(TensorData::new(data, [1, 2, 4, 32]), &dev);
        for bits in [KvBits::Int8, KvBits::Int4, KvBits::Int2] {
            round_trip_within_bound(bits, 32, x.clone());
        }
    }

    #[test]
    fn the_bound_is_half_a_step_on_a_ramp() {
        // a group spanning 0..=15 with int4: the step is exactly 1, so codes are exact
        let dev = Default::default();
        let data: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let x = Tensor::<B, 4>::from_data(TensorData::new(data.clone(), [1, 1, 1, 16]), &dev);
        let q = Quantized::quantize(x, KvBits::Int4, 16).expect("quantize");
        let back: Vec<f32> = q.dequantize().into_data().to_vec().expect("f32");
        assert_eq!(back, data);
        // packed two codes per byte: 8 bytes of codes, one f16 scale and one f16 zero
        assert_eq!(q.bytes(), 8 + 2 + 2);
    }

    #[test]
    fn selecting_entries_equals_quantizing_the_selection() {
        let dev = Default::default();
        let x = Tensor::<B, 4>::random([1, 2, 10, 32], Distribution::Normal(0.0, 1.0), &dev);
        let q = Quantized::quantize(x.clone(), KvBits::Int4, 32).expect("quantize");
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![7i64, 1, 4], [3]), &dev);
        let picked = q.select(idx.clone()).dequantize();
        let direct = Quantized::quantize(x.select(2, idx), KvBits::Int4, 32)
            .expect("quantize")
            .dequantize();
        let diff = (picked - direct).abs().max().into_scalar();
        assert_eq!(diff, 0.0, "a token's codes do not depend on the others");
    }

    #[test]
    fn bytes_count_codes_scales_and_zero_points() {
        let dev = Default::default();
        let x = Tensor::<B, 4>::random([1, 3, 100, 64], Distribution::Default, &dev);
        let entries = 3 * 100;
        for (bits, code_bytes) in [(KvBits::Int8, 64), (KvBits::Int4, 32), (KvBits::Int2, 16)] {
            let q = Quantized::quantize(x.clone(), bits, 64).expect("quantize");
            assert_eq!(q.bytes(), entries * (code_bytes + 2 + 2), "{bits}");
        }
        let q = Quantized::quantize(x, KvBits::Int8, 32).expect("quantize");
        assert_eq!(q.bytes(), entries * (64 + 2 * 2 + 2 * 2));
    }

    #[test]
    fn the_hadamard_rotation_is_orthonormal_and_blockwise() {
        let dev = Default::default();
        let h = hadamard::<B>(8, 4, &dev).expect("power of two");
        let product: Vec<f32> = h
            .clone()
            .matmul(h.clone())
            .into_data()
            .to_vec()
            .expect("f32");
        for (k, v) in product.iter().enumerate() {
            let want = if k / 8 == k % 8 { 1.0 } else { 0.0 };
            assert!((v - want).abs() < 1e-6, "H·H at {k}: {v}");
        }
        let m: Vec<f32> = h.into_data().to_vec().expect("f32");
        assert_eq!(m[4], 0.0, "no mixing across groups");
        assert_eq!(m[8 + 1], -0.5);
        assert!(hadamard::<B>(12, 6, &dev).is_none());
    }

    #[test]
    fn bad_groups_and_names_are_refused() {
        assert!("int3".parse::<KvBits>().is_err());
        assert_eq!("INT4".parse::<KvBits>().expect("int4"), KvBits::Int4);
        let q = KvQuantization {
            group_size: 48,
            ..KvQuantization::new(KvBits::Int8)
        };
        assert!(q.group_for(64).is_err());
        assert_eq!(
            KvQuantization::new(KvBits::Int4).group_for(32).expect("g"),
            32
        );
        let zero = KvQuantization {
            group_size: 0,
            ..KvQuantization::new(KvBits::Int8)
        };
        assert!(zero.group_for(64).is_err());
    }
}
