//! Element-wise math that vectorises: a branch-free `exp`, a lane-parallel sum, and loops
//! compiled for the widest vector unit of the CPU ([`widest_simd`]).

/// Defines `fn $name(args)` that runs `$body(args)` (an `#[inline(always)]` function) compiled
/// for AVX-512 or AVX2 + FMA when the CPU has them: the baseline x86-64 build only has SSE2,
/// and the loops of these kernels vectorise to the width they are compiled for.
macro_rules! widest_simd {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:path) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn with_avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn with_avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { with_avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { with_avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

/// The sum of `x` over 8 running partial sums (a loop the compiler vectorises, unlike one
/// running sum, whose order it must keep).
#[inline(always)]
pub(crate) fn lane_sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            *lane += value;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// `Σ a[i]·b[i]` over 16 running partial sums (vectorises like [`lane_sum`]); the lengths
/// must match (the shorter one bounds the sum).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let len = a.len().min(b.len());
    let whole = len - len % LANES;
    let mut lanes = [0f32; LANES];
    for (xs, ys) in a[..whole]
        .chunks_exact(LANES)
        .zip(b[..whole].chunks_exact(LANES))
    {
        for ((lane, &x), &y) in lanes.iter_mut().zip(xs).zip(ys) {
            *lane += x * y;
        }
    }
    let tail: f32 = a[whole..len]
        .iter()
        .zip(&b[whole..len])
        .map(|(x, y)| x * y)
        .sum();
    lane_sum(&lanes) + tail
}

/// `mean[i] += weight · softmax(x)[i]` over the entries of `x` (the rest of `mean` untouched);
/// `x` is left holding `exp(x − max x)`.
#[inline(always)]
pub(crate) fn add_softmax(x: &mut [f32], weight: f32, mean: &mut [f32]) {
    let top = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = exp(*v - top);
    }
    let scale = weight / lane_sum(x);
    for (m, &p) in mean.iter_mut().zip(x.iter()) {
        *m += p * scale;
    }
}

/// `eˣ` for `x ≤ 0` within about 2 ulp (Cephes' `expf` reduction and polynomial), written
/// without branches or calls so that loops over it vectorise; `x < −87` gives about `1e-38`
/// instead of a subnormal or 0.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part exact in few bits and the rest.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // The low bits of `shifted` hold n: 2ⁿ = (n + 127) << 23 with integer ops only.
    let two_n = f32::from_bits(
        (shifted.to_bits().wrapping_sub(ROUND.to_bits()))
            .wrapping_add(127)
            .wrapping_shl(23),
    );
    e_r * two_n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_over_the_softmax_range() {
        let mut worst = 0f32;
        let mut x = 0f32;
        while x > -87.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max((got - want).abs() / want);
            x -= 0.000_731;
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn dot_sums_every_product() {
        let x: Vec<f32> = (1..=37).map(|i| i as f32).collect();
        let want: f32 = x.iter().map(|v| v * 2.0).sum();
        assert_eq!(dot(&x, &[2.0; 37]), want);
        assert_eq!(dot(&[], &[]), 0.0);
    }

    #[test]
    fn lane_sum_adds_every_element() {
        let x: Vec<f32> = (1..=19).map(|i| i as f32).collect();
        assert_eq!(lane_sum(&x), 190.0);
        assert_eq!(lane_sum(&[]), 0.0);
    }
}
