//! Greedy decoding with the KV cache: one prefill forward over the prompt, then one forward
//! per generated token at its true absolute position.

use burn::tensor::backend::Backend;
use kvpress_core::KvCache;

use crate::error::Result;
use crate::llama::{ForwardOptions, Llama};

/// Settings of [`generate_greedy`].
#[derive(Debug, Clone, Default)]
pub struct GenerationOptions {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Ids that end generation (the eos token is kept in the output).
    pub eos_token_ids: Vec<u32>,
    /// Never stop at an eos id.
    pub ignore_eos: bool,
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

/// Greedy decoding of `prompt` from an empty cache. `keep_step_logits` records the logits after
/// every generated token (for comparisons with a reference).
pub fn generate_greedy<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    options: &GenerationOptions,
    keep_step_logits: bool,
) -> Result<Generation> {
    let mut cache = model.new_cache();
    continue_greedy(model, &mut cache, prompt, 0, options, keep_step_logits)
}

/// Greedy decoding of `tokens` placed at positions `start..` on top of an existing `cache`.
pub fn continue_greedy<B: Backend>(
    model: &Llama<B>,
    cache: &mut KvCache<B>,
    tokens: &[u32],
    start: usize,
    options: &GenerationOptions,
    keep_step_logits: bool,
) -> Result<Generation> {
    let positions: Vec<usize> = (start..start + tokens.len()).collect();
    let hidden = model.forward(tokens, &positions, cache, &ForwardOptions::default())?;
    let prompt_logits = model.last_logits(hidden)?;
    let mut out = Generation {
        tokens: Vec::with_capacity(options.max_new_tokens),
        prompt_logits,
        step_logits: Vec::new(),
    };
    if options.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut next = argmax(&out.prompt_logits);
    let mut pos = start + tokens.len();
    loop {
        out.tokens.push(next);
        let stop = !options.ignore_eos && options.eos_token_ids.contains(&next);
        if stop || out.tokens.len() >= options.max_new_tokens {
            break;
        }
        let hidden = model.forward(&[next], &[pos], cache, &ForwardOptions::default())?;
        let logits = model.last_logits(hidden)?;
        next = argmax(&logits);
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
    fn top_k_orders_by_value_then_id() {
        assert_eq!(
            top_k(&[0.5, 2.0, 2.0, -1.0, 3.0], 3),
            vec![(4, 3.0), (1, 2.0), (2, 2.0)]
        );
        assert_eq!(top_k(&[1.0], 5), vec![(0, 1.0)]);
    }
}
