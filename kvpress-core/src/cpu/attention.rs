//! Grouped-query attention on host memory for the flex (CPU) backend: prefill's causal
//! attention ([`causal`]), decoding steps' attention over every key ([`unmasked`]), and the
//! presses' observation-window probabilities ([`window`], [`window_mean`]).
//!
//! burn-flex's fused kernel walks every score through a scalar loop (scale, mask, running max,
//! `expf`) and computes the masked half of the diagonal tiles; on a 4k-token prefill of the
//! default model that loop and `expf` were about half of the prefill time. This kernel tiles
//! queries and keys, never touches a tile above the diagonal, runs the softmax bookkeeping over
//! whole rows in loops the compiler vectorises (a polynomial `exp` instead of the libm call) and
//! leaves the two products per tile to `gemm`, or runs a whole block in [`super::flash`] on
//! AVX-512 at head dimensions 64 and 128. Work is spread over threads by query block.
//!
//! [`crate::attention::chunked_attention`] calls [`causal`] for the plain causal case (the
//! queries are the last `s` keys; every earlier key is visible),
//! [`unmasked`] when no key is masked, [`crate::attention::window_attention`] and
//! [`crate::attention::window_attention_mean`] call [`window`] and [`window_mean`].

use burn::backend::flex::FlexTensor;
use burn::tensor::{Tensor, TensorData, backend::Backend};
use rayon::prelude::*;

use super::math::{add_softmax, dot, exp, lane_sum};
use super::{LANES, Strided, flash, flex_tensor, strided};

/// Query rows per block (one task): the rows of the AVX-512 kernel's block.
const QUERY_BLOCK: usize = flash::ROWS;
/// Keys per tile.
const KEY_TILE: usize = 256;

/// The shapes of one call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Query heads.
    pub heads: usize,
    /// KV heads (`heads` is a multiple).
    pub kv_heads: usize,
    /// Queries per head: the last `queries` of the `keys`.
    pub queries: usize,
    /// Keys per KV head.
    pub keys: usize,
    /// Head dimension.
    pub dim: usize,
}

/// Prefill's causal attention on the flex backend, reading the tensors' memory in place;
/// `None` on other backends, element types or layouts.
///
/// # Shapes
/// - `q`: `[1, h_q, s, d]`, `k`, `v`: `[1, h_kv, n, d]`, the queries being the last `s` keys
/// - returns `[1, h_q, s, d]`, a heads-first view of token-major memory
pub(crate) fn causal<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    scale: f32,
    threads: usize,
) -> Option<Tensor<B, 4>> {
    let (fq, fk, fv) = (flex_tensor(q)?, flex_tensor(k)?, flex_tensor(v)?);
    let [_, heads, queries, dim] = q.dims();
    let [_, kv_heads, keys, _] = k.dims();
    let shape = Shape {
        heads,
        kv_heads,
        queries,
        keys,
        dim,
    };
    let out = causal_attention(
        strided(&fq)?,
        strided(&fk)?,
        strided(&fv)?,
        shape,
        scale,
        threads,
    )?;
    Some(
        Tensor::<B, 4>::from_data(TensorData::new(out, [1, queries, heads, dim]), &q.device())
            .swap_dims(1, 2),
    )
}

/// `softmax(q·kᵀ·scale + causal mask)·v`, read from strided views in place.
///
/// # Shapes
/// - `q`: `[heads, queries, dim]`, `k`, `v`: `[kv_heads, keys, dim]` (see [`Strided`])
/// - returns `[queries, heads, dim]` (token-major, as the output projection reads it); query
///   `i` sees keys `0 ..= keys − queries + i` of KV head `head / (heads / kv_heads)`
///
/// `None` when a view does not cover its shape.
pub(crate) fn causal_attention(
    q: Strided<'_>,
    k: Strided<'_>,
    v: Strided<'_>,
    shape: Shape,
    scale: f32,
    threads: usize,
) -> Option<Vec<f32>> {
    let Shape {
        heads,
        kv_heads,
        queries,
        keys,
        dim,
    } = shape;
    let fits = queries <= keys
        && kv_heads > 0
        && heads.is_multiple_of(kv_heads)
        && q.covers(heads, queries, dim)
        && k.covers(kv_heads, keys, dim)
        && v.covers(kv_heads, keys, dim);
    if !fits {
        return None;
    }
    let mut out = vec![0f32; queries * heads * dim];
    if out.is_empty() {
        return Some(out);
    }
    let group = heads / kv_heads;
    // One task per block of query rows (all heads).
    let block = |scratch: &mut Scratch, (index, o): (usize, &mut [f32])| {
        let first = index * QUERY_BLOCK;
        let rows = o.len() / (heads * dim);
        for head in 0..heads {
            let kv = head / group;
            let block = QueryBlock {
                q: q.rows_from(head, first),
                q_stride: q.row_stride,
                rows,
                // Query `first + r` sees keys up to `keys − queries + first + r`.
                last_key_of_first_row: keys - queries + first,
                k: k.rows_from(kv, 0),
                k_stride: k.row_stride,
                v: v.rows_from(kv, 0),
                v_stride: v.row_stride,
                dim,
                scale,
            };
            let out = OutRows {
                data: &mut o[head * dim..],
                stride: heads * dim,
                dim,
            };
            query_block(block, out, scratch);
        }
    };
    let blocks = out.chunks_mut(QUERY_BLOCK * heads * dim).enumerate();
    if threads <= 1 {
        let mut scratch = Scratch::new();
        blocks.for_each(|b| block(&mut scratch, b));
    } else {
        // On rayon's pool (the one the dense layers use), blocks handed out one at a time, later
        // blocks (more keys) first so that the threads finish together.
        blocks
            .rev()
            .par_bridge()
            .for_each_init(Scratch::new, |scratch, b| block(scratch, b));
    }
    Some(out)
}

/// Query rows of one head and the keys and values they see.
#[derive(Debug, Clone, Copy)]
pub(super) struct QueryBlock<'a> {
    /// Query row `r` at `q[r · q_stride ..][.. dim]`.
    pub q: &'a [f32],
    pub q_stride: usize,
    pub rows: usize,
    /// Row `r` sees keys `0 ..= last_key_of_first_row + r`.
    pub last_key_of_first_row: usize,
    /// Key `j` at `k[j · k_stride ..][.. dim]`, value `j` likewise in `v`.
    pub k: &'a [f32],
    pub k_stride: usize,
    pub v: &'a [f32],
    pub v_stride: usize,
    pub dim: usize,
    /// Applied to the scores (`1/√d`).
    pub scale: f32,
}

/// Output rows: row `r` at `data[r · stride ..][.. dim]`.
struct OutRows<'a> {
    data: &'a mut [f32],
    stride: usize,
    dim: usize,
}

impl OutRows<'_> {
    fn row(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.stride..][..self.dim]
    }
}

/// The attention probabilities of the last `w` queries over all keys on the flex backend (the
/// observation window of SnapKV and relatives), reading the tensors in place; `None` on other
/// backends, element types or layouts.
///
/// # Shapes
/// - `queries`: `[1, h_q, m, d]` (the tokens of the last `m` keys), `keys`: `[1, h_kv, n, d]`
/// - returns `[1, h_q, w, n]`; window query `i` sees keys `0 ..= n − w + i`
pub(crate) fn window<B: Backend>(
    queries: &Tensor<B, 4>,
    keys: &Tensor<B, 4>,
    w: usize,
    scale: f32,
) -> Option<Tensor<B, 4>> {
    let (fq, fk) = (flex_tensor(queries)?, flex_tensor(keys)?);
    let window = Window::new(queries.dims(), keys.dims(), (&fq, &fk), w, scale)?;
    let (heads, n) = (queries.dims()[1], keys.dims()[2]);
    let mut out = vec![0f32; heads * w * n];
    if !out.is_empty() {
        out.par_chunks_mut(w * n)
            .enumerate()
            .for_each(|(head, probs)| window.probabilities(head, probs));
    }
    Some(Tensor::from_data(
        TensorData::new(out, [1, heads, w, n]),
        &queries.device(),
    ))
}

/// [`window`]'s probabilities averaged over the `w` window queries, without forming them all
/// at once (one head's `w × n` at a time per thread; a KV group's heads at once in
/// [`flash::window_mean`] where it runs).
///
/// # Shapes
/// - `queries`: `[1, h_q, m, d]`, `keys`: `[1, h_kv, n, d]`; returns `[1, h_q, n]`
pub(crate) fn window_mean<B: Backend>(
    queries: &Tensor<B, 4>,
    keys: &Tensor<B, 4>,
    w: usize,
    scale: f32,
) -> Option<Tensor<B, 3>> {
    let (fq, fk) = (flex_tensor(queries)?, flex_tensor(keys)?);
    let window = Window::new(queries.dims(), keys.dims(), (&fq, &fk), w, scale)?;
    let (heads, n) = (queries.dims()[1], keys.dims()[2]);
    let out = match window.mean_by_flash(heads) {
        Some(mean) => mean,
        None => {
            let mut mean = vec![0f32; heads * n];
            if !mean.is_empty() && w > 0 {
                mean.par_chunks_mut(n).enumerate().for_each_init(
                    || vec![0f32; w * n],
                    |scores, (head, mean)| {
                        window.scores(head, scores);
                        add_window_rows_mean(scores, n, n - w + 1, w, mean);
                    },
                );
            }
            mean
        }
    };
    Some(Tensor::from_data(
        TensorData::new(out, [1, heads, n]),
        &queries.device(),
    ))
}

/// The checked views of a window-attention call.
struct Window<'a> {
    q: Strided<'a>,
    k: Strided<'a>,
    /// Query heads per KV head.
    group: usize,
    /// Query rows (the window is the last `w`).
    m: usize,
    /// Keys per KV head.
    n: usize,
    w: usize,
    dim: usize,
    scale: f32,
}

impl<'a> Window<'a> {
    /// `None` unless the views cover `[h_q, m, d]` and `[h_kv, n, d]` with `w ≤ m ≤ n`.
    fn new(
        [_, heads, m, dim]: [usize; 4],
        [_, kv_heads, n, _]: [usize; 4],
        (fq, fk): (&'a FlexTensor, &'a FlexTensor),
        w: usize,
        scale: f32,
    ) -> Option<Self> {
        let (q, k) = (strided(fq)?, strided(fk)?);
        let fits = w <= m
            && m <= n
            && kv_heads > 0
            && heads.is_multiple_of(kv_heads)
            && q.covers(heads, m, dim)
            && k.covers(kv_heads, n, dim);
        fits.then_some(Self {
            q,
            k,
            group: heads / kv_heads,
            m,
            n,
            w,
            dim,
            scale,
        })
    }

    /// [`window_mean`]'s `[h_q, n]` means by [`flash::window_mean`]: a KV group's window rows
    /// (`group · w` lanes) in equal blocks of at most 128 lanes, whole vectors of 16 but for
    /// the last (3 heads × 64 rows: two blocks of 96, where blocks of whole heads made one of
    /// 128 lanes and one of 64, and left a thread waiting); `None` where that kernel does not
    /// run.
    fn mean_by_flash(&self, heads: usize) -> Option<Vec<f32>> {
        let Self {
            q,
            k,
            group,
            m,
            n,
            w,
            dim,
            scale,
        } = *self;
        if !flash::supported(dim) || w == 0 || w > flash::ROWS {
            return None;
        }
        let lanes = group * w;
        let blocks = lanes.div_ceil(flash::ROWS);
        let per_block = lanes
            .div_ceil(blocks)
            .next_multiple_of(LANES)
            .min(flash::ROWS);
        let blocks = lanes.div_ceil(per_block);
        let tasks: Vec<(usize, usize)> = (0..heads / group)
            .flat_map(|kv| (0..blocks).map(move |b| (kv, b)))
            .collect();
        let parts: Option<Vec<(usize, Vec<f32>)>> = tasks
            .into_par_iter()
            .map(|(kv, b)| {
                let first_lane = b * per_block;
                let block = flash::WindowHeads {
                    queries: (kv * group..(kv + 1) * group)
                        .map(|h| q.rows_from(h, m - w))
                        .collect(),
                    q_stride: q.row_stride,
                    first_lane,
                    lanes: per_block.min(lanes - first_lane),
                    k: k.rows_from(kv, 0),
                    k_stride: k.row_stride,
                    n,
                    w,
                    d: dim,
                    scale,
                };
                let (first, count) = block.heads();
                let mut out = vec![0f32; count * n];
                flash::window_mean(&block, &mut out).then_some((kv * group + first, out))
            })
            .collect();
        // a head split between two blocks: its rows' shares added
        let mut mean = vec![0f32; heads * n];
        for (first, part) in parts? {
            for (m, p) in mean[first * n..][..part.len()].iter_mut().zip(&part) {
                *m += p;
            }
        }
        Some(mean)
    }

    /// `probs` (`[w, n]`) = the window probabilities of query head `head`.
    fn probabilities(&self, head: usize, probs: &mut [f32]) {
        self.scores(head, probs);
        softmax_window_rows(probs, self.n, self.n - self.w + 1);
    }

    /// `scores` (`[w, n]`) = `q·kᵀ·scale` of the window queries of query head `head`.
    fn scores(&self, head: usize, scores: &mut [f32]) {
        let Self {
            q,
            k,
            group,
            m,
            n,
            w,
            dim,
            scale,
        } = *self;
        debug_assert!(scores.len() == w * n, "a window's scores");
        let queries = q.rows_from(head, m - w);
        let keys = k.rows_from(head / group, 0);
        // SAFETY: `scores` is w × n (row-major); query row i lies at i · q.row_stride in
        // `queries` (rows of the window, inside the view, which covers [h_q, m, d]) and key
        // row j at j · k.row_stride in `keys`; nothing aliases `scores`.
        unsafe {
            gemm::gemm(
                w,
                n,
                dim,
                scores.as_mut_ptr(),
                1,
                n as isize,
                false,
                queries.as_ptr(),
                1,
                q.row_stride as isize,
                keys.as_ptr(),
                k.row_stride as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

widest_simd! {
    /// `mean += Σᵢ softmax(rowᵢ) / w` over the rows of `scores` (`[r, n]`, overwritten by
    /// their exponentials), where row `i` sees its first `first_sees + i` columns.
    fn add_window_rows_mean(
        scores: &mut [f32],
        n: usize,
        first_sees: usize,
        w: usize,
        mean: &mut [f32],
    ) => add_window_rows_mean_body
}

/// The body of [`add_window_rows_mean`].
#[inline(always)]
fn add_window_rows_mean_body(
    scores: &mut [f32],
    n: usize,
    first_sees: usize,
    w: usize,
    mean: &mut [f32],
) {
    for (i, row) in scores.chunks_exact_mut(n).enumerate() {
        add_softmax(&mut row[..(first_sees + i).min(n)], 1.0 / w as f32, mean);
    }
}

/// Keys per task of [`unmasked`] (tasks of one KV head are merged at the end).
const KEYS_PER_TASK: usize = 512;
/// Query rows per KV head up to which [`unmasked`] runs (a decoding step has `h_q / h_kv`).
pub(crate) const UNMASKED_MAX_ROWS: usize = 16;

/// Attention of a few queries that see every key (a decoding step), on the flex backend,
/// reading the tensors in place; `None` on other backends, element types, layouts or more than
/// [`UNMASKED_MAX_ROWS`] query rows per KV head.
///
/// burn's path runs a batched single-row matmul, a softmax through `expf` and a second matmul,
/// each a pass over memory with its own thread wake-up; here every KV head's keys and values are
/// read once, in blocks of [`KEYS_PER_TASK`] spread over rayon's threads, each block keeping
/// its own running maximum and sum (merged at the end, as in flash-decoding).
///
/// # Shapes
/// - `q`: `[1, h_q, s, d]`, `k`, `v`: `[1, h_kv, n, d]`
/// - returns `[1, h_q, s, d]`
pub(crate) fn unmasked<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    scale: f32,
) -> Option<Tensor<B, 4>> {
    let [b, heads, s, dim] = q.dims();
    let [kb, kv_heads, keys, kd] = k.dims();
    if b != 1 || kb != 1 || kd != dim || v.dims() != k.dims() || kv_heads == 0 || keys == 0 {
        return None;
    }
    if !heads.is_multiple_of(kv_heads) || (heads / kv_heads) * s > UNMASKED_MAX_ROWS {
        return None;
    }
    let (fq, fk, fv) = (flex_tensor(q)?, flex_tensor(k)?, flex_tensor(v)?);
    let (qv, kv, vv) = (strided(&fq)?, strided(&fk)?, strided(&fv)?);
    if !(qv.covers(heads, s, dim)
        && kv.covers(kv_heads, keys, dim)
        && vv.covers(kv_heads, keys, dim))
    {
        return None;
    }
    let group = heads / kv_heads;
    let rows = group * s;
    // queries of KV head h as rows (query head h·g + i, token t) → row i·s + t, contiguous
    let mut queries = vec![0f32; kv_heads * rows * dim];
    for (r, row) in queries.chunks_exact_mut(dim).enumerate() {
        let (head, t) = (r / s, r % s);
        row.copy_from_slice(&qv.rows_from(head, t)[..dim]);
    }
    let blocks = keys.div_ceil(KEYS_PER_TASK);
    let partials: Vec<Partial> = (0..kv_heads * blocks)
        .into_par_iter()
        .map(|task| {
            let (h, block) = (task / blocks, task % blocks);
            let first = block * KEYS_PER_TASK;
            let len = KEYS_PER_TASK.min(keys - first);
            let mut partial = Partial::new(rows, dim, len);
            attend_block(
                &queries[h * rows * dim..][..rows * dim],
                (kv.rows_from(h, first), kv.row_stride),
                (vv.rows_from(h, first), vv.row_stride),
                len,
                scale,
                &mut partial,
            );
            partial
        })
        .collect();
    // merge the blocks of each KV head: out = Σ e^(mᵦ−M)·accᵦ / Σ e^(mᵦ−M)·lᵦ
    let mut out = vec![0f32; heads * s * dim];
    for (h, head_blocks) in partials.chunks_exact(blocks).enumerate() {
        for r in 0..rows {
            let top = head_blocks
                .iter()
                .map(|p| p.max[r])
                .fold(f32::NEG_INFINITY, f32::max);
            let o = &mut out[(h * rows + r) * dim..][..dim];
            let mut total = 0f32;
            for p in head_blocks {
                let weight = (p.max[r] - top).exp();
                total += weight * p.sum[r];
                for (o, a) in o.iter_mut().zip(&p.acc[r * dim..][..dim]) {
                    *o += weight * a;
                }
            }
            let inverse = 1.0 / total;
            for o in o.iter_mut() {
                *o *= inverse;
            }
        }
    }
    Some(Tensor::from_data(
        TensorData::new(out, [1, heads, s, dim]),
        &q.device(),
    ))
}

/// One block's running softmax state: per row its maximum score, the sum of `e^(score − max)`
/// and `Σ e^(score − max)·v` (`[rows, dim]`); `scores` is scratch (`[rows, keys]`).
struct Partial {
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
    scores: Vec<f32>,
}

impl Partial {
    fn new(rows: usize, dim: usize, keys: usize) -> Self {
        Self {
            max: vec![f32::NEG_INFINITY; rows],
            sum: vec![0.0; rows],
            acc: vec![0.0; rows * dim],
            scores: vec![0.0; rows * keys],
        }
    }
}

widest_simd! {
    /// Scores of `queries` (`[rows, dim]`) against `len` keys, their softmax numerators and the
    /// weighted sum of the values, into `partial`. Keys and values: `(rows from the first,
    /// row stride)`.
    fn attend_block(
        queries: &[f32],
        keys: (&[f32], usize),
        values: (&[f32], usize),
        len: usize,
        scale: f32,
        partial: &mut Partial,
    ) => attend_block_body
}

/// The body of [`attend_block`].
#[inline(always)]
fn attend_block_body(
    queries: &[f32],
    (k, k_stride): (&[f32], usize),
    (v, v_stride): (&[f32], usize),
    len: usize,
    scale: f32,
    partial: &mut Partial,
) {
    let rows = partial.max.len();
    let dim = queries.len() / rows.max(1);
    let Partial {
        max,
        sum,
        acc,
        scores,
    } = partial;
    for j in 0..len {
        let key = &k[j * k_stride..][..dim];
        for (r, query) in queries.chunks_exact(dim).enumerate() {
            scores[r * len + j] = dot(query, key) * scale;
        }
    }
    for (r, row) in scores.chunks_exact_mut(len).enumerate() {
        let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for x in row.iter_mut() {
            *x = exp(*x - top);
        }
        max[r] = top;
        sum[r] = lane_sum(row);
    }
    for j in 0..len {
        let value = &v[j * v_stride..][..dim];
        for (r, out) in acc.chunks_exact_mut(dim).enumerate() {
            let p = scores[r * len + j];
            for (o, &x) in out.iter_mut().zip(value) {
                *o += p * x;
            }
        }
    }
}

widest_simd! {
    /// Row-wise softmax of `[rows, n]` scores where row `i` sees its first `first_sees + i`
    /// columns (the rest become 0).
    fn softmax_window_rows(scores: &mut [f32], n: usize, first_sees: usize) => softmax_rows_body
}

/// The body of [`softmax_window_rows`].
#[inline(always)]
fn softmax_rows_body(scores: &mut [f32], n: usize, first_sees: usize) {
    for (i, row) in scores.chunks_exact_mut(n).enumerate() {
        let (live, masked) = row.split_at_mut((first_sees + i).min(n));
        masked.fill(0.0);
        let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for x in live.iter_mut() {
            *x = exp(*x - max);
        }
        let inverse = 1.0 / lane_sum(live);
        for x in live.iter_mut() {
            *x *= inverse;
        }
    }
}

/// Per-thread buffers.
struct Scratch {
    /// `[QUERY_BLOCK, KEY_TILE]` scores, then probabilities.
    scores: Vec<f32>,
    /// Running maximum per row.
    max: Vec<f32>,
    /// Running sum of probabilities per row.
    sum: Vec<f32>,
    /// The buffers of the AVX-512 kernel.
    flash: flash::Scratch,
}

impl Scratch {
    fn new() -> Self {
        Self {
            scores: vec![0.0; QUERY_BLOCK * KEY_TILE],
            max: vec![f32::NEG_INFINITY; QUERY_BLOCK],
            sum: vec![0.0; QUERY_BLOCK],
            flash: flash::Scratch::default(),
        }
    }
}

/// One head's block of query rows with online softmax over key tiles, accumulated into `out`.
fn query_block(block: QueryBlock<'_>, mut out: OutRows<'_>, scratch: &mut Scratch) {
    if flash::query_block(&block, KEY_TILE, out.data, out.stride, &mut scratch.flash) {
        return;
    }
    let QueryBlock {
        q,
        q_stride,
        rows,
        last_key_of_first_row,
        k,
        k_stride,
        v,
        v_stride,
        dim,
        scale,
    } = block;
    let visible = last_key_of_first_row + rows; // keys any row of the block sees
    let Scratch {
        scores, max, sum, ..
    } = scratch;
    max[..rows].fill(f32::NEG_INFINITY);
    sum[..rows].fill(0.0);
    for r in 0..rows {
        out.row(r).fill(0.0);
    }
    let mut start = 0;
    while start < visible {
        let width = KEY_TILE.min(visible - start);
        let tile = &mut scores[..rows * width];
        // tile = q · k[start..start + width]ᵀ
        // SAFETY: `tile` is rows × width (row-major); query row r lies at r · q_stride in `q`
        // and key row j at j · k_stride in `k` for every row read (the views were checked to
        // cover their shapes, start + width ≤ visible ≤ keys); nothing else aliases `tile`.
        unsafe {
            gemm::gemm(
                rows,
                width,
                dim,
                tile.as_mut_ptr(),
                1,
                width as isize,
                false,
                q.as_ptr(),
                1,
                q_stride as isize,
                k.as_ptr().add(start * k_stride),
                k_stride as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        let limits = TileRows {
            first_row_sees: (last_key_of_first_row + 1) as isize - start as isize,
            width,
        };
        online_softmax(tile, &mut max[..rows], &mut sum[..rows], &mut out, limits);
        // out += tile · v[start..start + width]
        // SAFETY: as above for `tile` and `v`; output row r lies at r · out.stride in
        // `out.data`, which is exclusively borrowed and distinct from `tile` and `v`.
        unsafe {
            gemm::gemm(
                rows,
                dim,
                width,
                out.data.as_mut_ptr(),
                1,
                out.stride as isize,
                true,
                tile.as_ptr(),
                1,
                width as isize,
                v.as_ptr().add(start * v_stride),
                1,
                v_stride as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        start += width;
    }
    for (r, total) in sum[..rows].iter().enumerate() {
        let inverse = 1.0 / total;
        for o in out.row(r) {
            *o *= inverse;
        }
    }
}

/// Where a tile's rows end: row `r` sees its first `first_row_sees + r` columns (at most
/// `width`, none when negative).
#[derive(Clone, Copy)]
struct TileRows {
    first_row_sees: isize,
    width: usize,
}

widest_simd! {
    /// One tile of the online softmax: `tile` (`[rows, width]` scores) becomes the
    /// unnormalised probabilities `exp(score − running max)` (0 where masked), and the running
    /// maxima, sums and output rows are rescaled to the new maxima.
    fn online_softmax(
        tile: &mut [f32],
        max: &mut [f32],
        sum: &mut [f32],
        out: &mut OutRows<'_>,
        rows: TileRows,
    ) => online_softmax_rows
}

/// The body of [`online_softmax`], inlined into each compiled variant.
#[inline(always)]
fn online_softmax_rows(
    tile: &mut [f32],
    max: &mut [f32],
    sum: &mut [f32],
    out: &mut OutRows<'_>,
    rows: TileRows,
) {
    let TileRows {
        first_row_sees,
        width,
    } = rows;
    for (r, row) in tile.chunks_exact_mut(width).enumerate() {
        let seen = (first_row_sees + r as isize).clamp(0, width as isize) as usize;
        let (live, masked) = row.split_at_mut(seen);
        masked.fill(0.0);
        if live.is_empty() {
            continue;
        }
        let tile_max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let new_max = max[r].max(tile_max);
        for x in live.iter_mut() {
            *x = exp(*x - new_max);
        }
        let tile_sum = lane_sum(live);
        if max[r] != new_max {
            let correction = exp(max[r] - new_max);
            sum[r] *= correction;
            for o in out.row(r) {
                *o *= correction;
            }
            max[r] = new_max;
        }
        sum[r] += tile_sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct softmax attention, one row at a time, in f64.
    fn naive(q: &[f32], k: &[f32], v: &[f32], s: Shape, scale: f32) -> Vec<f32> {
        let (d, g) = (s.dim, s.heads / s.kv_heads);
        let mut out = vec![0f32; s.heads * s.queries * d];
        for h in 0..s.heads {
            let kv = h / g;
            for i in 0..s.queries {
                let qi = &q[(h * s.queries + i) * d..][..d];
                let seen = s.keys - s.queries + i + 1;
                let logits: Vec<f64> = (0..seen)
                    .map(|j| {
                        let kj = &k[(kv * s.keys + j) * d..][..d];
                        qi.iter().zip(kj).map(|(a, b)| (a * b) as f64).sum::<f64>() * scale as f64
                    })
                    .collect();
                let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                let total: f64 = w.iter().sum();
                for c in 0..d {
                    let acc: f64 = (0..seen)
                        .map(|j| w[j] * v[(kv * s.keys + j) * d + c] as f64)
                        .sum();
                    out[(h * s.queries + i) * d + c] = (acc / total) as f32;
                }
            }
        }
        out
    }

    /// Deterministic values in [−2, 2).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// Heads-first `[heads, rows, dim]` data as a view of itself, or copied token-major
    /// (`[rows, heads, dim]`, the layout of a projection before the heads are split off).
    fn view(data: &[f32], heads: usize, rows: usize, dim: usize, token_major: bool) -> Vec<f32> {
        if !token_major {
            return data.to_vec();
        }
        let mut out = vec![0.0; data.len()];
        for h in 0..heads {
            for r in 0..rows {
                out[(r * heads + h) * dim..][..dim]
                    .copy_from_slice(&data[(h * rows + r) * dim..][..dim]);
            }
        }
        out
    }

    fn strided(
        data: &[f32],
        heads: usize,
        rows: usize,
        dim: usize,
        token_major: bool,
    ) -> Strided<'_> {
        let (head_stride, row_stride) = if token_major {
            (dim, heads * dim)
        } else {
            (rows * dim, dim)
        };
        Strided {
            data,
            head_stride,
            row_stride,
        }
    }

    #[test]
    fn equals_direct_softmax_across_tiles_blocks_threads_and_layouts() {
        // Sizes around the block (128) and tile (256) edges, with and without earlier keys;
        // head dimensions of gemm's path (4, 8, 16) and of the AVX-512 kernel (64, 128), with
        // row counts that leave single rows after its groups and key counts single keys.
        for (heads, kv_heads, queries, keys, dim) in [
            (4, 2, 1, 1, 8),
            (3, 3, 70, 70, 16),
            (6, 2, 130, 300, 8),
            (2, 1, 129, 129, 4),
            (2, 2, 260, 600, 4),
            (9, 3, 130, 301, 64),
            (3, 1, 71, 71, 64),
            (2, 1, 131, 520, 128),
            (1, 1, 1, 5, 128),
        ] {
            let shape = Shape {
                heads,
                kv_heads,
                queries,
                keys,
                dim,
            };
            let q = values(heads * queries * dim, 1);
            let k = values(kv_heads * keys * dim, 2);
            let v = values(kv_heads * keys * dim, 3);
            let want = naive(&q, &k, &v, shape, 0.3);
            for (threads, token_major) in [(1, false), (3, false), (2, true)] {
                let (qs, ks, vs) = (
                    view(&q, heads, queries, dim, token_major),
                    view(&k, kv_heads, keys, dim, token_major),
                    view(&v, kv_heads, keys, dim, token_major),
                );
                let got = causal_attention(
                    strided(&qs, heads, queries, dim, token_major),
                    strided(&ks, kv_heads, keys, dim, token_major),
                    strided(&vs, kv_heads, keys, dim, token_major),
                    shape,
                    0.3,
                    threads,
                )
                .expect("the views cover their shapes");
                for h in 0..heads {
                    for i in 0..queries {
                        for c in 0..dim {
                            let (a, b) = (
                                got[(i * heads + h) * dim + c],
                                want[(h * queries + i) * dim + c],
                            );
                            assert!(
                                (a - b).abs() < 2e-5,
                                "{shape:?} threads {threads} token-major {token_major}: {a} vs {b}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn unmasked_equals_direct_softmax_across_blocks_and_head_dims() {
        use burn::backend::Flex;
        let dev = Default::default();
        // one query per head sees every key: the direct softmax with a single query
        for (heads, kv_heads, keys, dim) in [
            (9, 3, 1, 64),
            (9, 3, 511, 64),
            (9, 3, KEYS_PER_TASK + 1, 64),
            (4, 2, 1500, 20),
            (2, 2, 40, 8),
        ] {
            let shape = Shape {
                heads,
                kv_heads,
                queries: 1,
                keys,
                dim,
            };
            let (q, k, v) = (
                values(heads * dim, 4),
                values(kv_heads * keys * dim, 5),
                values(kv_heads * keys * dim, 6),
            );
            let want = naive(&q, &k, &v, shape, 0.125);
            let tensor = |data: &[f32], h: usize, n: usize| {
                Tensor::<Flex, 4>::from_data(TensorData::new(data.to_vec(), [1, h, n, dim]), &dev)
            };
            let got: Vec<f32> = unmasked(
                &tensor(&q, heads, 1),
                &tensor(&k, kv_heads, keys),
                &tensor(&v, kv_heads, keys),
                0.125,
            )
            .expect("flex tensors, one row per query head")
            .into_data()
            .to_vec()
            .expect("f32");
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 2e-5, "{shape:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn refuses_views_that_do_not_cover_their_shape() {
        let data = vec![0.0; 10];
        let short = Strided {
            data: &data,
            head_stride: 8,
            row_stride: 4,
        };
        let shape = Shape {
            heads: 1,
            kv_heads: 1,
            queries: 3,
            keys: 3,
            dim: 4,
        };
        assert!(causal_attention(short, short, short, shape, 1.0, 1).is_none());
    }
}
