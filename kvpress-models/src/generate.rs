//! Decoding with the KV cache: one prefill forward over the prompt, then one forward per
//! generated token at its true absolute position. Greedy (the reference) or sampled
//! (temperature, top-p, seeded).

use burn::tensor::backend::Backend;
use kvpress_core::KvCache;

use crate::error::Result;
use crate::llama::{ForwardOptions, Llama};

/// Sampling instead of greedy decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Softmax temperature (`<= 0` means greedy).
    pub temperature: f32,
    /// Nucleus: sample among the most likely tokens whose probabilities sum to `top_p`.
    pub top_p: f32,
    /// Seed of the random generator (same seed, same tokens).
    pub seed: u64,
}

/// Draws token ids from logits with a seeded splitmix64 generator.
#[derive(Debug, Clone)]
pub struct Sampler {
    sampling: Sampling,
    state: u64,
}

impl Sampler {
    /// A sampler for `sampling`.
    pub fn new(sampling: Sampling) -> Self {
        Self {
            state: sampling.seed,
            sampling,
        }
    }

    fn next_unit(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A token id drawn from `softmax(logits / temperature)` restricted to the top-p nucleus.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let t = self.sampling.temperature as f64;
        if t <= 0.0 || logits.is_empty() {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l as f64 - max) / t).exp()))
            .collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let top_p = (self.sampling.top_p as f64).clamp(0.0, 1.0);
        let mut kept = 0.0;
        let mut cut = probs.len();
        for (i, p) in probs.iter().enumerate() {
            kept += p.1 / total;
            if kept >= top_p {
                cut = i + 1;
                break;
            }
        }
        probs.truncate(cut.max(1));
        let mass: f64 = probs.iter().map(|p| p.1).sum();
        let mut u = self.next_unit() * mass;
        for (id, p) in &probs {
            if u < *p {
                return *id;
            }
            u -= p;
        }
        probs[probs.len() - 1].0
    }
}

/// Settings of [`generate`].
#[derive(Debug, Clone, Default)]
pub struct GenerationOptions {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Ids that end generation (the eos token is kept in the output).
    pub eos_token_ids: Vec<u32>,
    /// Never stop at an eos id.
    pub ignore_eos: bool,
    /// Keep the first generated token even if it is an eos id (kvpress's pipeline checks eos
    /// from the second token on).
    pub first_token_never_stops: bool,
    /// Sample instead of taking the argmax.
    pub sampling: Option<Sampling>,
}

/// What a generation produced.
#[derive(Debug, Clone, Default)]
pub struct Generation {
    /// Generated ids (an eos that ended generation included).
    pub tokens: Vec<u32>,
    /// Logits at the last prompt position (before the first generated token).
    pub prompt_logits: Vec<f32>,
    /// Logits after each generated token but the last (`tokens.len() - 1` rows), when requested.
    pub step_logits: Vec<Vec<f32>>,
}

/// Index of the largest value (the first one on ties, like `torch.argmax`).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// The `k` largest values with their ids, largest first (ties: lower id first).
pub fn top_k(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    let k = k.min(values.len());
    idx.select_nth_unstable_by(
        k.saturating_sub(1).min(values.len().saturating_sub(1)),
        |&a, &b| {
            values[b as usize]
                .total_cmp(&values[a as usize])
                .then(a.cmp(&b))
        },
    );
    idx.truncate(k);
    idx.sort_by(|&a, &b| {
        values[b as usize]
            .total_cmp(&values[a as usize])
            .then(a.cmp(&b))
    });
    idx.into_iter().map(|i| (i, values[i as usize])).collect()
}

/// Decodes after `prompt` from an empty cache. `keep_step_logits` records the logits after
/// every generated token (for comparisons with a reference).
pub fn generate<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    options: &GenerationOptions,
    keep_step_logits: bool,
) -> Result<Generation> {
    let mut cache = model.new_cache();
    continue_generation(
        model,
        &mut cache,
        prompt,
        0,
        options,
        &ForwardOptions::default(),
        keep_step_logits,
    )
}

/// Decodes after `tokens`, placed at positions `start..` on top of an existing `cache`; every
/// forward runs with `forward` (a decoding-time press acts there).
pub fn continue_generation<B: Backend>(
    model: &Llama<B>,
    cache: &mut KvCache<B>,
    tokens: &[u32],
    start: usize,
    options: &GenerationOptions,
    forward: &ForwardOptions<'_, B>,
    keep_step_logits: bool,
) -> Result<Generation> {
    continue_generation_with(
        model,
        cache,
        tokens,
        start,
        options,
        forward,
        keep_step_logits,
        &mut |_| true,
    )
}

/// [`continue_generation`] calling `on_token` with every generated token as soon as it is
/// chosen; generation stops early (the token kept) when `on_token` returns false (a client gone).
#[allow(clippy::too_many_arguments)]
pub fn continue_generation_with<B: Backend>(
    model: &Llama<B>,
    cache: &mut KvCache<B>,
    tokens: &[u32],
    start: usize,
    options: &GenerationOptions,
    forward: &ForwardOptions<'_, B>,
    keep_step_logits: bool,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Generation> {
    let positions: Vec<usize> = (start..start + tokens.len()).collect();
    let hidden = model.forward(tokens, &positions, cache, forward)?;
    let prompt_logits = model.last_logits(hidden)?;
    let mut out = Generation {
        tokens: Vec::with_capacity(options.max_new_tokens),
        prompt_logits,
        step_logits: Vec::new(),
    };
    if options.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut sampler = options.sampling.map(Sampler::new);
    let mut choose = |logits: &[f32]| match sampler.as_mut() {
        Some(s) => s.sample(logits),
        None => argmax(logits),
    };
    let mut next = choose(&out.prompt_logits);
    let mut pos = start + tokens.len();
    loop {
        out.tokens.push(next);
        let first_is_exempt = options.first_token_never_stops && out.tokens.len() == 1;
        let may_stop = !(options.ignore_eos || first_is_exempt);
        let stop = may_stop && options.eos_token_ids.contains(&next);
        let wanted = on_token(next);
        if stop || !wanted || out.tokens.len() >= options.max_new_tokens {
            break;
        }
        let hidden = model.forward(&[next], &[pos], cache, forward)?;
        let logits = model.last_logits(hidden)?;
        next = choose(&logits);
        if keep_step_logits {
            out.step_logits.push(logits);
        }
        pos += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn sampling_is_seeded_and_respects_top_p() {
        let logits = [0.0f32, 3.0, 2.9, -5.0];
        let draw = |seed, top_p| {
            let mut s = Sampler::new(Sampling {
                temperature: 1.0,
                top_p,
                seed,
            });
            (0..200).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7, 1.0), draw(7, 1.0));
        assert_ne!(draw(7, 1.0), draw(8, 1.0));
        // p(1) ≈ 0.50, p(2) ≈ 0.45: a nucleus of 0.5 keeps token 1 alone
        assert!(draw(3, 0.5).iter().all(|&t| t == 1));
        // with the full distribution both leading tokens appear
        let all = draw(3, 1.0);
        assert!(all.contains(&1) && all.contains(&2));
        let greedy = Sampler::new(Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        })
        .sample(&logits);
        assert_eq!(greedy, 1);
    }

    #[test]
    fn top_k_orders_by_value_then_id() {
        assert_eq!(
            top_k(&[0.5, 2.0, 2.0, -1.0, 3.0], 3),
            vec![(4, 3.0), (1, 2.0), (2, 2.0)]
        );
        assert_eq!(top_k(&[1.0], 5), vec![(0, 1.0)]);
    }
}
