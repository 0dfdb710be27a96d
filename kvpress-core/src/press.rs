//! The hook through which a press compresses a layer's cache during prefill.
//!
//! The model calls [`Press::compress`] once per layer, after that layer's attention output was
//! computed over the full context and its keys/values were written to the cache. Later layers
//! therefore see the uncompressed hidden states; only later forwards (question, decoding) read
//! the compressed cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use burn::tensor::{Tensor, backend::Backend};

use crate::cache::{KvCache, LayerCache};
use crate::error::Result;
use crate::rope::RotaryEmbedding;

/// What a press may read about the layer being compressed.
///
/// # Shapes
/// - `hidden_states`: `[b, n, hidden]`, the attention input (after the input RMSNorm)
/// - `queries`: `[b, h_q, n, d]`, after RoPE; `queries_pre_rope`: the same before RoPE (after
///   the q-norm of Qwen3)
/// - `positions`: `n` absolute positions of the tokens of this forward
#[derive(Debug)]
pub struct LayerInputs<'a, B: Backend> {
    /// Index of the decoder layer.
    pub layer: usize,
    /// Number of decoder layers of the model.
    pub num_layers: usize,
    /// Attention-input hidden states.
    pub hidden_states: &'a Tensor<B, 3>,
    /// Post-RoPE queries of this forward.
    pub queries: &'a Tensor<B, 4>,
    /// Pre-RoPE queries of this forward.
    pub queries_pre_rope: &'a Tensor<B, 4>,
    /// Absolute positions of the tokens of this forward.
    pub positions: &'a [usize],
    /// The model's rotary embedding, to evaluate RoPE at any position.
    pub rope: &'a RotaryEmbedding,
    /// The layer's projection weights.
    pub weights: AttentionWeights<'a, B>,
    /// Trailing tokens of this prefill that are the question (query-aware compression: the
    /// question is prefilled with the context); 0 otherwise.
    pub question_tokens: usize,
}

/// The projection weights of one attention layer, in the `[in, out]` layout (`y = x · W`).
///
/// # Shapes
/// - `q_proj`: `[hidden, h_q · d]`, `k_proj`: `[hidden, h_kv · d]`
/// - `o_proj`: `[h_q · d, hidden]` (rows `h·d .. (h+1)·d` read query head `h`'s output)
#[derive(Debug)]
pub struct AttentionWeights<'a, B: Backend> {
    /// W_Q.
    pub q_proj: &'a Tensor<B, 2>,
    /// W_K.
    pub k_proj: &'a Tensor<B, 2>,
    /// W_O.
    pub o_proj: &'a Tensor<B, 2>,
}

impl<B: Backend> Clone for AttentionWeights<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for AttentionWeights<'_, B> {}

/// A KV-cache compression method applied layer by layer, during prefill and (for
/// decoding-time presses) after every later forward.
pub trait Press<B: Backend>: Send + Sync {
    /// Compresses `cache` (the layer's full prefilled cache) in place.
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()>;

    /// Called once per layer after every forward that follows the prefill (question tokens,
    /// generated tokens), with that forward's inputs and the layer's cache. Default: nothing.
    fn compress_decoding(
        &self,
        _inputs: &LayerInputs<'_, B>,
        _cache: &mut LayerCache<B>,
    ) -> Result<()> {
        Ok(())
    }

    /// True when [`Press::compress_decoding`] changes the cache (so one compressed context
    /// cannot serve several questions).
    fn compresses_during_decoding(&self) -> bool {
        false
    }

    /// Forgets state kept across forwards; called before each new prefill. Default: nothing.
    fn reset(&self) {}

    /// Called once after the prefill with the whole model at hand, for presses that score the
    /// context with extra forwards (KVzip). `context_ids` are the prefilled tokens. Default:
    /// nothing.
    fn after_prefill(
        &self,
        _model: &dyn ContextModel<B>,
        _context_ids: &[u32],
        _cache: &mut KvCache<B>,
    ) -> Result<()> {
        Ok(())
    }
}

/// What a press that works on the whole prefilled context may do with the model.
pub trait ContextModel<B: Backend> {
    /// Token ids of `text`, without special tokens added.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;

    /// The chat template's text before and after a user message (`("", "\n")` without a
    /// template), as the pipeline splits it.
    fn template_parts(&self) -> Result<(String, String)>;

    /// Runs `ids` at `positions` through the model on top of `cache`; `hook`'s
    /// [`Press::compress_decoding`] is called on every layer after its attention.
    fn forward(
        &self,
        ids: &[u32],
        positions: &[usize],
        cache: &mut KvCache<B>,
        hook: &dyn Press<B>,
    ) -> Result<()>;
}

/// Scores every cached entry of a layer; higher means more worth keeping.
pub trait Scorer<B: Backend>: Send + Sync {
    /// Scores `[1, h_kv, n]` for keys/values `[1, h_kv, n, d]`.
    fn score(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>>;

    /// Entries (of `n`, shared by all heads) that are always kept, whatever their score: sinks,
    /// observation windows. Empty: none.
    fn protected(&self, _inputs: &LayerInputs<'_, B>, _n: usize) -> Result<Vec<bool>> {
        Ok(Vec::new())
    }

    /// True when an entry's score depends only on its own key and value, so it never changes
    /// once computed (decoding-time presses then score only the new entries).
    fn scores_are_per_token(&self) -> bool {
        false
    }
}

impl<B: Backend, S: Scorer<B> + ?Sized> Scorer<B> for Box<S> {
    fn score(
        &self,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        values: &Tensor<B, 4>,
    ) -> Result<Tensor<B, 3>> {
        (**self).score(inputs, keys, values)
    }

    fn protected(&self, inputs: &LayerInputs<'_, B>, n: usize) -> Result<Vec<bool>> {
        (**self).protected(inputs, n)
    }

    fn scores_are_per_token(&self) -> bool {
        (**self).scores_are_per_token()
    }
}

impl<B: Backend, P: Press<B> + ?Sized> Press<B> for Box<P> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        (**self).compress(inputs, cache)
    }

    fn compress_decoding(
        &self,
        inputs: &LayerInputs<'_, B>,
        cache: &mut LayerCache<B>,
    ) -> Result<()> {
        (**self).compress_decoding(inputs, cache)
    }

    fn compresses_during_decoding(&self) -> bool {
        (**self).compresses_during_decoding()
    }

    fn reset(&self) {
        (**self).reset()
    }

    fn after_prefill(
        &self,
        model: &dyn ContextModel<B>,
        context_ids: &[u32],
        cache: &mut KvCache<B>,
    ) -> Result<()> {
        (**self).after_prefill(model, context_ids, cache)
    }
}

/// Entries kept out of `n` at compression ratio `ratio`: `max(1, ⌊n·(1 − ratio)⌋)` (kvpress 0.5.5).
pub fn kept_count(n: usize, ratio: f64) -> usize {
    ((n as f64 * (1.0 - ratio)) as usize).max(1).min(n)
}

/// Checks that a compression ratio lies in `[0, 1)`.
pub fn check_ratio(ratio: f64) -> Result<()> {
    if (0.0..1.0).contains(&ratio) {
        Ok(())
    } else {
        Err(crate::error::CoreError::Invalid {
            name: "compression_ratio",
            detail: format!("must be in [0, 1), got {ratio}"),
        })
    }
}

/// Checks that a size parameter (chunk length, block size, …) is positive.
pub fn check_positive(name: &'static str, value: usize) -> Result<()> {
    if value > 0 {
        Ok(())
    } else {
        Err(crate::error::CoreError::Invalid {
            name,
            detail: "must be positive".into(),
        })
    }
}

/// The positions [`top_k_per_head`] tells apart: 2³¹ entries per head.
const POSITION_MASK: u64 = (1 << 31) - 1;

/// Per head, the cache indices of the `k` highest scores, returned in ascending (positional)
/// order. Entries flagged in `protected` (empty: none) rank above all others; ties go to the
/// lower index. `scores` is `h_kv` rows of `n`.
pub fn top_k_per_head(scores: &[Vec<f32>], protected: &[bool], k: usize) -> Vec<Vec<usize>> {
    // the heads by both threads on the flex backend
    #[cfg(feature = "flex")]
    {
        use rayon::prelude::*;
        scores
            .par_iter()
            .map(|row| top_k_of_row(row, protected, k))
            .collect()
    }
    #[cfg(not(feature = "flex"))]
    {
        scores
            .iter()
            .map(|row| top_k_of_row(row, protected, k))
            .collect()
    }
}

/// [`top_k_per_head`] for one head.
fn top_k_of_row(row: &[f32], protected: &[bool], k: usize) -> Vec<usize> {
    let k = k.min(row.len());
    let is_forced = |i: usize| protected.get(i).copied().unwrap_or(false);
    // `ranked`'s order as one integer per entry, descending: the protected flag (bit
    // 63), the score in an order-preserving encoding (that of `total_cmp`, bits 31–62),
    // the position reversed (ties to the lower; 31 bits, beyond any cache); the first
    // k found without sorting the rest (a total order: the same set)
    let mut keys: Vec<u64> = row
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let bits = x.to_bits();
            let ordered = if bits >> 31 == 1 {
                !bits
            } else {
                bits | 1 << 31
            };
            (u64::from(is_forced(i)) << 63)
                | (u64::from(ordered) << 31)
                | (POSITION_MASK - (i as u64 & POSITION_MASK))
        })
        .collect();
    if k > 0 && k < keys.len() {
        keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
    }
    let mut idx: Vec<usize> = keys[..k]
        .iter()
        .map(|&key| (POSITION_MASK - (key & POSITION_MASK)) as usize)
        .collect();
    idx.sort_unstable();
    idx
}

/// Indices of `row` from the most to the least worth keeping: flagged entries of `forced`
/// (missing flags: false) first, then by descending score, ties to the lower index.
pub fn ranked(row: &[f32], forced: &[bool]) -> Vec<usize> {
    let is_forced = |i: usize| forced.get(i).copied().unwrap_or(false);
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| {
        is_forced(b)
            .cmp(&is_forced(a))
            .then(row[b].total_cmp(&row[a]))
            .then(a.cmp(&b))
    });
    idx
}

/// The head-wise budget step shared by AdaKV-style presses: over all heads of a layer
/// together, keeps the `total` best entries — `forced[h][i]` first, then the highest
/// `scores[h][i]`, ties to the lower position and then the lower head — and returns each head's
/// kept indices in ascending order. Heads may end up with different counts.
pub fn top_k_flattened(scores: &[Vec<f32>], forced: &[Vec<bool>], total: usize) -> Vec<Vec<usize>> {
    let is_forced = |h: usize, i: usize| {
        forced
            .get(h)
            .and_then(|f| f.get(i))
            .copied()
            .unwrap_or(false)
    };
    let mut all: Vec<(usize, usize)> = scores
        .iter()
        .enumerate()
        .flat_map(|(h, row)| (0..row.len()).map(move |i| (h, i)))
        .collect();
    let order = |&(ha, a): &(usize, usize), &(hb, b): &(usize, usize)| {
        is_forced(hb, b)
            .cmp(&is_forced(ha, a))
            .then(scores[hb][b].total_cmp(&scores[ha][a]))
            .then(a.cmp(&b))
            .then(ha.cmp(&hb))
    };
    let total = total.min(all.len());
    if total > 0 && total < all.len() {
        // the first `total` in that order, the rest left unsorted (a total order: the same set)
        all.select_nth_unstable_by(total - 1, order);
    }
    let mut kept = vec![Vec::new(); scores.len()];
    for &(h, i) in all.iter().take(total) {
        kept[h].push(i);
    }
    for head in &mut kept {
        head.sort_unstable();
    }
    kept
}

/// Scores of one layer read back to the host: `h_kv` rows of `n`, and the scorer's protected
/// mask (`n` flags shared by all heads, empty: none).
pub struct HostScores {
    /// `[h_kv][n]` scores, higher = keep.
    pub rows: Vec<Vec<f32>>,
    /// Entries always kept.
    pub protected: Vec<bool>,
}

impl HostScores {
    /// The protected mask as one row per head (what [`top_k_flattened`] takes).
    pub fn protected_per_head(&self) -> Vec<Vec<bool>> {
        let n = self.rows.first().map_or(0, Vec::len);
        let row: Vec<bool> = (0..n)
            .map(|i| self.protected.get(i).copied().unwrap_or(false))
            .collect();
        vec![row; self.rows.len()]
    }
}

/// Runs `scorer` on keys/values `[1, h_kv, n, d]` and reads its scores back to the host.
pub fn host_scores<B: Backend, S: Scorer<B> + ?Sized>(
    scorer: &S,
    inputs: &LayerInputs<'_, B>,
    keys: &Tensor<B, 4>,
    values: &Tensor<B, 4>,
) -> Result<HostScores> {
    let [_, h_kv, n, _] = keys.dims();
    let scores = scorer.score(inputs, keys, values)?;
    if scores.dims() != [1, h_kv, n] {
        return Err(crate::error::CoreError::Shape {
            context: "Scorer::score",
            detail: format!("scores {:?} for {h_kv} heads × {n} entries", scores.dims()),
        });
    }
    let flat = to_host(scores)?;
    Ok(HostScores {
        rows: flat.chunks(n.max(1)).map(<[f32]>::to_vec).collect(),
        protected: scorer.protected(inputs, n)?,
    })
}

/// Standardises `values` in place: `(x − mean) / max(std, 1e-6)` with the unbiased standard
/// deviation over all of them (kvpress's global z-score).
pub fn z_scores(values: &mut [f32]) {
    let n = values.len();
    if n == 0 {
        return;
    }
    let mean = values.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
    let var = values
        .iter()
        .map(|&x| (x as f64 - mean).powi(2))
        .sum::<f64>()
        / (n.max(2) - 1) as f64;
    let std = var.sqrt().max(1e-6);
    for x in values.iter_mut() {
        *x = ((*x as f64 - mean) / std) as f32;
    }
}

/// A tensor's values as host `f32`s.
pub fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| crate::error::CoreError::Data(format!("{e:?}")))
}

/// Any [`Scorer`] as a press: keeps the top `max(1, ⌊n·(1 − ratio)⌋)` entries of every KV head.
#[derive(Debug, Clone)]
pub struct ScorerPress<S> {
    /// The scorer.
    pub scorer: S,
    /// Fraction of entries removed, in `[0, 1)`.
    pub compression_ratio: f64,
}

impl<S> ScorerPress<S> {
    /// A press removing `compression_ratio` of every layer's entries by `scorer`'s scores.
    pub fn new(scorer: S, compression_ratio: f64) -> Result<Self> {
        check_ratio(compression_ratio)?;
        Ok(Self {
            scorer,
            compression_ratio,
        })
    }
}

impl<B: Backend, S: Scorer<B>> Press<B> for ScorerPress<S> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        if self.compression_ratio == 0.0 {
            return Ok(());
        }
        keep_top_scored(&self.scorer, inputs, cache, |n| {
            kept_count(n, self.compression_ratio)
        })
    }
}

/// Scores keys/values (`[1, h_kv, n, d]`) with `scorer` and returns, per KV head, the cache
/// indices of its protected entries and then of the best-scored ones, `budget(n)` in all, in
/// ascending order.
pub fn top_scored_indices<B: Backend, S: Scorer<B> + ?Sized>(
    scorer: &S,
    inputs: &LayerInputs<'_, B>,
    keys: &Tensor<B, 4>,
    values: &Tensor<B, 4>,
    budget: impl FnOnce(usize) -> usize,
) -> Result<Vec<Vec<usize>>> {
    let n = keys.dims()[2];
    let scores = host_scores(scorer, inputs, keys, values)?;
    Ok(top_k_per_head(
        &scores.rows,
        &scores.protected,
        budget(n).clamp(1, n),
    ))
}

/// Scores the layer with `scorer` and keeps [`top_scored_indices`] in every KV head.
pub fn keep_top_scored<B: Backend, S: Scorer<B> + ?Sized>(
    scorer: &S,
    inputs: &LayerInputs<'_, B>,
    cache: &mut LayerCache<B>,
    budget: impl FnOnce(usize) -> usize,
) -> Result<()> {
    let Some((keys, values)) = cache.keys_values()? else {
        return Ok(());
    };
    let kept = top_scored_indices(scorer, inputs, &keys, &values, budget)?;
    cache.keep(&kept)
}

/// A press that measures the time spent inside another.
pub struct TimedPress<'a, B: Backend> {
    inner: &'a dyn Press<B>,
    nanos: AtomicU64,
}

impl<'a, B: Backend> TimedPress<'a, B> {
    /// Wraps `inner`.
    pub fn new(inner: &'a dyn Press<B>) -> Self {
        Self {
            inner,
            nanos: AtomicU64::new(0),
        }
    }

    /// Seconds spent inside the wrapped press so far.
    pub fn seconds(&self) -> f64 {
        self.nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }
}

impl<B: Backend> Press<B> for TimedPress<'_, B> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        let start = Instant::now();
        let result = self.inner.compress(inputs, cache);
        let spent = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(spent, Ordering::Relaxed);
        result
    }

    fn compress_decoding(
        &self,
        inputs: &LayerInputs<'_, B>,
        cache: &mut LayerCache<B>,
    ) -> Result<()> {
        self.inner.compress_decoding(inputs, cache)
    }

    fn compresses_during_decoding(&self) -> bool {
        self.inner.compresses_during_decoding()
    }

    fn reset(&self) {
        self.inner.reset()
    }

    fn after_prefill(
        &self,
        model: &dyn ContextModel<B>,
        context_ids: &[u32],
        cache: &mut KvCache<B>,
    ) -> Result<()> {
        let start = Instant::now();
        let result = self.inner.after_prefill(model, context_ids, cache);
        let spent = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(spent, Ordering::Relaxed);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_count_follows_kvpress() {
        assert_eq!(kept_count(1287, 0.5), 643);
        assert_eq!(kept_count(10, 0.25), 7);
        assert_eq!(kept_count(1, 0.9), 1);
        assert_eq!(kept_count(100, 0.0), 100);
    }

    #[test]
    fn top_k_breaks_ties_by_position_and_returns_positional_order() {
        let scores = vec![vec![0.1, 0.9, 0.5, 0.9, 0.2], vec![1.0, 1.0, 1.0, 0.0, 1.0]];
        assert_eq!(
            top_k_per_head(&scores, &[], 3),
            vec![vec![1, 2, 3], vec![0, 1, 2]]
        );
        let protected = [false, false, false, false, true];
        assert_eq!(
            top_k_per_head(&scores, &protected, 2),
            vec![vec![1, 4], vec![0, 4]]
        );
    }

    #[test]
    fn top_k_equals_the_first_k_of_ranked() {
        // ties, signed zeros, infinities and protected entries
        let values = [
            0.5,
            -1.0,
            0.5,
            f32::INFINITY,
            -0.0,
            0.0,
            2.0,
            -3.5,
            f32::NEG_INFINITY,
        ];
        let row: Vec<f32> = (0..200).map(|i| values[(i * 7) % values.len()]).collect();
        let protected: Vec<bool> = (0..200).map(|i| i % 37 == 5).collect();
        for k in [0, 1, 7, 100, 199, 200] {
            let mut want: Vec<usize> = ranked(&row, &protected)[..k].to_vec();
            want.sort_unstable();
            assert_eq!(
                top_k_per_head(std::slice::from_ref(&row), &protected, k),
                vec![want],
                "k {k}"
            );
        }
    }

    #[test]
    fn flattened_budget_goes_to_the_best_entries_of_any_head() {
        let scores = vec![vec![0.9, 0.8, 0.7, 0.1], vec![0.2, 0.3, 0.95, 0.0]];
        // 4 of 8: 0.95 (h1), 0.9, 0.8, 0.7 (h0)
        assert_eq!(
            top_k_flattened(&scores, &[], 4),
            vec![vec![0, 1, 2], vec![2]]
        );
        // forcing h1's two lowest entries takes two slots first
        let forced = vec![vec![false; 4], vec![false, false, true, true]];
        assert_eq!(
            top_k_flattened(&scores, &forced, 4),
            vec![vec![0, 1], vec![2, 3]]
        );
        // ties: lower position first, then lower head
        let ties = vec![vec![0.5, 0.5], vec![0.5, 0.5]];
        assert_eq!(top_k_flattened(&ties, &[], 3), vec![vec![0, 1], vec![0]]);
    }

    #[test]
    fn ratios_outside_the_unit_interval_are_refused() {
        assert!(check_ratio(1.0).is_err());
        assert!(check_ratio(-0.1).is_err());
        assert!(check_ratio(f64::NAN).is_err());
        assert!(check_ratio(0.0).is_ok());
    }
}
