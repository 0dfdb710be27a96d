//! One head's block of query rows of prefill's causal attention on AVX-512, for head
//! dimensions 64 and 128 ([`super::attention`] runs gemm elsewhere).
//!
//! gemm packs a key tile for every head and block, transposing it one element at a time, and
//! runs these short products (inner dimension 64) at about 110 GFLOP/s on one core of the
//! 2-core machine (whose FMA units peak at 263). Here the block's queries are transposed once
//! (scaled) into `[d, 128]`, so that a key's scores against all 128 rows are 8 vectors:
//! - scores `Sᵀ[j] = Σ_c K[j][c] · Qᵀ[c]` for 3 keys at a time, 24 accumulators in registers;
//! - the online softmax runs down the key rows of `Sᵀ`, every lane a query row (masking,
//!   maxima, `exp`, sums: vector operations with no reduction across lanes);
//! - `out[i] += Σ_j P[j][i] · V[j]` for 4 query rows at a time (2 at d = 128), the values read
//!   as stored.
//!
//! A 4k-token prefill of the default model: 884–894 → 979–981 tokens/s (`xtask bench-worker`).

use super::math::exp;

/// f32 lanes of an AVX-512 vector.
const LANES: usize = 16;
/// Query rows of a block: 8 vectors.
pub(super) const ROWS: usize = 128;
/// Vectors of query rows.
const ROW_VECTORS: usize = ROWS / LANES;

/// True when this CPU runs the kernel for head dimension `d`.
pub(super) fn supported(d: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (d == 64 || d == 128) && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = d;
        false
    }
}

/// A thread's buffers for [`query_block`].
#[derive(Default)]
pub(super) struct Scratch {
    /// `[d, ROWS]`: the block's queries, transposed and scaled (0 past its rows).
    queries: Vec<f32>,
    /// `[key tile, ROWS]`: a tile's scores, then its probabilities.
    scores: Vec<f32>,
    /// `[ROWS, d]`: the unnormalised output rows.
    out: Vec<f32>,
    /// Running maximum, running sum and the last tile's rescaling, per query row.
    max: Vec<f32>,
    sum: Vec<f32>,
    correction: Vec<f32>,
}

/// The block's rows and the keys they see.
#[derive(Debug, Clone, Copy)]
pub(super) struct Block<'a> {
    /// Query row `r` at `q[r · q_stride ..][.. d]`, `rows ≤ ROWS`.
    pub q: &'a [f32],
    pub q_stride: usize,
    pub rows: usize,
    /// Row `r` sees keys `0 ..= last_key_of_first_row + r`.
    pub last_key_of_first_row: usize,
    /// Key `j` at `k[j · k_stride ..][.. d]`, value `j` likewise in `v`.
    pub k: &'a [f32],
    pub k_stride: usize,
    pub v: &'a [f32],
    pub v_stride: usize,
    pub d: usize,
    pub scale: f32,
}

impl Block<'_> {
    /// True when every row, key and value the block reads lies inside its slices.
    fn fits(&self) -> bool {
        let visible = self.last_key_of_first_row + self.rows;
        let inside = |data: &[f32], stride: usize, count: usize| {
            count == 0 || (count - 1) * stride + self.d <= data.len()
        };
        self.rows <= ROWS
            && inside(self.q, self.q_stride, self.rows)
            && inside(self.k, self.k_stride, visible)
            && inside(self.v, self.v_stride, visible)
    }
}

/// Attention of the block's rows, normalised, into `out` (row `r` at `out[r · out_stride ..]`,
/// `d` wide), key tiles of `key_tile`; false (and `out` untouched) unless
/// [`supported`] and every read and write lies inside the slices.
pub(super) fn query_block(
    block: &Block<'_>,
    key_tile: usize,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut Scratch,
) -> bool {
    let d = block.d;
    let rows = block.rows;
    if !supported(d)
        || !block.fits()
        || key_tile == 0
        || (rows > 0 && (rows - 1) * out_stride + d > out.len())
    {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let Scratch {
            queries,
            scores,
            out: acc,
            max,
            sum,
            correction,
        } = scratch;
        queries.clear();
        queries.resize(d * ROWS, 0.0);
        for (r, row) in (0..rows).map(|r| (r, &block.q[r * block.q_stride..][..d])) {
            for (c, &x) in row.iter().enumerate() {
                queries[c * ROWS + r] = x * block.scale;
            }
        }
        scores.resize(key_tile * ROWS, 0.0);
        acc.clear();
        acc.resize(ROWS * d, 0.0);
        for buffer in [&mut *max, &mut *sum, &mut *correction] {
            buffer.clear();
            buffer.resize(ROWS, 0.0);
        }
        max.fill(f32::NEG_INFINITY);
        let visible = block.last_key_of_first_row + rows;
        let mut start = 0;
        while start < visible {
            let width = key_tile.min(visible - start);
            let tile = &mut scores[..width * ROWS];
            // SAFETY: AVX-512F (`supported`); keys start..start + width lie inside `k`
            // (`fits`: visible keys), `queries` is d × ROWS, `tile` width × ROWS.
            unsafe {
                avx512::scores(
                    block.k.as_ptr().add(start * block.k_stride),
                    block.k_stride,
                    width,
                    d,
                    queries.as_ptr(),
                    tile.as_mut_ptr(),
                );
            }
            let first_row_sees = (block.last_key_of_first_row + 1) as isize - start as isize;
            // SAFETY: AVX-512F.
            unsafe { avx512::softmax_tile(tile, first_row_sees, max, sum, correction) };
            // SAFETY: AVX-512F; values start..start + width lie inside `v`, `acc` is ROWS × d,
            // `tile` width × ROWS, `correction` ROWS; rows ≤ ROWS.
            unsafe {
                avx512::add_values(
                    tile.as_ptr(),
                    width,
                    block.v.as_ptr().add(start * block.v_stride),
                    block.v_stride,
                    d,
                    correction.as_ptr(),
                    rows,
                    acc.as_mut_ptr(),
                );
            }
            start += width;
        }
        for r in 0..rows {
            let inverse = 1.0 / sum[r];
            let target = &mut out[r * out_stride..][..d];
            for (o, &a) in target.iter_mut().zip(&acc[r * d..][..d]) {
                *o = a * inverse;
            }
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (out_stride, scratch);
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{LANES, ROW_VECTORS, ROWS, exp};
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mul_ps, _mm512_set1_ps, _mm512_setzero_ps,
        _mm512_storeu_ps,
    };

    /// `Sᵀ[r] = Σ_c K[r][c] · Qᵀ[c]` for `R` keys (rows of `st`, `ROWS` wide).
    ///
    /// SAFETY (caller): AVX-512F; `R` keys of `d` values at `k_stride` from `k`; `qt` holds
    /// `d × ROWS`, `st` `R × ROWS`.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // one load of each query vector, used by every key
    unsafe fn key_scores<const R: usize>(
        k: *const f32,
        k_stride: usize,
        d: usize,
        qt: *const f32,
        st: *mut f32,
    ) {
        // SAFETY: as the function's contract.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); ROW_VECTORS]; R];
            for c in 0..d {
                let q = qt.add(c * ROWS);
                let mut s = [_mm512_setzero_ps(); R];
                for (r, s) in s.iter_mut().enumerate() {
                    *s = _mm512_set1_ps(*k.add(r * k_stride + c));
                }
                for v in 0..ROW_VECTORS {
                    let queries = _mm512_loadu_ps(q.add(v * LANES));
                    for r in 0..R {
                        acc[r][v] = _mm512_fmadd_ps(s[r], queries, acc[r][v]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (v, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(st.add(r * ROWS + v * LANES), *acc);
                }
            }
        }
    }

    /// The scores of `width` keys against the block's transposed queries: `st` (`[width,
    /// ROWS]`).
    ///
    /// SAFETY (caller): as [`key_scores`] for `width` keys.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores(
        k: *const f32,
        k_stride: usize,
        width: usize,
        d: usize,
        qt: *const f32,
        st: *mut f32,
    ) {
        // SAFETY: as the function's contract; each call reads keys j..j + 3 (or j) < width.
        unsafe {
            let mut j = 0;
            while j + 3 <= width {
                key_scores::<3>(k.add(j * k_stride), k_stride, d, qt, st.add(j * ROWS));
                j += 3;
            }
            while j < width {
                key_scores::<1>(k.add(j * k_stride), k_stride, d, qt, st.add(j * ROWS));
                j += 1;
            }
        }
    }

    /// One tile of the online softmax down the key rows of `st` (`[width, ROWS]`): lane `i`
    /// sees keys `j < first_row_sees + i`; the scores become `exp(score − new maximum)` (0
    /// where masked), the running sums are rescaled and `correction` holds each row's factor
    /// for its output.
    ///
    /// SAFETY (caller): AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn softmax_tile(
        st: &mut [f32],
        first_row_sees: isize,
        max: &mut [f32],
        sum: &mut [f32],
        correction: &mut [f32],
    ) {
        let (max, sum, correction) = (&mut max[..ROWS], &mut sum[..ROWS], &mut correction[..ROWS]);
        // rows j ≥ first_row_sees are masked for the lanes i ≤ j − first_row_sees
        for (j, row) in st.chunks_exact_mut(ROWS).enumerate() {
            let hidden = (j as isize - first_row_sees + 1).clamp(0, ROWS as isize) as usize;
            row[..hidden].fill(f32::NEG_INFINITY);
        }
        let mut top = [f32::NEG_INFINITY; ROWS];
        for row in st.chunks_exact(ROWS) {
            for (t, &x) in top.iter_mut().zip(row) {
                *t = t.max(x);
            }
        }
        for i in 0..ROWS {
            let new_max = max[i].max(top[i]);
            correction[i] = exp(max[i] - new_max);
            top[i] = new_max;
            max[i] = new_max;
        }
        let mut tile_sum = [0f32; ROWS];
        for row in st.chunks_exact_mut(ROWS) {
            for ((x, m), s) in row.iter_mut().zip(&top).zip(tile_sum.iter_mut()) {
                let p = if *x == f32::NEG_INFINITY {
                    0.0
                } else {
                    exp(*x - m)
                };
                *x = p;
                *s += p;
            }
        }
        for i in 0..ROWS {
            sum[i] = sum[i] * correction[i] + tile_sum[i];
        }
    }

    /// `out[i] = out[i] · correction[i] + Σ_j P[j][i] · V[j]` for `R` rows from `i0`.
    ///
    /// SAFETY (caller): AVX-512F; `width` values of `16·C` at `v_stride` from `v`; `pt` holds
    /// `width × ROWS`, `out` `ROWS × 16·C`; `i0 + R ≤ ROWS`.
    #[inline(always)]
    unsafe fn row_values<const C: usize, const R: usize>(
        pt: *const f32,
        width: usize,
        v: *const f32,
        v_stride: usize,
        correction: *const f32,
        i0: usize,
        out: *mut f32,
    ) {
        let d = C * LANES;
        // SAFETY: as the function's contract.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); C]; R];
            for (r, acc) in acc.iter_mut().enumerate() {
                let factor = _mm512_set1_ps(*correction.add(i0 + r));
                for (c, acc) in acc.iter_mut().enumerate() {
                    *acc =
                        _mm512_mul_ps(_mm512_loadu_ps(out.add((i0 + r) * d + c * LANES)), factor);
                }
            }
            for j in 0..width {
                let value = v.add(j * v_stride);
                let mut values: [__m512; C] = [_mm512_setzero_ps(); C];
                for (c, x) in values.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(value.add(c * LANES));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let p = _mm512_set1_ps(*pt.add(j * ROWS + i0 + r));
                    for c in 0..C {
                        acc[c] = _mm512_fmadd_ps(p, values[c], acc[c]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (c, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(out.add((i0 + r) * d + c * LANES), *acc);
                }
            }
        }
    }

    /// [`row_values`] over the first `rows` rows, a few at a time, then one at a time.
    ///
    /// SAFETY (caller): as [`row_values`] with `d` = 64 or 128 and `rows ≤ ROWS`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn add_values(
        pt: *const f32,
        width: usize,
        v: *const f32,
        v_stride: usize,
        d: usize,
        correction: *const f32,
        rows: usize,
        out: *mut f32,
    ) {
        // SAFETY: as the function's contract; each call covers rows i..i + R (or i) < rows.
        unsafe {
            let args = (pt, width, v, v_stride, correction);
            let mut i = 0;
            if d == 64 {
                while i + 4 <= rows {
                    row_values::<4, 4>(args.0, args.1, args.2, args.3, args.4, i, out);
                    i += 4;
                }
                while i < rows {
                    row_values::<4, 1>(args.0, args.1, args.2, args.3, args.4, i, out);
                    i += 1;
                }
            } else {
                while i + 2 <= rows {
                    row_values::<8, 2>(args.0, args.1, args.2, args.3, args.4, i, out);
                    i += 2;
                }
                while i < rows {
                    row_values::<8, 1>(args.0, args.1, args.2, args.3, args.4, i, out);
                    i += 1;
                }
            }
        }
    }
}
