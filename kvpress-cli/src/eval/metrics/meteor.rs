//! nltk's `single_meteor_score(reference, hypothesis)` (nltk 3.9/3.10 defaults: `str.lower`
//! preprocessing, `PorterStemmer`, WordNet, α = 0.9, β = 3, γ = 0.5), as LooGLE's
//! `get_meteor_score` calls it.
//!
//! Alignment stages, as in nltk: exact matches of the lower-cased words, then Porter-stem
//! matches of what is left, then WordNet synonym matches; each stage walks the hypothesis from
//! its last word to its first and takes the last free reference position holding that word.
//! The score is `(1 − 0.5·(chunks/matches)³) · P·R / (0.9·P + 0.1·R)`, 0 when nothing matches.
//!
//! Deviation: the WordNet synonym stage is **not implemented** (it needs the WordNet database);
//! a hypothesis word whose only match is a WordNet synonym of a reference word stays unmatched,
//! so the score can be lower than nltk's. Exact and stem matching are complete.

use std::collections::HashMap;

use super::porter::porter_stem;

/// Words tagged with their original position (nltk's "enum" lists).
type Enumerated = Vec<(usize, String)>;
/// Aligned `(hypothesis position, reference position)` pairs.
type Alignment = Vec<(usize, usize)>;

/// nltk's `_match_enums`: matches `(hyp index, ref index)` and the unmatched remainders.
fn match_enums(
    hyp: &[(usize, String)],
    reference: &[(usize, String)],
) -> (Alignment, Enumerated, Enumerated) {
    let mut positions: HashMap<&str, Vec<usize>> = HashMap::new();
    for (j, (_, word)) in reference.iter().enumerate() {
        positions.entry(word.as_str()).or_default().push(j);
    }
    let mut matches = Vec::new();
    let mut hyp_used = vec![false; hyp.len()];
    let mut ref_used = vec![false; reference.len()];
    for i in (0..hyp.len()).rev() {
        if let Some(j) = positions.get_mut(hyp[i].1.as_str()).and_then(Vec::pop) {
            hyp_used[i] = true;
            ref_used[j] = true;
            matches.push((hyp[i].0, reference[j].0));
        }
    }
    let hyp_left = hyp
        .iter()
        .zip(&hyp_used)
        .filter(|(_, u)| !**u)
        .map(|(p, _)| p.clone())
        .collect();
    let ref_left = reference
        .iter()
        .zip(&ref_used)
        .filter(|(_, u)| !**u)
        .map(|(p, _)| p.clone())
        .collect();
    (matches, hyp_left, ref_left)
}

/// nltk's `_count_chunks` over matches sorted by hypothesis index.
fn count_chunks(matches: &[(usize, usize)]) -> usize {
    1 + matches
        .windows(2)
        .filter(|w| !(w[1].0 == w[0].0 + 1 && w[1].1 == w[0].1 + 1))
        .count()
}

/// `single_meteor_score(reference, hypothesis)` on tokens, in the order given (exact and stem
/// matching; no WordNet synonyms).
pub fn single_meteor_score(reference: &[&str], hypothesis: &[&str]) -> f64 {
    const ALPHA: f64 = 0.9;
    const BETA: f64 = 3.0;
    const GAMMA: f64 = 0.5;
    let enum_hyp: Vec<(usize, String)> = hypothesis
        .iter()
        .map(|w| w.to_lowercase())
        .enumerate()
        .collect();
    let enum_ref: Vec<(usize, String)> = reference
        .iter()
        .map(|w| w.to_lowercase())
        .enumerate()
        .collect();
    let (translation_length, reference_length) = (enum_hyp.len(), enum_ref.len());

    let (mut matches, hyp_left, ref_left) = match_enums(&enum_hyp, &enum_ref);
    let stem = |list: Vec<(usize, String)>| -> Vec<(usize, String)> {
        list.into_iter()
            .map(|(i, w)| (i, porter_stem(&w)))
            .collect()
    };
    let (stem_matches, _, _) = match_enums(&stem(hyp_left), &stem(ref_left));
    matches.extend(stem_matches);
    matches.sort_by_key(|m| m.0);

    let matches_count = matches.len();
    if matches_count == 0 || translation_length == 0 || reference_length == 0 {
        return 0.0;
    }
    let m = matches_count as f64;
    let precision = m / translation_length as f64;
    let recall = m / reference_length as f64;
    let fmean = (precision * recall) / (ALPHA * precision + (1.0 - ALPHA) * recall);
    let frag_frac = count_chunks(&matches) as f64 / m;
    let penalty = GAMMA * frag_frac.powf(BETA);
    (1.0 - penalty) * fmean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_is_one_chunk() {
        // 3 matches, 1 chunk: P = R = 1, fmean = 1/(0.9 + 0.1) (with 1 − 0.9 rounded),
        // penalty = 0.5·(1/3)³ = 1/54 → score ≈ 53/54.
        let s = single_meteor_score(&["a", "b", "c"], &["a", "b", "c"]);
        let fmean = 1.0 / (0.9 + (1.0 - 0.9));
        assert_eq!(s, (1.0 - 0.5 * (1.0f64 / 3.0).powf(3.0)) * fmean);
    }

    #[test]
    fn no_match_or_empty() {
        assert_eq!(single_meteor_score(&["a"], &["b"]), 0.0);
        assert_eq!(single_meteor_score(&[], &["b"]), 0.0);
        assert_eq!(single_meteor_score(&["a"], &[]), 0.0);
    }

    #[test]
    fn case_and_stems_match() {
        // "Cats" vs "cat": lower-case "cats" ≠ "cat", but stems "cat" = "cat" → 1 match, 1 chunk.
        // P = R = 1 → fmean = 1/(0.9 + 0.1); penalty = 0.5 · 1³ = 0.5 → 0.5 · fmean.
        let s = single_meteor_score(&["cat"], &["Cats"]);
        let fmean = 1.0 / (0.9 + (1.0 - 0.9));
        assert_eq!(s, 0.5 * fmean);
    }

    #[test]
    fn python_reference_values() {
        // nltk 3.10.4 with `wordnet=` a stub whose `synsets()` is empty (the same as real nltk
        // whenever no WordNet synonym pair occurs):
        // single_meteor_score(["a", "dog", "runs", "quickly"], ["the", "dogs", "ran", "quickly", "a"])
        // == 0.36585365853658536. By hand: exact a↔a, quickly↔quickly; stems dogs↔dog;
        // matches (1,1), (3,3), (4,0) → 3 chunks; P = 3/5, R = 3/4, fmean = 0.45/0.615,
        // penalty 0.5. (Real WordNet would also pair "ran" with the stem "run" of "runs".)
        let s = single_meteor_score(
            &["a", "dog", "runs", "quickly"],
            &["the", "dogs", "ran", "quickly", "a"],
        );
        assert_eq!(s, 0.36585365853658536);
        // single_meteor_score(["the","cat","sat","on","mat"], ["on","the","mat","a","cat","sat"])
        // == 0.7294117647058824
        let s = single_meteor_score(
            &["the", "cat", "sat", "on", "mat"],
            &["on", "the", "mat", "a", "cat", "sat"],
        );
        assert_eq!(s, 0.7294117647058824);
        // == 0.9814814814814815 for three identical words.
        assert_eq!(
            single_meteor_score(&["a", "b", "c"], &["a", "b", "c"]),
            0.9814814814814815
        );
    }
}
