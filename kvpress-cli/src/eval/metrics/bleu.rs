//! nltk's `sentence_bleu([reference], hypothesis, weights=...)` with its defaults (no
//! smoothing: `SmoothingFunction().method0`, `auto_reweigh=False`), as LooGLE's
//! `get_bleu_score` calls it for BLEU-1 `(1, 0, 0, 0)` and BLEU-4 `(0, 0, 0, 1)`.
//!
//! Reproduced details: modified precisions are computed for every order up to the number of
//! weights (4 here, even for BLEU-1); the score is the integer 0 when no unigram matches; an
//! order with no match is replaced by the smallest positive double (`sys.float_info.min`), so
//! BLEU-4 without any 4-gram match is `bp · 2.2250738585072014e-308`, not 0; terms are summed
//! with `math.fsum`; brevity penalty `exp(1 − r/c)` for `c ≤ r`, 0 for an empty hypothesis.

use std::collections::HashMap;

/// Modified n-gram precision `(clipped matches, max(1, hypothesis n-grams))`.
fn modified_precision(reference: &[&str], hypothesis: &[&str], n: usize) -> (usize, usize) {
    if hypothesis.len() < n {
        return (0, 1);
    }
    let mut hyp_counts: HashMap<&[&str], usize> = HashMap::new();
    for g in hypothesis.windows(n) {
        *hyp_counts.entry(g).or_insert(0) += 1;
    }
    let mut ref_counts: HashMap<&[&str], usize> = HashMap::new();
    if reference.len() >= n {
        for g in reference.windows(n) {
            *ref_counts.entry(g).or_insert(0) += 1;
        }
    }
    let clipped: usize = hyp_counts
        .iter()
        .map(|(g, c)| (*c).min(ref_counts.get(g).copied().unwrap_or(0)))
        .sum();
    let total: usize = hyp_counts.values().sum();
    (clipped, total.max(1))
}

/// Python's `math.fsum`: the correctly rounded sum (Shewchuk's exact partials).
pub fn fsum(xs: &[f64]) -> f64 {
    let mut partials: Vec<f64> = Vec::new();
    for &x0 in xs {
        let mut x = x0;
        let mut kept = 0;
        for idx in 0..partials.len() {
            let mut y = partials[idx];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        partials.truncate(kept);
        partials.push(x);
    }
    // Sum the partials from the top, with CPython's half-way correction.
    let mut n = partials.len();
    if n == 0 {
        return 0.0;
    }
    n -= 1;
    let mut hi = partials[n];
    let mut lo = 0.0;
    while n > 0 {
        let x = hi;
        n -= 1;
        let y = partials[n];
        hi = x + y;
        let yr = hi - x;
        lo = y - yr;
        if lo != 0.0 {
            break;
        }
    }
    if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0)) {
        let y = lo * 2.0;
        let x = hi + y;
        let yr = x - hi;
        if y == yr {
            hi = x;
        }
    }
    hi
}

/// `sentence_bleu([reference], hypothesis, weights)` on pre-split tokens.
pub fn sentence_bleu(reference: &[&str], hypothesis: &[&str], weights: &[f64]) -> f64 {
    let precisions: Vec<(usize, usize)> = (1..=weights.len())
        .map(|n| modified_precision(reference, hypothesis, n))
        .collect();
    if precisions.first().is_none_or(|p| p.0 == 0) {
        return 0.0;
    }
    let (r, c) = (reference.len(), hypothesis.len());
    let bp = if c > r {
        1.0
    } else if c == 0 {
        0.0
    } else {
        (1.0 - r as f64 / c as f64).exp()
    };
    let terms: Vec<f64> = weights
        .iter()
        .zip(&precisions)
        .map(|(w, &(num, den))| {
            let p = if num == 0 {
                f64::MIN_POSITIVE
            } else {
                num as f64 / den as f64
            };
            w * p.ln()
        })
        .collect();
    bp * fsum(&terms).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLEU1: [f64; 4] = [1.0, 0.0, 0.0, 0.0];
    const BLEU4: [f64; 4] = [0.0, 0.0, 0.0, 1.0];

    #[test]
    fn fsum_is_exact() {
        assert_eq!(fsum(&[0.1; 10]), 1.0);
        assert_eq!(fsum(&[1e100, 1.0, -1e100]), 1.0);
        assert_eq!(fsum(&[]), 0.0);
    }

    #[test]
    fn bleu_by_hand() {
        // ref "the cat sat on the mat", hyp "the cat sat": unigram precision 3/3, bigrams 2/2,
        // trigrams 1/1, no 4-gram (precision 0/1 → float min).
        // BP = exp(1 − 6/3) = e^-1. BLEU-1 = e^-1 · exp(ln 1) = e^-1.
        let reference = ["the", "cat", "sat", "on", "the", "mat"];
        let hyp = ["the", "cat", "sat"];
        let b1 = sentence_bleu(&reference, &hyp, &BLEU1);
        assert!((b1 - (-1.0f64).exp()).abs() < 1e-15);
        // BLEU-4 = e^-1 · exp(ln(float min)) — tiny but not zero, as in nltk.
        let b4 = sentence_bleu(&reference, &hyp, &BLEU4);
        // nltk 3.10.4: sentence_bleu([r], h, weights=(0, 0, 0, 1)) == 8.18558927632837e-309
        assert_eq!(b4, 8.18558927632837e-309);
    }

    #[test]
    fn no_unigram_match_or_empty_is_zero() {
        assert_eq!(sentence_bleu(&["a"], &["b"], &BLEU1), 0.0);
        assert_eq!(sentence_bleu(&["a"], &[], &BLEU1), 0.0);
        assert_eq!(sentence_bleu(&[], &["a"], &BLEU4), 0.0);
    }

    #[test]
    fn clipping() {
        // hyp "the the the the", ref "the cat": unigram "the" clipped to 1 → 1/4; hyp longer
        // than ref → BP 1. BLEU-1 = exp(ln 0.25) = 0.25.
        let b = sentence_bleu(&["the", "cat"], &["the", "the", "the", "the"], &BLEU1);
        assert!((b - 0.25).abs() < 1e-15);
    }

    #[test]
    fn python_reference_values() {
        // nltk 3.10.4, CPython 3.11:
        // r = "It is a guide to action that ensures that the military will forever heed Party commands".split()
        // h = "It is a guide to action which ensures that the military always obeys the commands of the party".split()
        // sentence_bleu([r], h, weights=(1,0,0,0)) == 0.6111111111111112
        // sentence_bleu([r], h, weights=(0,0,0,1)) == 0.26666666666666666
        let r: Vec<&str> =
            "It is a guide to action that ensures that the military will forever heed Party commands"
                .split(' ')
                .collect();
        let h: Vec<&str> =
            "It is a guide to action which ensures that the military always obeys the commands of the party"
                .split(' ')
                .collect();
        assert_eq!(sentence_bleu(&r, &h, &BLEU1), 0.6111111111111112);
        assert_eq!(sentence_bleu(&r, &h, &BLEU4), 0.26666666666666666);
    }
}
