//! The hook through which a press compresses a layer's cache during prefill.
//!
//! The model calls [`Press::compress`] once per layer, after that layer's attention output was
//! computed over the full context and its keys/values were written to the cache. Later layers
//! therefore see the uncompressed hidden states; only later forwards (question, decoding) read
//! the compressed cache.

use burn::tensor::{Tensor, backend::Backend};

use crate::cache::LayerCache;
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
}

/// A KV-cache compression method applied layer by layer during prefill.
pub trait Press<B: Backend>: Send + Sync {
    /// Compresses `cache` (the layer's full prefilled cache) in place.
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()>;
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

/// Per head, the cache indices of the `k` highest scores, returned in ascending (positional)
/// order. Entries flagged in `protected` (empty: none) rank above all others; ties go to the
/// lower index. `scores` is `h_kv` rows of `n`.
pub fn top_k_per_head(scores: &[Vec<f32>], protected: &[bool], k: usize) -> Vec<Vec<usize>> {
    let is_protected = |i: usize| protected.get(i).copied().unwrap_or(false);
    scores
        .iter()
        .map(|row| {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|&a, &b| {
                is_protected(b)
                    .cmp(&is_protected(a))
                    .then(row[b].total_cmp(&row[a]))
                    .then(a.cmp(&b))
            });
            idx.truncate(k.min(row.len()));
            idx.sort_unstable();
            idx
        })
        .collect()
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
    let [_, h_kv, n, _] = keys.dims();
    let scores = scorer.score(inputs, keys, values)?;
    if scores.dims() != [1, h_kv, n] {
        return Err(crate::error::CoreError::Shape {
            context: "Scorer::score",
            detail: format!("scores {:?} for {h_kv} heads × {n} entries", scores.dims()),
        });
    }
    let flat: Vec<f32> = scores
        .into_data()
        .convert::<f32>()
        .into_vec()
        .map_err(|e| crate::error::CoreError::Data(format!("{e:?}")))?;
    let rows: Vec<Vec<f32>> = flat.chunks(n).map(<[f32]>::to_vec).collect();
    let protected = scorer.protected(inputs, n)?;
    Ok(top_k_per_head(&rows, &protected, budget(n).clamp(1, n)))
}

/// Scores the layer with `scorer` and keeps [`top_scored_indices`] in every KV head.
pub fn keep_top_scored<B: Backend, S: Scorer<B> + ?Sized>(
    scorer: &S,
    inputs: &LayerInputs<'_, B>,
    cache: &mut LayerCache<B>,
    budget: impl FnOnce(usize) -> usize,
) -> Result<()> {
    let Some((keys, values)) = cache.keys_values() else {
        return Ok(());
    };
    let kept = top_scored_indices(scorer, inputs, keys, values, budget)?;
    cache.keep(&kept)
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
    fn ratios_outside_the_unit_interval_are_refused() {
        assert!(check_ratio(1.0).is_err());
        assert!(check_ratio(-0.1).is_err());
        assert!(check_ratio(f64::NAN).is_err());
        assert!(check_ratio(0.0).is_ok());
    }
}
