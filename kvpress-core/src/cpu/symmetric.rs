//! Second moments and quadratic forms over rows with symmetric `d × d` matrices, on AVX-512
//! for head dimensions 64 and 128 (the [`super::moments`] kernels fall back to gemm
//! elsewhere). Only the blocks on or above the diagonal are computed — 10 of 16 vector blocks
//! at d = 64 — with a few rows' accumulators held in registers; gemm packs its operands and
//! computes both triangles (the quadratic forms of one layer of expected_attention at 1k keys,
//! 3 KV heads × 3 forms: 264 → 134 µs).

use super::{LANES, rows_fit};

/// True when this CPU runs the kernels for head dimension `d`.
pub(super) fn supported(d: usize) -> bool {
    super::avx512_runs(d)
}

/// `sum += Σₜ xₜ` and, on and above the diagonal, `product += Σₜ xₜ·xₜᵀ` (`d × d`, row-major;
/// the entries below it are left as they were or partly added to) over `rows` rows of `x` at
/// `row_stride`; false (and both untouched) unless [`supported`].
pub(super) fn add_moments(
    x: &[f32],
    row_stride: usize,
    rows: usize,
    d: usize,
    sum: &mut [f32],
    product: &mut [f32],
) -> bool {
    if !supported(d)
        || !rows_fit(x, row_stride, rows, d)
        || sum.len() != d
        || product.len() != d * d
    {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX-512F (`supported`); every row read lies inside `x` (`rows_fit`) and
    // every write inside `sum` (d) and `product` (d × d).
    unsafe {
        let (x, sum, product) = (x.as_ptr(), sum.as_mut_ptr(), product.as_mut_ptr());
        if d == 64 {
            avx512::add_moments::<4, 4>(x, row_stride, rows, sum, product);
        } else {
            avx512::add_moments::<8, 2>(x, row_stride, rows, sum, product);
        }
    }
    true
}

/// The upper-triangular matrix `U` with `xᵀ·U·x = xᵀ·C·x` for every `x`: `U[a][b] = C[a][b] +
/// C[b][a]` above the diagonal, `C[a][a]` on it, 0 below (`d × d`, row-major), into `upper`.
pub(super) fn upper_form(c: &[f32], d: usize, upper: &mut [f32]) {
    for a in 0..d {
        upper[a * d..a * d + a].fill(0.0);
        upper[a * d + a] = c[a * d + a];
        for b in a + 1..d {
            upper[a * d + b] = c[a * d + b] + c[b * d + a];
        }
    }
}

/// `out[i] = xᵢᵀ·U·xᵢ + l·xᵢ` for `rows` rows of `x` at `row_stride`, with `U` from
/// [`upper_form`] and `l` (`d`); false (and `out` untouched) unless [`supported`].
pub(super) fn quadratic_forms(
    x: &[f32],
    row_stride: usize,
    rows: usize,
    d: usize,
    upper: &[f32],
    linear: &[f32],
    out: &mut [f32],
) -> bool {
    if !supported(d)
        || !rows_fit(x, row_stride, rows, d)
        || upper.len() < d * d
        || linear.len() < d
        || out.len() < rows
    {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX-512F; every row read lies inside `x`, `upper` holds d × d and
    // `linear` d values, and `out` has a place for every row (all checked above).
    unsafe {
        let (x, upper, linear, out) = (
            x.as_ptr(),
            upper.as_ptr(),
            linear.as_ptr(),
            out.as_mut_ptr(),
        );
        if d == 64 {
            avx512::quadratic_forms::<4, 4>(x, row_stride, rows, upper, linear, out);
        } else {
            avx512::quadratic_forms::<8, 2>(x, row_stride, rows, upper, linear, out);
        }
    }
    true
}

/// The kernels: `C` vectors of 16 lanes make a row (`d = 16·C`), `R` rows (or products' rows)
/// are accumulated at once, in `R × C` registers. Vector blocks before `V0` lie below the
/// diagonal and are skipped.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::LANES;
    use std::arch::x86_64::{
        __m512, _MM_HINT_T0, _mm_prefetch, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps,
        _mm512_reduce_add_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
    };

    /// Adds `Σₜ xₜ·xₜᵀ` to rows `a0..a0 + R` of `product`, vector blocks `V0..C`.
    ///
    /// SAFETY (caller): AVX-512F; `rows` rows of `16·C` values at `row_stride` from `x`;
    /// `product` holds `16·C × 16·C`; `a0 + R ≤ 16·C`.
    #[inline(always)]
    unsafe fn add_outer_products<const C: usize, const R: usize, const V0: usize>(
        x: *const f32,
        row_stride: usize,
        rows: usize,
        a0: usize,
        product: *mut f32,
    ) {
        let d = C * LANES;
        // SAFETY: as the function's contract.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); C]; R];
            for (r, acc) in acc.iter_mut().enumerate() {
                for (v, acc) in acc.iter_mut().enumerate().skip(V0) {
                    *acc = _mm512_loadu_ps(product.add((a0 + r) * d + v * LANES));
                }
            }
            for t in 0..rows {
                let row = x.add(t * row_stride);
                let mut block = [_mm512_setzero_ps(); C];
                for (v, b) in block.iter_mut().enumerate().skip(V0) {
                    *b = _mm512_loadu_ps(row.add(v * LANES));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let s = _mm512_set1_ps(*row.add(a0 + r));
                    for v in V0..C {
                        acc[v] = _mm512_fmadd_ps(s, block[v], acc[v]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (v, acc) in acc.iter().enumerate().skip(V0) {
                    _mm512_storeu_ps(product.add((a0 + r) * d + v * LANES), *acc);
                }
            }
        }
    }

    /// `Σₜ xₜ` added to `sum` and every block on or above the diagonal of `Σₜ xₜ·xₜᵀ` to
    /// `product`; `R` divides 16. Rows go by blocks of [`ROWS_PER_BLOCK`], which stay in L1
    /// while every group of `R` product rows, then the sum, passes over them.
    ///
    /// SAFETY (caller): as [`add_outer_products`] without `a0`; `sum` holds `16·C`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn add_moments<const C: usize, const R: usize>(
        x: *const f32,
        row_stride: usize,
        rows: usize,
        sum: *mut f32,
        product: *mut f32,
    ) {
        // SAFETY: as the function's contract; `a0 + group ≤ 16·C` since every group size (R, 4
        // or 8) divides 16 and a vector block's groups start at its first row, and each
        // block's rows (and the next block's, fetched) lie among the `rows`.
        unsafe {
            let mut total = [_mm512_setzero_ps(); C];
            for (v, total) in total.iter_mut().enumerate() {
                *total = _mm512_loadu_ps(sum.add(v * LANES));
            }
            let d = C * LANES;
            for t0 in (0..rows).step_by(ROWS_PER_BLOCK) {
                let (x, count) = (x.add(t0 * row_stride), ROWS_PER_BLOCK.min(rows - t0));
                let next = rows.saturating_sub(t0 + ROWS_PER_BLOCK).min(ROWS_PER_BLOCK);
                let mut a0 = 0;
                while a0 < d {
                    let v0 = a0 / LANES;
                    let group = group_rows(C, R, v0);
                    // each group of product rows fetches its share of the next block's rows,
                    // which arrive while this block is worked on (the queries come from
                    // memory, not cache)
                    let fetched = a0 * ROWS_PER_BLOCK / d..(a0 + group) * ROWS_PER_BLOCK / d;
                    for t in fetched.start..fetched.end.min(next) {
                        let row = x.add((ROWS_PER_BLOCK + t) * row_stride);
                        for line in 0..C {
                            _mm_prefetch::<_MM_HINT_T0>(row.add(line * LANES) as *const i8);
                        }
                    }
                    let p = product;
                    macro_rules! outer {
                        ($v0:literal) => {
                            match group {
                                g if g == R => {
                                    add_outer_products::<C, R, $v0>(x, row_stride, count, a0, p)
                                }
                                4 => add_outer_products::<C, 4, $v0>(x, row_stride, count, a0, p),
                                _ => add_outer_products::<C, 8, $v0>(x, row_stride, count, a0, p),
                            }
                        };
                    }
                    match v0 {
                        0 => outer!(0),
                        1 => outer!(1),
                        2 => outer!(2),
                        3 => outer!(3),
                        4 => outer!(4),
                        5 => outer!(5),
                        6 => outer!(6),
                        _ => outer!(7),
                    }
                    a0 += group;
                }
                for t in 0..count {
                    let row = x.add(t * row_stride);
                    for (v, total) in total.iter_mut().enumerate() {
                        *total = _mm512_add_ps(*total, _mm512_loadu_ps(row.add(v * LANES)));
                    }
                }
            }
            for (v, total) in total.iter().enumerate() {
                _mm512_storeu_ps(sum.add(v * LANES), *total);
            }
        }
    }

    /// Product rows [`add_moments`] accumulates at once in vector block `v0`: `R`, or more where
    /// `R` rows of the `C − v0` vectors on and above the diagonal would be fewer than the 8
    /// independent sums that keep both FMA units busy (their latency is 4 cycles): 4 or 8 rows,
    /// which divide the block's 16.
    const fn group_rows(c: usize, r: usize, v0: usize) -> usize {
        let vectors = c - v0;
        if r * vectors >= 8 {
            r
        } else if vectors >= 2 {
            4
        } else {
            8
        }
    }

    /// Rows of a block of [`add_moments`].
    const ROWS_PER_BLOCK: usize = 64;

    /// `acc[r] += Σ_a xᵣ[a]·U[a]` over the 16 rows `a` of `U` in vector block `V0` (whose
    /// blocks before `V0` are 0).
    ///
    /// SAFETY (caller): AVX-512F; `R` rows of `16·C` values at `row_stride` from `x`; `upper`
    /// holds `16·C × 16·C`.
    #[inline(always)]
    unsafe fn add_upper_block<const C: usize, const R: usize, const V0: usize>(
        x: *const f32,
        row_stride: usize,
        upper: *const f32,
        acc: &mut [[__m512; C]; R],
    ) {
        if V0 >= C {
            return;
        }
        let d = C * LANES;
        // SAFETY: as the function's contract.
        unsafe {
            for a in V0 * LANES..(V0 + 1) * LANES {
                let u = upper.add(a * d);
                let mut block = [_mm512_setzero_ps(); C];
                for (v, b) in block.iter_mut().enumerate().skip(V0) {
                    *b = _mm512_loadu_ps(u.add(v * LANES));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let s = _mm512_set1_ps(*x.add(r * row_stride + a));
                    for v in V0..C {
                        acc[v] = _mm512_fmadd_ps(s, block[v], acc[v]);
                    }
                }
            }
        }
    }

    /// `out[r] = xᵣ·(l + xᵣᵀ·U)` for `R` rows.
    ///
    /// SAFETY (caller): as [`add_upper_block`]; `linear` holds `16·C`, `out` `R` values.
    #[inline(always)]
    unsafe fn quadratic_rows<const C: usize, const R: usize>(
        x: *const f32,
        row_stride: usize,
        upper: *const f32,
        linear: *const f32,
        out: *mut f32,
    ) {
        // SAFETY: as the function's contract.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); C]; R];
            for acc in acc.iter_mut() {
                for (v, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_loadu_ps(linear.add(v * LANES));
                }
            }
            add_upper_block::<C, R, 0>(x, row_stride, upper, &mut acc);
            add_upper_block::<C, R, 1>(x, row_stride, upper, &mut acc);
            add_upper_block::<C, R, 2>(x, row_stride, upper, &mut acc);
            add_upper_block::<C, R, 3>(x, row_stride, upper, &mut acc);
            add_upper_block::<C, R, 4>(x, row_stride, upper, &mut acc);
            add_upper_block::<C, R, 5>(x, row_stride, upper, &mut acc);
            add_upper_block::<C, R, 6>(x, row_stride, upper, &mut acc);
            add_upper_block::<C, R, 7>(x, row_stride, upper, &mut acc);
            for (r, acc) in acc.iter().enumerate() {
                let row = x.add(r * row_stride);
                let mut sum = _mm512_setzero_ps();
                for (v, acc) in acc.iter().enumerate() {
                    sum = _mm512_fmadd_ps(*acc, _mm512_loadu_ps(row.add(v * LANES)), sum);
                }
                *out.add(r) = _mm512_reduce_add_ps(sum);
            }
        }
    }

    /// [`quadratic_rows`] over `rows` rows, `R` at a time, then one at a time.
    ///
    /// SAFETY (caller): as [`quadratic_rows`] for `rows` rows and `out` of `rows` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn quadratic_forms<const C: usize, const R: usize>(
        x: *const f32,
        row_stride: usize,
        rows: usize,
        upper: *const f32,
        linear: *const f32,
        out: *mut f32,
    ) {
        // SAFETY: as the function's contract; each call reads rows i..i + R (or i) < rows.
        unsafe {
            let mut i = 0;
            while i + R <= rows {
                quadratic_rows::<C, R>(
                    x.add(i * row_stride),
                    row_stride,
                    upper,
                    linear,
                    out.add(i),
                );
                i += R;
            }
            while i < rows {
                quadratic_rows::<C, 1>(
                    x.add(i * row_stride),
                    row_stride,
                    upper,
                    linear,
                    out.add(i),
                );
                i += 1;
            }
        }
    }
}
