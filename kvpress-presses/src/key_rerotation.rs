//! KeyRerotationPress (kvpress `key_rerotation`): after a scorer's selection, the kept keys of
//! each head are re-rotated so that they sit at contiguous positions `0..n_kept` (as HF's
//! SinkCache and FINCH do); the pipeline then places the question at `n_kept`.
//!
//! A kept key rotated for position `p_old` becomes the key for `p_new` (its rank among the
//! kept entries) by a further rotation of `Δ = p_new − p_old`: `k·cos(Δθ) + rotate_half(k)·
//! sin(Δθ)`, the composition `R(p_new) = R(Δ)·R(p_old)`.

use burn::tensor::backend::Backend;
use kvpress_core::error::Result;
use kvpress_core::press::{check_ratio, kept_count};
use kvpress_core::{LayerCache, LayerInputs, Press, Scorer, top_scored_indices};

/// The key re-rotation press over scorer `S`.
#[derive(Debug, Clone)]
pub struct KeyRerotation<S> {
    /// The scorer.
    pub scorer: S,
    /// Fraction of entries removed, in `[0, 1)`.
    pub compression_ratio: f64,
}

impl<S> KeyRerotation<S> {
    /// Key re-rotation over `scorer` at `compression_ratio`.
    pub fn new(scorer: S, compression_ratio: f64) -> Result<Self> {
        check_ratio(compression_ratio)?;
        Ok(Self {
            scorer,
            compression_ratio,
        })
    }
}

impl<B: Backend, S: Scorer<B>> Press<B> for KeyRerotation<S> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> Result<()> {
        if self.compression_ratio == 0.0 {
            return Ok(());
        }
        let Some((ref keys, ref values)) = cache.keys_values()? else {
            return Ok(());
        };
        let kept = top_scored_indices(&self.scorer, inputs, keys, values, |n| {
            kept_count(n, self.compression_ratio)
        })?;
        cache.keep(&kept)?;
        rerotate_to_front(inputs, cache)
    }
}

/// Re-rotates every head's entries (in cache order, ascending positions) to positions
/// `0..kept` and makes `kept` the next position.
pub(crate) fn rerotate_to_front<B: Backend>(
    inputs: &LayerInputs<'_, B>,
    cache: &mut LayerCache<B>,
) -> Result<()> {
    let old = cache.positions().to_vec();
    let n_kept = old.first().map_or(0, Vec::len);
    let deltas: Vec<Vec<i64>> = old
        .iter()
        .map(|head| {
            head.iter()
                .enumerate()
                .map(|(new, &p)| new as i64 - p as i64)
                .collect()
        })
        .collect();
    let mut rotated = Ok(());
    cache.map_keys(|k| match inputs.rope.rotate_keys(k.clone(), &deltas) {
        Ok(r) => r,
        Err(e) => {
            rotated = Err(e);
            k
        }
    })?;
    rotated?;
    cache.relabel_positions(vec![(0..n_kept).collect(); old.len()], n_kept)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::knorm::Knorm;
    use crate::test_support::Fixture;
    use burn::tensor::{Int, Tensor, TensorData};
    use kvpress_core::RotaryEmbedding;

    #[test]
    fn kept_keys_equal_pre_rope_keys_rotated_at_their_new_positions() {
        // Fixture keys play the pre-RoPE keys; the cache holds them rotated at 0..n.
        let f = Fixture::new(1, 2, 12, 8);
        let dev = Default::default();
        let (cos, sin) = f.rope.cos_sin::<burn::backend::Flex>(&f.positions, &dev);
        let rotated = RotaryEmbedding::apply(f.keys.clone(), &cos, &sin);
        let mut cache = LayerCache::default();
        cache
            .append(rotated.clone(), rotated.clone(), &f.positions)
            .expect("append");
        let press = KeyRerotation::new(Knorm, 0.5).expect("press");
        press.compress(&f.inputs(), &mut cache).expect("compress");
        assert_eq!(
            cache.positions(),
            &[(0..6).collect::<Vec<_>>(), (0..6).collect()]
        );
        assert_eq!(cache.next_position(), 6);
        assert_eq!(cache.original_positions()[0].len(), 6);
        // the selection is Knorm's (norms survive RoPE): the 6 smallest norms per head
        let kept = top_scored_indices(&Knorm, &f.inputs(), &f.keys, &f.keys, |_| 6).expect("top");
        let (got, _) = cache.keys_values().expect("dense").expect("kept");
        let (cos, sin) = f
            .rope
            .cos_sin::<burn::backend::Flex>(&(0..6).collect::<Vec<_>>(), &dev);
        for (h, idx) in kept.iter().enumerate() {
            let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
            let ids =
                Tensor::<burn::backend::Flex, 1, Int>::from_data(TensorData::new(ids, [6]), &dev);
            let raw = f.keys.clone().narrow(1, h, 1).select(2, ids);
            let want = RotaryEmbedding::apply(raw, &cos, &sin);
            let diff = (got.clone().narrow(1, h, 1) - want)
                .abs()
                .max()
                .into_scalar();
            assert!(diff < 1e-5, "head {h}: {diff}");
        }
    }
}
