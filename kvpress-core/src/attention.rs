//! Grouped-query attention computed in query chunks.
//!
//! Scores are formed for at most [`AttentionOptions::max_score_elements`] entries at a time, so a
//! long prefill never holds an `n × n` matrix: memory is `O(chunk · n)`, not `O(n²)`. Masking is
//! by absolute position (a query at position `p` sees keys at positions `≤ p`, optionally within
//! a sliding window), which stays correct after a press has dropped or reordered cache entries.

use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, TensorData, activation::softmax, backend::Backend};

use crate::error::{CoreError, Result};

/// Query count from which the fused causal kernel is used (below it, grouped matmuls win).
const FUSED_MIN_QUERIES: usize = 16;

/// Options of [`chunked_attention`].
#[derive(Debug, Clone, Copy)]
pub struct AttentionOptions {
    /// Multiplier of `q·k` (usually `1/√d`).
    pub scale: f32,
    /// Mistral-style window: a query sees only the last `w` positions (itself included).
    pub sliding_window: Option<usize>,
    /// Upper bound on score elements (`b · h · rows · keys`) per chunk.
    pub max_score_elements: usize,
    /// Threads that run the prefill's fused attention concurrently (1: the calling thread
    /// only; on the flex backend, more: rayon's pool). Useful on CPU backends whose fused
    /// kernel is single-threaded.
    pub threads: usize,
}

impl AttentionOptions {
    /// Default chunking (16 Mi score elements, 64 MiB in f32) with the given scale.
    pub fn new(scale: f32) -> Self {
        Self {
            scale,
            sliding_window: None,
            max_score_elements: 1 << 24,
            threads: 1,
        }
    }
}

/// Causal grouped-query attention.
///
/// Query head `h` reads KV head `h / g` with `g = h_q / h_kv` (the HF `repeat_kv` layout).
///
/// # Shapes
/// - `q`: `[b, h_q, s, d]` (RoPE applied), `q_positions`: `s`
/// - `k`, `v`: `[b, h_kv, n, d]`, `k_positions`: `h_kv` lists of `n` positions (each KV head
///   may hold different tokens after compression)
/// - returns `[b, h_q, s, d]`
pub fn chunked_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    q_positions: &[usize],
    k_positions: &[Vec<usize>],
    options: &AttentionOptions,
) -> Result<Tensor<B, 4>> {
    let [b, h, s, d] = q.dims();
    let [kb, h_kv, n, kd] = k.dims();
    if kb != b || kd != d || v.dims() != k.dims() || h_kv == 0 || h % h_kv != 0 {
        return Err(CoreError::Shape {
            context: "chunked_attention",
            detail: format!("q {:?}, k {:?}, v {:?}", q.dims(), k.dims(), v.dims()),
        });
    }
    if q_positions.len() != s
        || k_positions.len() != h_kv
        || k_positions.iter().any(|p| p.len() != n)
    {
        return Err(CoreError::Shape {
            context: "chunked_attention",
            detail: format!(
                "{} query positions for {s} queries; key positions for {} heads (need {h_kv} lists of {n})",
                q_positions.len(),
                k_positions.len()
            ),
        });
    }
    let g = h / h_kv;
    let keys_sorted = k_positions
        .iter()
        .all(|head| head.windows(2).all(|w| w[0] <= w[1]));
    // Fast path: the queries are the last `s` keys and every earlier key precedes them, so
    // "key position ≤ query position" is the bottom-right causal mask of a fused kernel.
    // Short query blocks (decoding) take the grouped path, which needs no repeated K/V.
    let fused = s >= FUSED_MIN_QUERIES
        && options.sliding_window.is_none()
        && n >= s
        && q_positions.windows(2).all(|w| w[0] < w[1])
        && k_positions.iter().all(|head| {
            head[n - s..] == *q_positions && head[..n - s].iter().all(|&p| p < q_positions[0])
        });
    #[cfg(feature = "flex")]
    if fused
        && b == 1
        && let Some(out) = crate::cpu::attention::causal(&q, &k, &v, options.scale, options.threads)
    {
        return Ok(out);
    }
    #[cfg(feature = "flex")]
    if !fused
        && g * s <= crate::cpu::attention::UNMASKED_MAX_ROWS
        && let (Some(&first), Some(&last)) = (q_positions.iter().min(), q_positions.iter().max())
        && sees_every_key(k_positions, n, (first, last), options)
        && let Some(out) = crate::cpu::attention::unmasked(&q, &k, &v, options.scale)
    {
        return Ok(out);
    }
    let repeated = fused.then(|| (repeat_kv(k.clone(), g), repeat_kv(v.clone(), g)));
    let chunk = (options.max_score_elements / (b * h * n.max(1))).clamp(1, s.max(1));
    let device = q.device();
    let mut outputs = Vec::with_capacity(s.div_ceil(chunk));
    let mut start = 0;
    while start < s {
        let len = chunk.min(s - start);
        let rows = &q_positions[start..start + len];
        let last = rows.iter().copied().max().unwrap_or(0);
        let first = rows.iter().copied().min().unwrap_or(0);
        // With sorted keys, keys after the chunk's last position are invisible to every row.
        let visible = if keys_sorted {
            k_positions
                .iter()
                .map(|head| head.partition_point(|&p| p <= last))
                .max()
                .unwrap_or(n)
        } else {
            n
        };
        if let Some((kr, vr)) = &repeated {
            // Keys up to this chunk's last query; the chunk's queries are their last `len`.
            let visible = n - s + start + len;
            let fused_options = AttentionModuleOptions {
                scale: Some(options.scale as f64),
                softcap: None,
                is_causal: true,
            };
            let qc = q.clone().narrow(2, start, len);
            let (kc, vc) = (
                kr.clone().narrow(2, 0, visible),
                vr.clone().narrow(2, 0, visible),
            );
            outputs.push(fused_by_head_groups(
                qc,
                kc,
                vc,
                fused_options,
                options.threads,
            ));
            start += len;
            continue;
        }
        let qc = q
            .clone()
            .narrow(2, start, len)
            .reshape([b, h_kv, g * len, d]);
        let (kc, vc) = if visible == n {
            (k.clone(), v.clone())
        } else {
            (
                k.clone().narrow(2, 0, visible),
                v.clone().narrow(2, 0, visible),
            )
        };
        let mut scores = qc.matmul(kc.swap_dims(2, 3)).mul_scalar(options.scale);
        let needs_mask = !sees_every_key(k_positions, visible, (first, last), options);
        if needs_mask {
            let bias: Vec<f32> = k_positions
                .iter()
                .flat_map(|head| mask_bias(rows, &head[..visible], options.sliding_window, g))
                .collect();
            let bias =
                Tensor::<B, 3>::from_data(TensorData::new(bias, [h_kv, g * len, visible]), &device)
                    .reshape([1, h_kv, g * len, visible]);
            scores = scores + bias;
        }
        let probs = softmax(scores, 3);
        outputs.push(probs.matmul(vc).reshape([b, h, len, d]));
        start += len;
    }
    Ok(if outputs.len() == 1 {
        outputs.remove(0)
    } else {
        Tensor::cat(outputs, 2)
    })
}

/// True when queries at positions `first..=last` all see the first `visible` keys of every
/// head: none lies after `first` and, with a sliding window, none is out of `last`'s window.
fn sees_every_key(
    k_positions: &[Vec<usize>],
    visible: usize,
    (first, last): (usize, usize),
    options: &AttentionOptions,
) -> bool {
    k_positions.iter().all(|head| {
        head[..visible].iter().all(|&p| p <= first)
            && options
                .sliding_window
                .is_none_or(|w| head[..visible].iter().all(|&p| p + w > last))
    })
}

/// Causal attention probabilities of the last `w` queries over all `n` keys (the "observation
/// window" of SnapKV, TOVA and relatives). The `m` query rows are the tokens of the last `m`
/// keys (a prefill: `m = n`; a decoding buffer: the tokens appended since the last compression),
/// so window query `i` sits at key index `n − w + i` and sees keys `0..=n − w + i`. Only `w × n`
/// scores are formed.
///
/// # Shapes
/// - `queries`: `[1, h_q, m, d]` (RoPE applied), `keys`: `[1, h_kv, n, d]`, `w ≤ m ≤ n`
/// - returns `[1, h_q, w, n]`
pub fn window_attention<B: Backend>(
    queries: &Tensor<B, 4>,
    keys: &Tensor<B, 4>,
    w: usize,
    scale: f32,
) -> Result<Tensor<B, 4>> {
    check_window("window_attention", queries, keys, w)?;
    #[cfg(feature = "flex")]
    if let Some(probs) = crate::cpu::attention::window(queries, keys, w, scale) {
        return Ok(probs);
    }
    let [_, h, m, d] = queries.dims();
    let [_, h_kv, n, _] = keys.dims();
    let g = h / h_kv;
    let q = queries
        .clone()
        .narrow(2, m - w, w)
        .reshape([1, h_kv, g * w, d]);
    // Every window query sees all keys before the window; only the last `w` columns need the
    // causal mask, added there at full shape (a broadcast add over all `n` columns is slow on
    // CPU backends).
    let keys_t = keys.clone().swap_dims(2, 3); // [1, h_kv, d, n]
    let before = (w < n).then(|| {
        q.clone()
            .matmul(keys_t.clone().narrow(3, 0, n - w))
            .mul_scalar(scale)
    });
    let rows: Vec<usize> = (n - w..n).collect();
    let bias: Vec<f32> = mask_bias(&rows, &rows, None, g).repeat(h_kv);
    let bias =
        Tensor::<B, 3>::from_data(TensorData::new(bias, [h_kv, g * w, w]), &queries.device())
            .reshape([1, h_kv, g * w, w]);
    let window = q.matmul(keys_t.narrow(3, n - w, w)).mul_scalar(scale) + bias;
    let scores = match before {
        Some(before) => Tensor::cat(vec![before, window], 3),
        None => window,
    };
    Ok(softmax(scores, 3).reshape([1, h, w, n]))
}

/// [`window_attention`] averaged over the `w` window queries: per query head, the mean
/// attention each key receives from the window (SnapKV's statistic). On the flex backend the
/// `w × n` probabilities of one head at a time stay in a thread's buffer.
///
/// # Shapes
/// - `queries`: `[1, h_q, m, d]` (RoPE applied), `keys`: `[1, h_kv, n, d]`, `w ≤ m ≤ n`
/// - returns `[1, h_q, n]`
pub fn window_attention_mean<B: Backend>(
    queries: &Tensor<B, 4>,
    keys: &Tensor<B, 4>,
    w: usize,
    scale: f32,
) -> Result<Tensor<B, 3>> {
    check_window("window_attention_mean", queries, keys, w)?;
    #[cfg(feature = "flex")]
    if let Some(mean) = crate::cpu::attention::window_mean(queries, keys, w, scale) {
        return Ok(mean);
    }
    let [_, h, _, _] = queries.dims();
    let n = keys.dims()[2];
    let probs = window_attention(queries, keys, w, scale)?;
    let ones = Tensor::<B, 4>::ones([1, 1, 1, w], &keys.device());
    Ok(ones.matmul(probs).div_scalar(w as f32).reshape([1, h, n]))
}

/// The shape checks of [`window_attention`] and [`window_attention_mean`].
fn check_window<B: Backend>(
    context: &'static str,
    queries: &Tensor<B, 4>,
    keys: &Tensor<B, 4>,
    w: usize,
) -> Result<()> {
    let [b, h, m, d] = queries.dims();
    let [kb, h_kv, n, kd] = keys.dims();
    if b != 1 || kb != 1 || m > n || kd != d || h_kv == 0 || h % h_kv != 0 {
        return Err(CoreError::Shape {
            context,
            detail: format!("queries {:?}, keys {:?}", queries.dims(), keys.dims()),
        });
    }
    if w == 0 || w > m {
        return Err(CoreError::Invalid {
            name: "window_size",
            detail: format!(
                "a window of {w} queries needs a context of at least {w} tokens, got {m}"
            ),
        });
    }
    Ok(())
}

/// Per query head, the attention each key receives summed over all queries of a causal
/// prefill (the column sums of the softmax matrix, H2O's statistic), computed `chunk` query rows
/// at a time so that only `chunk × n` scores exist at once. Query `i` at position `i` sees keys
/// `0..=i`.
///
/// # Shapes
/// - `queries`: `[1, h_q, n, d]` (RoPE applied), `keys`: `[1, h_kv, n, d]`
/// - returns `h_q` rows of `n` sums on the host
pub fn attention_column_sums<B: Backend>(
    queries: &Tensor<B, 4>,
    keys: &Tensor<B, 4>,
    scale: f32,
    max_score_elements: usize,
) -> Result<Vec<Vec<f32>>> {
    let [b, h, n, d] = queries.dims();
    let [kb, h_kv, kn, kd] = keys.dims();
    if b != 1 || kb != 1 || kn != n || kd != d || h_kv == 0 || h % h_kv != 0 {
        return Err(CoreError::Shape {
            context: "attention_column_sums",
            detail: format!("queries {:?}, keys {:?}", queries.dims(), keys.dims()),
        });
    }
    let g = h / h_kv;
    let chunk = (max_score_elements / (h * n.max(1))).clamp(1, n.max(1));
    let device = queries.device();
    let mut sums = vec![vec![0f32; n]; h];
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let visible = start + len;
        let q = queries
            .clone()
            .narrow(2, start, len)
            .reshape([1, h_kv, g * len, d]);
        let k = keys.clone().narrow(2, 0, visible);
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
        let rows: Vec<usize> = (start..visible).collect();
        let all: Vec<usize> = (0..visible).collect();
        let bias = Tensor::<B, 2>::from_data(
            TensorData::new(mask_bias(&rows, &all, None, g), [g * len, visible]),
            &device,
        )
        .reshape([1, 1, g * len, visible]);
        let column = softmax(scores + bias, 3)
            .reshape([h, len, visible])
            .sum_dim(1)
            .reshape([h * visible]);
        let host: Vec<f32> = column
            .into_data()
            .convert::<f32>()
            .into_vec()
            .map_err(|e| CoreError::Data(format!("{e:?}")))?;
        for (head, part) in sums.iter_mut().zip(host.chunks(visible)) {
            for (acc, x) in head.iter_mut().zip(part) {
                *acc += x;
            }
        }
        start += len;
    }
    Ok(sums)
}

/// The fused kernel over `threads` groups of heads run concurrently, joined along the heads.
fn fused_by_head_groups<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    options: AttentionModuleOptions,
    threads: usize,
) -> Tensor<B, 4> {
    let h = q.dims()[1];
    let groups = threads.clamp(1, h);
    if groups == 1 {
        return attention(q, k, v, None, None, options);
    }
    let per = h.div_ceil(groups);
    let parts: Vec<_> = (0..h)
        .step_by(per)
        .map(|first| {
            let width = per.min(h - first);
            (
                q.clone().narrow(1, first, width),
                k.clone().narrow(1, first, width),
                v.clone().narrow(1, first, width),
            )
        })
        .collect();
    let outputs: Vec<Tensor<B, 4>> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|(q, k, v)| scope.spawn(move || attention(q, k, v, None, None, options)))
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(t) => t,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    Tensor::cat(outputs, 1)
}

/// Repeats each KV head `g` times (`[b, h_kv, n, d]` → `[b, h_kv·g, n, d]`, HF `repeat_kv` order).
pub fn repeat_kv<B: Backend>(x: Tensor<B, 4>, g: usize) -> Tensor<B, 4> {
    if g == 1 {
        return x;
    }
    let [b, h_kv, n, d] = x.dims();
    let x = x.unsqueeze_dim::<5>(2);
    Tensor::cat(vec![x; g], 2).reshape([b, h_kv * g, n, d])
}

/// Additive mask (`0` visible, `-inf` hidden) of `[g · rows, keys]`, the rows block repeated for
/// each query head of a group.
fn mask_bias(rows: &[usize], keys: &[usize], window: Option<usize>, g: usize) -> Vec<f32> {
    let mut block = Vec::with_capacity(rows.len() * keys.len());
    for &qp in rows {
        block.extend(keys.iter().map(|&kp| {
            let in_window = window.is_none_or(|w| kp + w > qp);
            if kp <= qp && in_window {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        }));
    }
    let mut out = Vec::with_capacity(block.len() * g);
    for _ in 0..g {
        out.extend_from_slice(&block);
    }
    out
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    type B = Flex;

    /// Reference: every query head on its own, explicit repeat of KV heads, full mask.
    fn naive(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, scale: f32) -> Tensor<B, 4> {
        let [b, h, s, d] = q.dims();
        let [_, h_kv, n, _] = k.dims();
        let g = h / h_kv;
        let k = k
            .unsqueeze_dim::<5>(2)
            .expand([b, h_kv, g, n, d])
            .reshape([b, h, n, d]);
        let v = v
            .unsqueeze_dim::<5>(2)
            .expand([b, h_kv, g, n, d])
            .reshape([b, h, n, d]);
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
        let past = n - s;
        let mut bias = vec![0f32; s * n];
        for i in 0..s {
            for j in (past + i + 1)..n {
                bias[i * n + j] = f32::NEG_INFINITY;
            }
        }
        let bias = Tensor::<B, 2>::from_data(TensorData::new(bias, [s, n]), &scores.device());
        let scores = scores + bias.reshape([1, 1, s, n]);
        softmax(scores, 3).matmul(v)
    }

    #[test]
    fn chunked_equals_naive_with_past() {
        let dev = Default::default();
        let (b, h, h_kv, s, past, d) = (1, 6, 2, 21, 4, 8);
        let n = past + s;
        let q = Tensor::<B, 4>::random([b, h, s, d], Distribution::Normal(0.0, 1.0), &dev);
        let k = Tensor::<B, 4>::random([b, h_kv, n, d], Distribution::Normal(0.0, 1.0), &dev);
        let v = Tensor::<B, 4>::random([b, h_kv, n, d], Distribution::Normal(0.0, 1.0), &dev);
        let qp: Vec<usize> = (past..n).collect();
        let kp: Vec<usize> = (0..n).collect();
        let want = naive(q.clone(), k.clone(), v.clone(), 0.3);
        for (max, threads) in [(1usize, 1), (250, 2), (400, 3), (1 << 20, 1), (1 << 20, 4)] {
            let mut opts = AttentionOptions::new(0.3);
            opts.max_score_elements = max;
            opts.threads = threads;
            let heads = [kp.clone(), kp.clone()];
            let got =
                chunked_attention(q.clone(), k.clone(), v.clone(), &qp, &heads, &opts).expect("ok");
            let diff = (got - want.clone()).abs().max().into_scalar();
            assert!(diff < 1e-5, "max_score_elements={max}: diff {diff}");
        }
    }

    #[test]
    fn explicit_mask_path_equals_naive() {
        // Keys given in a shuffled order with their positions: only the explicit-mask path applies.
        let dev = Default::default();
        let (b, h, h_kv, s, past, d) = (1, 4, 2, 5, 6, 8);
        let n = past + s;
        let q = Tensor::<B, 4>::random([b, h, s, d], Distribution::Normal(0.0, 1.0), &dev);
        let k = Tensor::<B, 4>::random([b, h_kv, n, d], Distribution::Normal(0.0, 1.0), &dev);
        let v = Tensor::<B, 4>::random([b, h_kv, n, d], Distribution::Normal(0.0, 1.0), &dev);
        let want = naive(q.clone(), k.clone(), v.clone(), 0.5);
        // Each KV head stores its keys in its own order: head 0 reversed, head 1 rotated.
        let orders: Vec<Vec<usize>> = vec![
            (0..n).rev().collect(),
            (0..n).map(|i| (i + 3) % n).collect(),
        ];
        let permute = |t: &Tensor<B, 4>| {
            let heads = orders
                .iter()
                .enumerate()
                .map(|(head, order)| {
                    let idx = Tensor::<B, 1, burn::tensor::Int>::from_data(
                        TensorData::new(order.iter().map(|&i| i as i64).collect::<Vec<_>>(), [n]),
                        &dev,
                    );
                    t.clone().narrow(1, head, 1).select(2, idx)
                })
                .collect();
            Tensor::cat(heads, 1)
        };
        let (ks, vs) = (permute(&k), permute(&v));
        let qp: Vec<usize> = (past..n).collect();
        for max in [1usize, 1 << 20] {
            let mut opts = AttentionOptions::new(0.5);
            opts.max_score_elements = max;
            let got = chunked_attention(q.clone(), ks.clone(), vs.clone(), &qp, &orders, &opts)
                .expect("ok");
            let diff = (got - want.clone()).abs().max().into_scalar();
            assert!(diff < 1e-5, "max_score_elements={max}: diff {diff}");
        }
    }

    /// Reference: the full causal attention probabilities (`[1, h, n, n]`) with explicitly
    /// repeated KV heads.
    fn full_causal_probabilities(q: &Tensor<B, 4>, k: &Tensor<B, 4>, scale: f32) -> Tensor<B, 4> {
        let [_, h, n, d] = q.dims();
        let h_kv = k.dims()[1];
        let kr = k
            .clone()
            .unsqueeze_dim::<5>(2)
            .expand([1, h_kv, h / h_kv, n, d])
            .reshape([1, h, n, d]);
        let mut bias = vec![0f32; n * n];
        for i in 0..n {
            for j in i + 1..n {
                bias[i * n + j] = f32::NEG_INFINITY;
            }
        }
        let bias = Tensor::<B, 2>::from_data(TensorData::new(bias, [n, n]), &q.device())
            .reshape([1, 1, n, n]);
        softmax(
            q.clone().matmul(kr.swap_dims(2, 3)).mul_scalar(scale) + bias,
            3,
        )
    }

    #[test]
    fn window_attention_equals_the_last_rows_of_full_attention() {
        let dev = Default::default();
        let (h, h_kv, n, d, w) = (4, 2, 9, 8, 3);
        let q = Tensor::<B, 4>::random([1, h, n, d], Distribution::Normal(0.0, 1.0), &dev);
        let k = Tensor::<B, 4>::random([1, h_kv, n, d], Distribution::Normal(0.0, 1.0), &dev);
        let got = window_attention(&q, &k, w, 0.35).expect("ok");
        let full = full_causal_probabilities(&q, &k, 0.35);
        let want = full.clone().narrow(2, n - w, w);
        let diff = (got - want).abs().max().into_scalar();
        assert!(diff < 1e-6, "{diff}");
        assert!(window_attention(&q, &k.clone(), n + 1, 1.0).is_err());
        // the mean over the window rows (one row; rows split evenly and unevenly in halves)
        for w in [1, 3, 4] {
            let mean = window_attention_mean(&q, &k, w, 0.35).expect("ok");
            let want = full
                .clone()
                .narrow(2, n - w, w)
                .mean_dim(2)
                .reshape([1, h, n]);
            let diff = (mean - want).abs().max().into_scalar();
            assert!(diff < 1e-6, "mean of {w} rows: {diff}");
        }
        assert!(window_attention_mean(&q, &k, 0, 1.0).is_err());
    }

    /// The window mean at the head dimensions of the AVX-512 kernel: a group split into blocks
    /// of two heads and one (w = 64), blocks whose lanes are not whole vectors, one row.
    #[test]
    fn window_attention_mean_equals_full_attention_at_wide_heads() {
        let dev = Default::default();
        for (h, h_kv, n, d, w) in [(9, 3, 300, 64, 64), (3, 1, 150, 128, 50), (4, 2, 70, 64, 1)] {
            let q = Tensor::<B, 4>::random([1, h, n, d], Distribution::Normal(0.0, 1.0), &dev);
            let k = Tensor::<B, 4>::random([1, h_kv, n, d], Distribution::Normal(0.0, 1.0), &dev);
            let scale = (d as f32).powf(-0.5);
            let full = full_causal_probabilities(&q, &k, scale);
            let want = full.narrow(2, n - w, w).mean_dim(2).reshape([1, h, n]);
            let mean = window_attention_mean(&q, &k, w, scale).expect("ok");
            let diff = (mean - want).abs().max().into_scalar();
            assert!(diff < 1e-6, "{h} heads, d {d}, w {w}: {diff}");
        }
    }

    #[test]
    fn sliding_window_hides_old_keys() {
        let bias = mask_bias(&[5], &[0, 1, 2, 3, 4, 5], Some(3), 1);
        let visible: Vec<bool> = bias.iter().map(|b| *b == 0.0).collect();
        assert_eq!(visible, [false, false, false, true, true, true]);
    }

    #[test]
    fn rejects_bad_shapes() {
        let dev = Default::default();
        let q = Tensor::<B, 4>::zeros([1, 5, 2, 4], &dev);
        let k = Tensor::<B, 4>::zeros([1, 2, 2, 4], &dev);
        let r = chunked_attention(
            q,
            k.clone(),
            k,
            &[0, 1],
            &[vec![0, 1], vec![0, 1]],
            &AttentionOptions::new(1.0),
        );
        assert!(r.is_err());
    }

    #[test]
    fn column_sums_equal_those_of_the_full_matrix() {
        let dev = Default::default();
        let (h, h_kv, n, d) = (4, 2, 11, 8);
        let q = Tensor::<B, 4>::random([1, h, n, d], Distribution::Normal(0.0, 1.0), &dev);
        let k = Tensor::<B, 4>::random([1, h_kv, n, d], Distribution::Normal(0.0, 1.0), &dev);
        let full = window_attention(&q, &k, n, 0.3).expect("full matrix"); // [1, h, n, n]
        let want: Vec<f32> = full.sum_dim(2).into_data().to_vec().expect("f32");
        for max in [1usize, 50, 1 << 20] {
            let got = attention_column_sums(&q, &k, 0.3, max).expect("sums");
            for (a, b) in got.iter().flatten().zip(&want) {
                assert!((a - b).abs() < 1e-5, "max {max}: {a} vs {b}");
            }
        }
        // every query row sums to 1, so the columns sum to n
        let total: f32 = attention_column_sums(&q, &k, 0.3, 64).expect("sums")[0]
            .iter()
            .sum();
        assert!((total - n as f32).abs() < 1e-4);
    }
}
