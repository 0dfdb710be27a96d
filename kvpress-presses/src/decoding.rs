//! DecodingPress and CompressionRatioDecodingPress (kvpress `decoding`,
//! `compression_ratio_decoding`): compression while the answer is generated. Each layer buffers
//! the recent tokens' attention inputs; every `compression_interval` forwards (or at once for a
//! forward of at least `target_size` tokens) the scorer ranks the whole cache against the
//! buffered queries and the layer is cut back to `target_size` entries, so between forwards it
//! holds between `target_size` and `target_size + compression_interval − 1` entries.
//!
//! Unlike kvpress, the buffered queries keep their true absolute positions (kvpress rotates
//! them with the current step's position and starts ExpectedAttention's future range at the
//! buffer length). The buffered rows are always the tokens appended since the last compression,
//! i.e. the last entries of every head, which is what window scorers (SnapKV, TOVA) assume.

use std::sync::Mutex;

use burn::tensor::{Tensor, backend::Backend};
use kvpress_core::error::{CoreError, Result};
use kvpress_core::press::{HostScores, check_positive, check_ratio, host_scores, top_k_per_head};
use kvpress_core::{LayerCache, LayerInputs, Press, Scorer};

/// How many entries a layer keeps after a decoding-time compression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// A fixed number of entries (`decoding`).
    Size(usize),
    /// `max(1, ⌊(p + 1)(1 − r)⌋)` with `p` the last position seen: a fixed fraction of all
    /// tokens so far (`compression_ratio_decoding`).
    Ratio(f64),
}

impl Target {
    pub(crate) fn entries(self, last_position: usize) -> usize {
        match self {
            Target::Size(n) => n,
            Target::Ratio(r) => (((last_position + 1) as f64 * (1.0 - r)) as usize).max(1),
        }
    }
}

/// The recent attention inputs of one layer.
pub(crate) struct Buffer<B: Backend> {
    /// Forwards since the last compression.
    pub(crate) steps: usize,
    /// `[1, m, hidden]`, `[1, h_q, m, d]` (post- and pre-RoPE), `m` positions.
    rows: Option<(Tensor<B, 3>, Tensor<B, 4>, Tensor<B, 4>)>,
    positions: Vec<usize>,
    /// Per head, the scores of the cache's entries as of the last compression (per-token
    /// scorers only: they never change).
    kept_scores: Vec<Vec<f32>>,
}

impl<B: Backend> Default for Buffer<B> {
    fn default() -> Self {
        Self {
            steps: 0,
            rows: None,
            positions: Vec::new(),
            kept_scores: Vec::new(),
        }
    }
}

impl<B: Backend> Buffer<B> {
    /// Empties the buffer after a compression.
    pub(crate) fn clear(&mut self) {
        self.steps = 0;
        self.rows = None;
        self.positions.clear();
    }

    /// Scores keys/values `[1, h_kv, n, d]` with `scorer` against the buffered queries (the
    /// last entries of every head), then empties the buffer.
    pub(crate) fn score<S: Scorer<B>>(
        &mut self,
        scorer: &S,
        inputs: &LayerInputs<'_, B>,
        keys: &Tensor<B, 4>,
        values: &Tensor<B, 4>,
    ) -> Result<HostScores> {
        let positions = std::mem::take(&mut self.positions);
        let rows = self.rows.take();
        self.clear();
        let Some((hidden, queries, pre)) = rows else {
            return Err(CoreError::Invalid {
                name: "decoding",
                detail: "no buffered query to score with".into(),
            });
        };
        let sub = LayerInputs {
            hidden_states: &hidden,
            queries: &queries,
            queries_pre_rope: &pre,
            positions: &positions,
            ..*inputs
        };
        host_scores(scorer, &sub, keys, values)
    }

    /// Adds a forward's rows and keeps the last `limit` (all of this forward's if `limit` is 0).
    pub(crate) fn push(&mut self, inputs: &LayerInputs<'_, B>, limit: usize) {
        self.steps += 1;
        let (h, q, p) = (
            inputs.hidden_states.clone(),
            inputs.queries.clone(),
            inputs.queries_pre_rope.clone(),
        );
        let (mut h, mut q, mut p) = match self.rows.take() {
            Some((bh, bq, bp)) if limit > 0 => (
                Tensor::cat(vec![bh, h], 1),
                Tensor::cat(vec![bq, q], 2),
                Tensor::cat(vec![bp, p], 2),
            ),
            _ => {
                self.positions.clear();
                (h, q, p)
            }
        };
        self.positions.extend_from_slice(inputs.positions);
        let m = self.positions.len();
        let keep = if limit == 0 {
            inputs.positions.len()
        } else {
            limit.min(m)
        };
        if keep < m {
            h = h.narrow(1, m - keep, keep);
            q = q.narrow(2, m - keep, keep);
            p = p.narrow(2, m - keep, keep);
            self.positions.drain(..m - keep);
        }
        self.rows = Some((h, q, p));
    }
}

/// A scorer applied during decoding.
pub struct Decoding<B: Backend, S> {
    /// The scorer ranking the cache.
    pub scorer: S,
    /// Forwards between compressions.
    pub compression_interval: usize,
    /// Entries kept by each compression.
    pub target: Target,
    /// Recent tokens whose queries the scorer sees (0: the current forward's only).
    pub hidden_states_buffer_size: usize,
    buffers: Mutex<Vec<Buffer<B>>>,
}

impl<B: Backend, S> Decoding<B, S> {
    /// `decoding(scorer)` with kvpress's defaults: interval 512, target 2048, buffer 256.
    pub fn new(scorer: S) -> Self {
        Self::with_target(scorer, Target::Size(2048))
    }

    /// A decoding press keeping `target` entries per compression.
    pub fn with_target(scorer: S, target: Target) -> Self {
        Self {
            scorer,
            compression_interval: 512,
            target,
            hidden_states_buffer_size: 256,
            buffers: Mutex::new(Vec::new()),
        }
    }

    fn check(&self) -> Result<()> {
        check_positive("compression_interval", self.compression_interval)?;
        match self.target {
            Target::Size(n) => check_positive("target_size", n),
            Target::Ratio(r) => check_ratio(r),
        }
    }
}

impl<B: Backend, S: Scorer<B>> Press<B> for Decoding<B, S> {
    /// Nothing happens during prefill.
    fn compress(&self, _inputs: &LayerInputs<'_, B>, _cache: &mut LayerCache<B>) -> Result<()> {
        self.check()
    }

    fn compress_decoding(
        &self,
        inputs: &LayerInputs<'_, B>,
        cache: &mut LayerCache<B>,
    ) -> Result<()> {
        self.check()?;
        let mut buffers = self
            .buffers
            .lock()
            .map_err(|_| CoreError::Data("decoding press state poisoned by a panic".into()))?;
        if buffers.len() <= inputs.layer {
            buffers.resize_with(inputs.layer + 1, Buffer::default);
        }
        let buffer = &mut buffers[inputs.layer];
        buffer.push(inputs, self.hidden_states_buffer_size);
        let last = inputs.positions.iter().copied().max().unwrap_or(0);
        let target = self.target.entries(last);
        if buffer.steps < self.compression_interval && inputs.positions.len() < target {
            return Ok(());
        }
        let Some((ref keys, ref values)) = cache.keys_values()? else {
            return Ok(());
        };
        if keys.dims()[2] <= target {
            buffer.clear();
            return Ok(());
        }
        let [_, h_kv, n, _] = keys.dims();
        let scores = if self.scorer.scores_are_per_token() {
            // old entries keep their scores; only those appended since are scored
            let have = buffer.kept_scores.first().map_or(0, Vec::len);
            let have = if buffer.kept_scores.len() == h_kv && have <= n {
                have
            } else {
                0
            };
            let fresh = buffer.score(
                &self.scorer,
                inputs,
                &keys.clone().narrow(2, have, n - have),
                &values.clone().narrow(2, have, n - have),
            )?;
            let rows = (0..h_kv)
                .map(|h| {
                    let mut row = if have > 0 {
                        buffer.kept_scores[h].clone()
                    } else {
                        Vec::new()
                    };
                    row.extend_from_slice(&fresh.rows[h]);
                    row
                })
                .collect();
            HostScores {
                rows,
                protected: self.scorer.protected(inputs, n)?,
            }
        } else {
            buffer.score(&self.scorer, inputs, keys, values)?
        };
        let kept = top_k_per_head(&scores.rows, &scores.protected, target);
        if self.scorer.scores_are_per_token() {
            buffer.kept_scores = kept
                .iter()
                .zip(&scores.rows)
                .map(|(idx, row)| idx.iter().map(|&i| row[i]).collect())
                .collect();
        }
        cache.keep(&kept)
    }

    fn compresses_during_decoding(&self) -> bool {
        true
    }

    fn reset(&self) {
        if let Ok(mut buffers) = self.buffers.lock() {
            buffers.clear();
        }
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::knorm::Knorm;
    use crate::snapkv::SnapKv;
    use crate::test_support::Fixture;
    use burn::backend::Flex;

    /// Runs `steps` one-token decoding forwards on top of a 40-token prefill fixture and
    /// returns the cache length after each.
    fn lengths(press: &Decoding<Flex, impl Scorer<Flex>>, steps: usize) -> Vec<usize> {
        run(press, &Fixture::new(2, 2, 40 + steps, 8), steps).0
    }

    /// [`lengths`] on fixture `f` (of at least `40 + steps` tokens), and the final kept
    /// positions.
    fn run(
        press: &Decoding<Flex, impl Scorer<Flex>>,
        f: &Fixture,
        steps: usize,
    ) -> (Vec<usize>, Vec<Vec<usize>>) {
        let mut cache = LayerCache::default();
        let k = |s: usize, len: usize| f.keys.clone().narrow(2, s, len);
        cache
            .append(k(0, 40), k(0, 40), &f.positions[..40])
            .expect("append");
        let mut out = Vec::new();
        for t in 40..40 + steps {
            cache.append(k(t, 1), k(t, 1), &[t]).expect("append");
            let hidden = f.hidden.clone().narrow(1, t, 1);
            let queries = f.queries.clone().narrow(2, t, 1);
            let inputs = LayerInputs {
                hidden_states: &hidden,
                queries: &queries,
                queries_pre_rope: &queries,
                positions: &f.positions[t..t + 1],
                ..f.inputs()
            };
            press
                .compress_decoding(&inputs, &mut cache)
                .expect("compress");
            out.push(cache.len());
        }
        (out, cache.positions().to_vec())
    }

    /// Knorm without the per-token promise: rescored in full at every compression.
    struct FullKnorm;

    impl Scorer<Flex> for FullKnorm {
        fn score(
            &self,
            inputs: &LayerInputs<'_, Flex>,
            keys: &Tensor<Flex, 4>,
            values: &Tensor<Flex, 4>,
        ) -> Result<Tensor<Flex, 3>> {
            Knorm.score(inputs, keys, values)
        }
    }

    #[test]
    fn per_token_scores_are_reused_without_changing_the_selection() {
        let mut cached = Decoding::with_target(Knorm, Target::Size(20));
        cached.compression_interval = 5;
        let mut full = Decoding::with_target(FullKnorm, Target::Size(20));
        full.compression_interval = 5;
        let f = Fixture::new(2, 2, 77, 8);
        let (a, kept_a) = run(&cached, &f, 37);
        let (b, kept_b) = run(&full, &f, 37);
        assert_eq!(a, b);
        assert_eq!(kept_a, kept_b);
        assert!(a.contains(&20), "compressions happened: {a:?}");
    }

    #[test]
    fn the_cache_stays_between_target_and_target_plus_interval() {
        let mut press = Decoding::with_target(Knorm, Target::Size(32));
        press.compression_interval = 8;
        let got = lengths(&press, 40);
        // 41 after the first step, cut to 32 at the 8th step, then 33..=39, 32, …
        assert_eq!(got[0], 41);
        assert_eq!(got[7], 32);
        assert!(got[8..].iter().all(|&n| (32..=39).contains(&n)), "{got:?}");
        assert_eq!(got[15], 32);
    }

    #[test]
    fn a_ratio_target_keeps_a_fraction_of_all_tokens_seen() {
        let mut press = Decoding::with_target(Knorm, Target::Ratio(0.5));
        press.compression_interval = 4;
        let got = lengths(&press, 8);
        // step 4 sees position 43: keeps ⌊44 · 0.5⌋ = 22; step 8, position 47: 22 + 4 → 24
        assert_eq!(got[3], 22);
        assert_eq!(got[7], 24);
    }

    #[test]
    fn window_scorers_need_enough_buffered_queries() {
        let mut press = Decoding::with_target(SnapKv::default(), Target::Size(16));
        press.hidden_states_buffer_size = 0;
        let f = Fixture::new(1, 1, 60, 8);
        let mut cache = LayerCache::default();
        cache
            .append(f.keys.clone(), f.keys.clone(), &f.positions)
            .expect("append");
        // a 60-token forward triggers at once (60 ≥ target), but snapkv's window is 64
        let err = press
            .compress_decoding(&f.inputs(), &mut cache)
            .expect_err("a window of 64 cannot fit in 60 queries");
        assert!(err.to_string().contains("window"), "{err}");
    }
}
