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

use super::attention::QueryBlock;
use super::math::exp;
use super::{LANES, rows_fit};

/// Query rows of a block: 8 vectors.
pub(super) const ROWS: usize = 128;
/// Vectors of query rows.
const ROW_VECTORS: usize = ROWS / LANES;

/// True when this CPU runs the kernels for head dimension `d`.
pub(super) fn supported(d: usize) -> bool {
    super::avx512_runs(d)
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

impl QueryBlock<'_> {
    /// True when every row, key and value the block reads lies inside its slices.
    fn fits(&self) -> bool {
        let visible = self.last_key_of_first_row + self.rows;
        self.rows <= ROWS
            && rows_fit(self.q, self.q_stride, self.rows, self.dim)
            && rows_fit(self.k, self.k_stride, visible, self.dim)
            && rows_fit(self.v, self.v_stride, visible, self.dim)
    }
}

/// Attention of the block's rows, normalised, into `out` (row `r` at `out[r · out_stride ..]`,
/// `d` wide), key tiles of `key_tile`; false (and `out` untouched) unless
/// [`supported`] and every read and write lies inside the slices.
pub(super) fn query_block(
    block: &QueryBlock<'_>,
    key_tile: usize,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut Scratch,
) -> bool {
    let d = block.dim;
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
                avx512::scores::<ROW_VECTORS>(
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
    use super::{LANES, ROWS, exp};
    use std::arch::x86_64::{
        __m512, __mmask16, _mm512_add_ps, _mm512_cmplt_epi32_mask, _mm512_fmadd_ps,
        _mm512_loadu_ps, _mm512_loadu_si512, _mm512_mask_mov_ps, _mm512_maskz_mov_ps,
        _mm512_max_ps, _mm512_mul_ps, _mm512_reduce_add_ps, _mm512_set1_epi32, _mm512_set1_ps,
        _mm512_setzero_ps, _mm512_setzero_si512, _mm512_storeu_ps, _mm512_sub_ps,
    };

    /// `Sᵀ[r] = Σ_c K[r][c] · Qᵀ[c]` for `R` keys (rows of `st`, `V` vectors of lanes wide).
    ///
    /// SAFETY (caller): AVX-512F; `R` keys of `d` values at `k_stride` from `k`; `qt` holds
    /// `d × 16·V`, `st` `R × 16·V`.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // one load of each query vector, used by every key
    unsafe fn key_scores<const R: usize, const V: usize>(
        k: *const f32,
        k_stride: usize,
        d: usize,
        qt: *const f32,
        st: *mut f32,
    ) {
        let lanes = V * LANES;
        // SAFETY: as the function's contract.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            for c in 0..d {
                let q = qt.add(c * lanes);
                let mut s = [_mm512_setzero_ps(); R];
                for (r, s) in s.iter_mut().enumerate() {
                    *s = _mm512_set1_ps(*k.add(r * k_stride + c));
                }
                for v in 0..V {
                    let queries = _mm512_loadu_ps(q.add(v * LANES));
                    for r in 0..R {
                        acc[r][v] = _mm512_fmadd_ps(s[r], queries, acc[r][v]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (v, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(st.add(r * lanes + v * LANES), *acc);
                }
            }
        }
    }

    /// The scores of `width` keys against transposed queries of `16·V` lanes: `st`
    /// (`[width, 16·V]`).
    ///
    /// SAFETY (caller): as [`key_scores`] for `width` keys.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores<const V: usize>(
        k: *const f32,
        k_stride: usize,
        width: usize,
        d: usize,
        qt: *const f32,
        st: *mut f32,
    ) {
        let lanes = V * LANES;
        // SAFETY: as the function's contract; each call reads keys j..j + 3 (or j) < width.
        unsafe {
            let mut j = 0;
            while j + 3 <= width {
                key_scores::<3, V>(k.add(j * k_stride), k_stride, d, qt, st.add(j * lanes));
                j += 3;
            }
            while j < width {
                key_scores::<1, V>(k.add(j * k_stride), k_stride, d, qt, st.add(j * lanes));
                j += 1;
            }
        }
    }

    /// `eˣ` on 16 lanes for `x ≤ 0`: [`super::exp`] on each lane (the loop vectorises in the
    /// AVX-512 callers it is inlined into).
    #[inline(always)]
    fn exp_lanes(x: __m512) -> __m512 {
        let mut lanes = [0f32; LANES];
        // SAFETY: AVX-512F intrinsics in AVX-512F callers; 16 lanes in and out of `lanes`.
        unsafe {
            _mm512_storeu_ps(lanes.as_mut_ptr(), x);
            for lane in lanes.iter_mut() {
                *lane = exp(*lane);
            }
            _mm512_loadu_ps(lanes.as_ptr())
        }
    }

    /// Per head of the block, its lanes' share of the mean over the head's `w` rows of the
    /// softmax down the key rows of `st` (`[n, 16·V]` scores, lane `l` window row `i =
    /// (first + l) mod w`, seeing keys `j ≤ n − w + i`; overwritten by probabilities):
    /// `out[head · n + j]`, heads counted from the block's first. Lanes past `count` are
    /// ignored.
    ///
    /// SAFETY (caller): AVX-512F; `count ≤ 16·V`, `st` holds `n × 16·V`, `out` a row of `n`
    /// for every head the lanes touch.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)] // maxima and sums indexed with the row's vectors
    pub(super) unsafe fn window_softmax_mean<const V: usize>(
        st: &mut [f32],
        lanes: &super::Lanes,
        n: usize,
        out: &mut [f32],
    ) {
        let width = V * LANES;
        let super::Lanes { first, count, w } = *lanes;
        // SAFETY: every pointer below stays inside `st` (n rows of `width`), the intrinsics
        // are AVX-512F.
        unsafe {
            // each lane's window row: key j is hidden from rows i < j + w − n
            let mut row_of_lane = [_mm512_setzero_si512(); V];
            for (v, r) in row_of_lane.iter_mut().enumerate() {
                let rows: [i32; LANES] =
                    std::array::from_fn(|l| ((first + v * LANES + l) % w) as i32);
                *r = _mm512_loadu_si512(rows.as_ptr().cast());
            }
            let hidden = |j: usize, v: usize| -> __mmask16 {
                if j + w > n {
                    _mm512_cmplt_epi32_mask(row_of_lane[v], _mm512_set1_epi32((j + w - n) as i32))
                } else {
                    0
                }
            };
            let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
            let base = st.as_mut_ptr();
            let mut top = [neg_inf; V];
            for j in 0..n {
                for v in 0..V {
                    let x = _mm512_loadu_ps(base.add(j * width + v * LANES));
                    let x = _mm512_mask_mov_ps(x, hidden(j, v), neg_inf);
                    top[v] = _mm512_max_ps(top[v], x);
                }
            }
            let mut sum = [_mm512_setzero_ps(); V];
            for j in 0..n {
                for v in 0..V {
                    let at = base.add(j * width + v * LANES);
                    let p = exp_lanes(_mm512_sub_ps(_mm512_loadu_ps(at), top[v]));
                    let p = _mm512_maskz_mov_ps(!hidden(j, v), p);
                    _mm512_storeu_ps(at, p);
                    sum[v] = _mm512_add_ps(sum[v], p);
                }
            }
            // each lane's probabilities divided by its sum and by w: the mean's weights
            let mut weights = [_mm512_setzero_ps(); V];
            for v in 0..V {
                let mut sums = [0f32; LANES];
                _mm512_storeu_ps(sums.as_mut_ptr(), sum[v]);
                let lane_weights: [f32; LANES] = std::array::from_fn(|l| {
                    if v * LANES + l < count {
                        1.0 / (sums[l] * w as f32)
                    } else {
                        0.0
                    }
                });
                weights[v] = _mm512_loadu_ps(lane_weights.as_ptr());
            }
            // the head of each lane vector when heads are whole vectors
            let whole = w.is_multiple_of(LANES) && first.is_multiple_of(LANES);
            let heads = (first + count).div_ceil(w);
            let mut weighted = [0f32; ROWS];
            for j in 0..n {
                let row = base.add(j * width);
                if whole {
                    let mut total = _mm512_setzero_ps();
                    let mut head = first / w;
                    for v in 0..count.div_ceil(LANES) {
                        if (first + v * LANES) / w != head {
                            out[head * n + j] = _mm512_reduce_add_ps(total);
                            total = _mm512_setzero_ps();
                            head = (first + v * LANES) / w;
                        }
                        let p = _mm512_loadu_ps(row.add(v * LANES));
                        total = _mm512_fmadd_ps(p, weights[v], total);
                    }
                    out[head * n + j] = _mm512_reduce_add_ps(total);
                } else {
                    for v in 0..V {
                        let p = _mm512_mul_ps(_mm512_loadu_ps(row.add(v * LANES)), weights[v]);
                        _mm512_storeu_ps(weighted.as_mut_ptr().add(v * LANES), p);
                    }
                    for head in first / w..heads {
                        let lanes = (head * w).max(first) - first
                            ..((head + 1) * w).min(first + count) - first;
                        out[head * n + j] = weighted[lanes].iter().sum();
                    }
                }
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

/// A block's lanes counted from its first head's first window row: lane `l` is window row
/// `(first + l) mod w` of the block's head `(first + l) / w`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lanes {
    pub first: usize,
    pub count: usize,
    pub w: usize,
}

/// A run of the window rows of a KV group's query heads, which read the same keys: lane `L`
/// of the group is window row `L mod w` of its head `L / w`, and a block takes lanes
/// `first_lane .. first_lane + lanes` (possibly parts of two heads).
#[derive(Debug, Clone)]
pub(super) struct WindowHeads<'a> {
    /// Per head of the group, window row `i` at `[i · q_stride ..][.. d]` (the last `w`
    /// queries).
    pub queries: Vec<&'a [f32]>,
    pub q_stride: usize,
    /// The block's first lane and its lane count (at most [`ROWS`]).
    pub first_lane: usize,
    pub lanes: usize,
    /// Key `j` at `k[j · k_stride ..][.. d]`, `n` keys; window row `i` sees keys `0 ..= n − w + i`.
    pub k: &'a [f32],
    pub k_stride: usize,
    pub n: usize,
    pub w: usize,
    pub d: usize,
    pub scale: f32,
}

impl WindowHeads<'_> {
    /// The heads the block's lanes belong to: `first .. first + count`.
    pub(super) fn heads(&self) -> (usize, usize) {
        let first = self.first_lane / self.w.max(1);
        let last = (self.first_lane + self.lanes).div_ceil(self.w.max(1));
        (first, last - first)
    }
}

/// Keys up to which [`window_mean`] holds all of a block's scores (`n × 128` floats at most;
/// beyond, gemm's path holds a few rows' at a time).
const WINDOW_MAX_KEYS: usize = 1 << 16;

/// Per head of the block, its lanes' share of the window's softmax attention averaged over the
/// head's `w` rows: `out[(head − first) · n + j]` for the block's heads (`first`, count from
/// [`WindowHeads::heads`]); a head split between two blocks gets the rest of its mean from the
/// other. False (and `out` untouched) unless [`supported`], within [`WINDOW_MAX_KEYS`], and
/// every read inside the slices.
pub(super) fn window_mean(block: &WindowHeads<'_>, out: &mut [f32]) -> bool {
    let WindowHeads {
        ref queries,
        q_stride,
        first_lane,
        lanes,
        k,
        k_stride,
        n,
        w,
        d,
        scale,
    } = *block;
    let (first_head, heads) = block.heads();
    if !supported(d)
        || lanes == 0
        || w == 0
        || w > n
        || lanes > ROWS
        || first_lane + lanes > queries.len() * w
        || n > WINDOW_MAX_KEYS
        || out.len() != heads * n
        || !rows_fit(k, k_stride, n, d)
        || queries.iter().any(|q| !rows_fit(q, q_stride, w, d))
    {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let vectors = lanes.div_ceil(LANES);
        let width = vectors * LANES;
        // lane l: window row (first_lane + l) mod w of its head, scaled; lanes past them stay 0
        let mut qt = vec![0f32; d * width];
        for l in 0..lanes {
            let (head, i) = ((first_lane + l) / w, (first_lane + l) % w);
            for (c, &x) in queries[head][i * q_stride..][..d].iter().enumerate() {
                qt[c * width + l] = x * scale;
            }
        }
        // every score is written by `scores` before it is read
        let mut st: Vec<f32> = Vec::with_capacity(n * width);
        let (kp, qp, sp) = (k.as_ptr(), qt.as_ptr(), st.as_mut_ptr());
        let lanes_of = Lanes {
            first: first_lane - first_head * w,
            count: lanes,
            w,
        };
        macro_rules! run {
            ($v:literal) => {
                // SAFETY: AVX-512F (`supported`); n keys inside `k` (checked), `qt` is
                // d × width and `st` holds n × width, all written by `scores` before
                // `window_softmax_mean` reads them (then its length is set); lanes ≤ width.
                unsafe {
                    avx512::scores::<$v>(kp, k_stride, n, d, qp, sp);
                    st.set_len(n * width);
                    avx512::window_softmax_mean::<$v>(&mut st, &lanes_of, n, out);
                }
            };
        }
        match vectors {
            1 => run!(1),
            2 => run!(2),
            3 => run!(3),
            4 => run!(4),
            5 => run!(5),
            6 => run!(6),
            7 => run!(7),
            _ => run!(8),
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
