//! ROUGE-1, ROUGE-2 and summary-level ROUGE-L exactly as the Python `rouge` package
//! (pltrdy/rouge 1.0.1, `Rouge().get_scores(hyp, ref)`) computes them; kvpress uses it for
//! LongBench summaries, LooGLE and needle-in-a-haystack.
//!
//! The package's conventions, all reproduced:
//! - a text is cut into "sentences" on every ASCII `.`; empty pieces are dropped and each
//!   kept piece is re-joined on single spaces (`" ".join(piece.split())`), so a piece made only
//!   of whitespace becomes an empty sentence, i.e. one empty word;
//! - words are the sentences split on `" "`, flattened over sentences (n-grams run across
//!   sentence ends);
//! - n-grams are counted as *sets* (`exclusive=True`): repeated n-grams count once;
//! - ROUGE-L is the summary-level union LCS: for each reference sentence, the word sets of one
//!   longest common subsequence with each hypothesis sentence (the one the package's
//!   back-tracking picks) are merged into one running union, whose final size is divided by the
//!   numbers of *distinct* reference / hypothesis words;
//! - `f = 2·p·r / (p + r + 1e-8)`.
//!
//! Known difference: the package rebuilds the LCS with a recursive function, which raises
//! `RecursionError` once a hypothesis sentence and a reference sentence together exceed roughly
//! 1000 words (Python's default recursion limit); kvpress then scores 0 (LongBench, LooGLE) or
//! stops (needle-in-a-haystack). This port computes the actual value in that case.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::text::py_split;

/// Recall, precision and F of one ROUGE variant (the package's `{"r", "p", "f"}` dict).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RougeStat {
    /// Recall: overlap / reference size.
    pub r: f64,
    /// Precision: overlap / hypothesis size.
    pub p: f64,
    /// `2·p·r / (p + r + 1e-8)`.
    pub f: f64,
}

impl RougeStat {
    fn from_counts(overlap: usize, hyp: usize, reference: usize) -> Self {
        // `f_r_p_rouge_n`: a zero count gives 0 instead of a division by zero.
        let p = if hyp == 0 {
            0.0
        } else {
            overlap as f64 / hyp as f64
        };
        let r = if reference == 0 {
            0.0
        } else {
            overlap as f64 / reference as f64
        };
        Self::from_p_r(p, r)
    }

    fn from_p_r(p: f64, r: f64) -> Self {
        let f = 2.0 * ((p * r) / (p + r + 1e-8));
        Self { r, p, f }
    }

    /// The statistic as the package's JSON dict `{"r": .., "p": .., "f": ..}`.
    pub fn to_json(self) -> Value {
        json!({"r": self.r, "p": self.p, "f": self.f})
    }
}

/// The three default metrics of `Rouge().get_scores` for one hypothesis / reference pair.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RougeScores {
    /// `rouge-1`: distinct-unigram overlap.
    pub rouge_1: RougeStat,
    /// `rouge-2`: distinct-bigram overlap.
    pub rouge_2: RougeStat,
    /// `rouge-l`: summary-level union-LCS.
    pub rouge_l: RougeStat,
}

impl RougeScores {
    /// The package's per-pair JSON: `{"rouge-1": {r,p,f}, "rouge-2": {..}, "rouge-l": {..}}`.
    pub fn to_json(self) -> Value {
        json!({
            "rouge-1": self.rouge_1.to_json(),
            "rouge-2": self.rouge_2.to_json(),
            "rouge-l": self.rouge_l.to_json(),
        })
    }
}

/// Why the package raises `ValueError` instead of scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RougeError {
    /// The hypothesis has no sentence (empty, or only `.` characters).
    #[error("Hypothesis is empty.")]
    EmptyHypothesis,
    /// The reference has no sentence.
    #[error("Reference is empty.")]
    EmptyReference,
}

/// The package's sentence split: pieces between `.`, non-empty, whitespace-normalised.
fn sentences(text: &str) -> Vec<String> {
    text.split('.')
        .filter(|piece| !piece.is_empty())
        .map(|piece| py_split(piece).join(" "))
        .collect()
}

/// `_split_into_words`: every sentence split on single spaces, flattened.
fn words(sentences: &[String]) -> Vec<&str> {
    sentences.iter().flat_map(|s| s.split(' ')).collect()
}

fn ngram_set<'w, 'a>(words: &'w [&'a str], n: usize) -> HashSet<&'w [&'a str]> {
    if words.len() < n {
        return HashSet::new();
    }
    words.windows(n).collect()
}

fn rouge_n(hyp_words: &[&str], ref_words: &[&str], n: usize) -> RougeStat {
    let hyp = ngram_set(hyp_words, n);
    let reference = ngram_set(ref_words, n);
    let overlap = hyp.intersection(&reference).count();
    RougeStat::from_counts(overlap, hyp.len(), reference.len())
}

/// The words of the LCS of `x` (reference sentence) and `y` (hypothesis sentence) that the
/// package's `_recon_lcs` back-tracking returns, in its tie-breaking order.
fn recon_lcs<'a>(x: &[&'a str], y: &[&str]) -> Vec<&'a str> {
    let (n, m) = (x.len(), y.len());
    let width = m + 1;
    let mut table = vec![0u32; (n + 1) * width];
    for i in 1..=n {
        for j in 1..=m {
            table[i * width + j] = if x[i - 1] == y[j - 1] {
                table[(i - 1) * width + j - 1] + 1
            } else {
                table[(i - 1) * width + j].max(table[i * width + j - 1])
            };
        }
    }
    let mut out = Vec::new();
    let (mut i, mut j) = (n, m);
    while i > 0 && j > 0 {
        if x[i - 1] == y[j - 1] {
            out.push(x[i - 1]);
            i -= 1;
            j -= 1;
        } else if table[(i - 1) * width + j] > table[i * width + j - 1] {
            i -= 1;
        } else {
            j -= 1;
        }
    }
    out
}

fn rouge_l(hyp_sents: &[String], ref_sents: &[String]) -> RougeStat {
    let ref_distinct: HashSet<&str> = words(ref_sents).into_iter().collect();
    let hyp_distinct: HashSet<&str> = words(hyp_sents).into_iter().collect();
    let hyp_split: Vec<Vec<&str>> = hyp_sents.iter().map(|s| s.split(' ').collect()).collect();
    let mut union: HashSet<&str> = HashSet::new();
    for ref_sentence in ref_sents {
        let ref_words: Vec<&str> = ref_sentence.split(' ').collect();
        for hyp_words in &hyp_split {
            union.extend(recon_lcs(&ref_words, hyp_words));
        }
    }
    let llcs = union.len() as f64;
    // m and n are at least 1: a non-empty sentence list always yields one (maybe empty) word.
    let r = llcs / ref_distinct.len() as f64;
    let p = llcs / hyp_distinct.len() as f64;
    RougeStat::from_p_r(p, r)
}

/// `Rouge().get_scores(hypothesis, reference)[0]` (equivalently with `avg=True` for one pair).
pub fn rouge_scores(hypothesis: &str, reference: &str) -> Result<RougeScores, RougeError> {
    let hyp_sents = sentences(hypothesis);
    let ref_sents = sentences(reference);
    if hyp_sents.is_empty() {
        return Err(RougeError::EmptyHypothesis);
    }
    if ref_sents.is_empty() {
        return Err(RougeError::EmptyReference);
    }
    let hyp_words = words(&hyp_sents);
    let ref_words = words(&ref_sents);
    Ok(RougeScores {
        rouge_1: rouge_n(&hyp_words, &ref_words, 1),
        rouge_2: rouge_n(&hyp_words, &ref_words, 2),
        rouge_l: rouge_l(&hyp_sents, &ref_sents),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn identical_single_sentence() {
        // 3 distinct unigrams, 2 bigrams, all shared: p = r = 1, f = 2/(2 + 1e-8).
        let s = rouge_scores("the cat sat", "the cat sat").expect("scores");
        let f = 2.0 * (1.0 / (2.0 + 1e-8));
        assert_eq!(s.rouge_1, RougeStat { r: 1.0, p: 1.0, f });
        assert_eq!(s.rouge_2, RougeStat { r: 1.0, p: 1.0, f });
        assert_eq!(s.rouge_l, RougeStat { r: 1.0, p: 1.0, f });
    }

    #[test]
    fn by_hand_partial_overlap() {
        // hyp "the cat sat on the mat" → distinct unigrams {the,cat,sat,on,mat} (5),
        // bigrams {the cat, cat sat, sat on, on the, the mat} (5).
        // ref "the cat is on the mat" → unigrams {the,cat,is,on,mat} (5), bigrams
        // {the cat, cat is, is on, on the, the mat} (5).
        // ROUGE-1 overlap 4 → p = r = 0.8; ROUGE-2 overlap 3 → p = r = 0.6.
        // LCS(ref, hyp) = "the cat on the mat" → word set {the,cat,on,mat} = 4;
        // distinct words 5 and 5 → p = r = 0.8.
        let s = rouge_scores("the cat sat on the mat", "the cat is on the mat").expect("scores");
        assert!(close(s.rouge_1.p, 0.8) && close(s.rouge_1.r, 0.8));
        assert!(close(s.rouge_1.f, 2.0 * (0.64 / (1.6 + 1e-8))));
        assert!(close(s.rouge_2.p, 0.6) && close(s.rouge_2.r, 0.6));
        assert!(close(s.rouge_l.p, 0.8) && close(s.rouge_l.r, 0.8));
    }

    #[test]
    fn case_and_punctuation_are_kept() {
        // No lower-casing and no punctuation stripping except the `.` sentence split:
        // "Cat," ≠ "cat" → no overlap at all.
        let s = rouge_scores("Cat, dog", "cat dog").expect("scores");
        // hyp unigrams {Cat,, dog}, ref {cat, dog}: overlap 1 → p = r = 0.5.
        assert!(close(s.rouge_1.p, 0.5) && close(s.rouge_1.r, 0.5));
        assert_eq!(s.rouge_2.p, 0.0);
        assert_eq!(s.rouge_2.f, 0.0);
    }

    #[test]
    fn empty_inputs_raise_like_python() {
        assert_eq!(rouge_scores("", "a"), Err(RougeError::EmptyHypothesis));
        assert_eq!(rouge_scores("...", "a"), Err(RougeError::EmptyHypothesis));
        assert_eq!(rouge_scores("a", ""), Err(RougeError::EmptyReference));
        // A whitespace-only piece is a sentence with one empty word: no error.
        let s = rouge_scores(" ", "a").expect("scores");
        assert_eq!(s.rouge_1.p, 0.0);
    }

    #[test]
    fn multi_sentence_union_lcs() {
        // The package docstring's example: r = w1 w2 w3 w4 w5; c1 = w1 w2 w6 w7 w8,
        // c2 = w1 w3 w8 w9 w5. Union LCS = {w1, w2, w3, w5} = 4.
        // Distinct reference words 5 → r = 0.8; distinct hypothesis words
        // {w1,w2,w6,w7,w8,w3,w9,w5} = 8 → p = 0.5.
        let s = rouge_scores("w1 w2 w6 w7 w8. w1 w3 w8 w9 w5", "w1 w2 w3 w4 w5").expect("scores");
        assert!(close(s.rouge_l.r, 0.8));
        assert!(close(s.rouge_l.p, 0.5));
    }

    #[test]
    fn python_reference_values() {
        // Values printed by Python `rouge` 1.0.1:
        // Rouge().get_scores("The quick brown fox. It jumps over the lazy dog!",
        //                    "A quick brown dog jumps over the lazy fox.")[0]
        let s = rouge_scores(
            "The quick brown fox. It jumps over the lazy dog!",
            "A quick brown dog jumps over the lazy fox.",
        )
        .expect("scores");
        // Exact equality: the same operations in the same order give the same bits.
        let r1 = RougeStat {
            r: 0.7777777777777778,
            p: 0.7,
            f: 0.7368421002770082,
        };
        assert_eq!(s.rouge_1, r1);
        assert_eq!(
            s.rouge_2,
            RougeStat {
                r: 0.5,
                p: 0.4444444444444444,
                f: 0.4705882303114187
            }
        );
        assert_eq!(s.rouge_l, r1);
        // Rouge().get_scores("Cat, dog", "cat dog")[0]["rouge-1"]["f"] == 0.4999999950000001
        let s = rouge_scores("Cat, dog", "cat dog").expect("scores");
        assert_eq!(s.rouge_1.f, 0.4999999950000001);
    }
}
