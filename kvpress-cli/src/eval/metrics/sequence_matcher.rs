//! Python's `difflib.SequenceMatcher(None, a, b).ratio()` and `fuzzywuzzy.fuzz.ratio`, which
//! LongBench's `code_sim_score` (lcc, repobench-p) uses.
//!
//! kvpress's evaluation requirements do not install `python-Levenshtein`, so `fuzzywuzzy` 0.18
//! falls back to `difflib.SequenceMatcher`; this is that algorithm, on Unicode code points,
//! with difflib's default `autojunk=True` heuristic (for `b` of 200 elements or more, an element
//! occurring more than `len(b) // 100 + 1` times is left out of the match index).

use std::collections::{HashMap, HashSet};

use super::text::py_round_int;

struct Matcher<'a> {
    a: &'a [char],
    b: &'a [char],
    /// For each element of `b` that is not popular, its positions in increasing order.
    b2j: HashMap<char, Vec<usize>>,
}

impl<'a> Matcher<'a> {
    fn new(a: &'a [char], b: &'a [char]) -> Self {
        let mut b2j: HashMap<char, Vec<usize>> = HashMap::new();
        for (i, c) in b.iter().enumerate() {
            b2j.entry(*c).or_default().push(i);
        }
        let n = b.len();
        if n >= 200 {
            let ntest = n / 100 + 1;
            let popular: HashSet<char> = b2j
                .iter()
                .filter(|(_, idx)| idx.len() > ntest)
                .map(|(c, _)| *c)
                .collect();
            for c in popular {
                b2j.remove(&c);
            }
        }
        Self { a, b, b2j }
    }

    /// `find_longest_match(alo, ahi, blo, bhi)`: the leftmost-in-`a`, then leftmost-in-`b`
    /// longest block of non-popular matches, then extended by equal elements on both ends (no
    /// element is "junk" since `isjunk` is `None`).
    fn find_longest_match(
        &self,
        alo: usize,
        ahi: usize,
        blo: usize,
        bhi: usize,
    ) -> (usize, usize, usize) {
        let (a, b) = (self.a, self.b);
        let (mut besti, mut bestj, mut bestsize) = (alo, blo, 0usize);
        // j2len[j + 1] holds the length of the match ending at a[i - 1], b[j] (previous row).
        let mut j2len = vec![0usize; b.len() + 1];
        let mut new_j2len = vec![0usize; b.len() + 1];
        let mut touched: Vec<usize> = Vec::new();
        let mut new_touched: Vec<usize> = Vec::new();
        for (i, ai) in a.iter().enumerate().take(ahi).skip(alo) {
            if let Some(positions) = self.b2j.get(ai) {
                for &j in positions {
                    if j < blo {
                        continue;
                    }
                    if j >= bhi {
                        break;
                    }
                    let k = j2len[j] + 1;
                    new_j2len[j + 1] = k;
                    new_touched.push(j + 1);
                    if k > bestsize {
                        besti = i + 1 - k;
                        bestj = j + 1 - k;
                        bestsize = k;
                    }
                }
            }
            for &t in &touched {
                j2len[t] = 0;
            }
            std::mem::swap(&mut j2len, &mut new_j2len);
            std::mem::swap(&mut touched, &mut new_touched);
            new_touched.clear();
        }
        while besti > alo && bestj > blo && a[besti - 1] == b[bestj - 1] {
            besti -= 1;
            bestj -= 1;
            bestsize += 1;
        }
        while besti + bestsize < ahi
            && bestj + bestsize < bhi
            && a[besti + bestsize] == b[bestj + bestsize]
        {
            bestsize += 1;
        }
        (besti, bestj, bestsize)
    }

    /// Total size of `get_matching_blocks()`.
    fn matched_len(&self) -> usize {
        let mut queue = vec![(0, self.a.len(), 0, self.b.len())];
        let mut total = 0;
        while let Some((alo, ahi, blo, bhi)) = queue.pop() {
            let (i, j, k) = self.find_longest_match(alo, ahi, blo, bhi);
            if k > 0 {
                total += k;
                if alo < i && blo < j {
                    queue.push((alo, i, blo, j));
                }
                if i + k < ahi && j + k < bhi {
                    queue.push((i + k, ahi, j + k, bhi));
                }
            }
        }
        total
    }
}

/// `difflib.SequenceMatcher(None, a, b).ratio()`: `2·M / (len(a) + len(b))` with `M` the
/// number of matched elements, 1.0 when both are empty.
pub fn sequence_matcher_ratio(a: &[char], b: &[char]) -> f64 {
    let total = a.len() + b.len();
    if total == 0 {
        return 1.0;
    }
    let matches = Matcher::new(a, b).matched_len();
    2.0 * matches as f64 / total as f64
}

/// `fuzzywuzzy.fuzz.ratio(s1, s2)` (difflib back end): 100 for equal strings (even empty),
/// 0 if either is empty, else `round(100 · ratio)` with ties to even.
pub fn fuzz_ratio(s1: &str, s2: &str) -> u32 {
    if s1 == s2 {
        return 100;
    }
    if s1.is_empty() || s2.is_empty() {
        return 0;
    }
    let a: Vec<char> = s1.chars().collect();
    let b: Vec<char> = s2.chars().collect();
    // The value lies in [0, 100], so the conversion cannot truncate.
    py_round_int(100.0 * sequence_matcher_ratio(&a, &b)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    #[test]
    fn difflib_docstring_example() {
        // difflib docs: SequenceMatcher(None, "abcd", "bcde").ratio() == 0.75 ("bcd" matched:
        // 2·3 / 8).
        assert_eq!(sequence_matcher_ratio(&chars("abcd"), &chars("bcde")), 0.75);
        assert_eq!(sequence_matcher_ratio(&[], &[]), 1.0);
    }

    #[test]
    fn matching_is_not_lcs() {
        // "ab" vs "ba": the longest block is "a" (leftmost in a) at a[0], b[1]; left of it in b
        // is "b" but nothing is left of it in a, right of it in a is "b" but nothing in b.
        // So M = 1 → 2/4 = 0.5 (an LCS would also be 1 here).
        assert_eq!(sequence_matcher_ratio(&chars("ab"), &chars("ba")), 0.5);
        // "abxcd" vs "abcd": block "ab" then "cd" → M = 4 → 8/9.
        assert_eq!(
            sequence_matcher_ratio(&chars("abxcd"), &chars("abcd")),
            8.0 / 9.0
        );
    }

    #[test]
    fn fuzz_ratio_edge_cases() {
        assert_eq!(fuzz_ratio("", ""), 100);
        assert_eq!(fuzz_ratio("", "a"), 0);
        assert_eq!(fuzz_ratio("a", ""), 0);
        assert_eq!(fuzz_ratio("same", "same"), 100);
        // "abcd"/"bcde": 75; case matters: "ABC" vs "abc" → no match → 0.
        assert_eq!(fuzz_ratio("abcd", "bcde"), 75);
        assert_eq!(fuzz_ratio("ABC", "abc"), 0);
        // "ab"/"ba" → 50; "a"/"ab" → 2/3 → 66.67 → 67.
        assert_eq!(fuzz_ratio("ab", "ba"), 50);
        assert_eq!(fuzz_ratio("a", "ab"), 67);
    }

    #[test]
    fn python_reference_values() {
        // fuzzywuzzy 0.18.0 (difflib back end), CPython 3.11:
        // fuzz.ratio("return self.forward(x)", "return self.model(x)") == 81
        assert_eq!(
            fuzz_ratio("return self.forward(x)", "return self.model(x)"),
            81
        );
        // Unicode: fuzz.ratio("héllo wörld", "hello world") == 82
        assert_eq!(fuzz_ratio("héllo wörld", "hello world"), 82);
    }

    #[test]
    fn autojunk_applies_from_200_elements() {
        // b = 200 × "a": "a" occurs 200 > 200 // 100 + 1 = 3 times, so it is popular and never
        // starts a match; but the empty best match at (0, 0) is then extended over equal
        // elements, so the 10 "a" still match: CPython 3.11 gives
        // SequenceMatcher(None, "a" * 10, "a" * 200).ratio() == 0.09523809523809523 == 20 / 210.
        let a = vec!['a'; 10];
        let b = vec!['a'; 200];
        assert_eq!(sequence_matcher_ratio(&a, &b), 20.0 / 210.0);
        // "xa" + 199·"a" vs "a"·10: popular "a" blocks the search, the empty match at (0, 0)
        // cannot extend ("x" ≠ "a"), so nothing matches at all.
        let b: Vec<char> = std::iter::once('x')
            .chain(std::iter::repeat_n('a', 199))
            .collect();
        assert_eq!(sequence_matcher_ratio(&a, &b), 0.0);
        // With 199 elements autojunk is off: 10 matches → 20 / 209.
        let b = vec!['a'; 199];
        assert_eq!(sequence_matcher_ratio(&a, &b), 20.0 / 209.0);
    }
}
