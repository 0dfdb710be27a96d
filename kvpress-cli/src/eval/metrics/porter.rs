//! NLTK's `PorterStemmer()` (default mode `NLTK_EXTENSIONS`, nltk 3.9/3.10), which
//! `nltk.translate.meteor_score` uses for its stem-matching stage.
//!
//! Works on Unicode code points like the Python code: only ASCII `a e i o u` are vowels, every
//! other character (including non-ASCII letters) is a consonant, except that `y` is a consonant
//! exactly when it starts the word or follows a vowel.

/// Irregular forms that NLTK's extension maps directly.
const IRREGULAR: &[(&str, &str)] = &[
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

type Word = Vec<char>;

fn is_vowel(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u')
}

/// Consonant flags for every position (`_consonant_flags`).
fn consonant_flags(w: &[char]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let flag = if is_vowel(c) {
            false
        } else if c == 'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(flag);
    }
    flags
}

fn is_consonant(w: &[char], i: usize) -> bool {
    consonant_flags(&w[..=i])[i]
}

/// The number of vowel→consonant transitions (`m` in Porter's paper).
fn measure(stem: &[char]) -> usize {
    consonant_flags(stem)
        .windows(2)
        .filter(|p| !p[0] && p[1])
        .count()
}

fn contains_vowel(stem: &[char]) -> bool {
    !consonant_flags(stem).iter().all(|c| *c)
}

fn ends_double_consonant(w: &[char]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

fn ends_cvc(w: &[char]) -> bool {
    let n = w.len();
    let classic = n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !matches!(w[n - 1], 'w' | 'x' | 'y');
    let short = n == 2 && !is_consonant(w, 0) && is_consonant(w, 1);
    classic || short
}

fn ends_with(w: &[char], suffix: &str) -> bool {
    let s: Vec<char> = suffix.chars().collect();
    w.len() >= s.len() && w[w.len() - s.len()..] == s[..]
}

fn strip(w: &[char], suffix: &str) -> Word {
    w[..w.len() - suffix.chars().count()].to_vec()
}

fn with(mut stem: Word, replacement: &str) -> Word {
    stem.extend(replacement.chars());
    stem
}

/// One rule of a rule list: a suffix, its replacement, and the condition on the stem.
type Rule<'r> = (&'r str, &'r str, &'r dyn Fn(&[char]) -> bool);

/// `_apply_rule_list`: the first rule whose suffix matches decides; a failed condition leaves
/// the word unchanged.
fn apply_rules(w: &[char], rules: &[Rule<'_>]) -> Word {
    for (suffix, replacement, condition) in rules {
        if ends_with(w, suffix) {
            let stem = strip(w, suffix);
            return if condition(&stem) {
                with(stem, replacement)
            } else {
                w.to_vec()
            };
        }
    }
    w.to_vec()
}

fn positive_measure(stem: &[char]) -> bool {
    measure(stem) > 0
}

fn step1a(w: &[char]) -> Word {
    if ends_with(w, "ies") && w.len() == 4 {
        return with(strip(w, "ies"), "ie");
    }
    let always = |_: &[char]| true;
    apply_rules(
        w,
        &[
            ("sses", "ss", &always),
            ("ies", "i", &always),
            ("ss", "ss", &always),
            ("s", "", &always),
        ],
    )
}

fn step1b(w: &[char]) -> Word {
    if ends_with(w, "ied") {
        return if w.len() == 4 {
            with(strip(w, "ied"), "ie")
        } else {
            with(strip(w, "ied"), "i")
        };
    }
    if ends_with(w, "eed") {
        let stem = strip(w, "eed");
        return if measure(&stem) > 0 {
            with(stem, "ee")
        } else {
            w.to_vec()
        };
    }
    let mut intermediate = None;
    for suffix in ["ed", "ing"] {
        if ends_with(w, suffix) {
            let stem = strip(w, suffix);
            if contains_vowel(&stem) {
                intermediate = Some(stem);
                break;
            }
        }
    }
    let Some(stem) = intermediate else {
        return w.to_vec();
    };
    for (suffix, replacement) in [("at", "ate"), ("bl", "ble"), ("iz", "ize")] {
        if ends_with(&stem, suffix) {
            return with(strip(&stem, suffix), replacement);
        }
    }
    if ends_double_consonant(&stem) {
        let last = stem[stem.len() - 1];
        return if matches!(last, 'l' | 's' | 'z') {
            stem
        } else {
            let mut shorter = stem[..stem.len() - 2].to_vec();
            shorter.push(last);
            shorter
        };
    }
    if measure(&stem) == 1 && ends_cvc(&stem) {
        return with(stem, "e");
    }
    stem
}

fn step1c(w: &[char]) -> Word {
    let condition = |stem: &[char]| stem.len() > 1 && is_consonant(stem, stem.len() - 1);
    apply_rules(w, &[("y", "i", &condition)])
}

fn step2(w: &[char]) -> Word {
    if ends_with(w, "alli") && positive_measure(&strip(w, "alli")) {
        return step2(&with(strip(w, "alli"), "al"));
    }
    let pm = positive_measure;
    // The "logi" rule tests the measure of the word without its last three letters ("ogi").
    let word_minus_3 = w[..w.len().saturating_sub(3)].to_vec();
    let logi = move |_: &[char]| positive_measure(&word_minus_3);
    let rules: [Rule<'_>; 22] = [
        ("ational", "ate", &pm),
        ("tional", "tion", &pm),
        ("enci", "ence", &pm),
        ("anci", "ance", &pm),
        ("izer", "ize", &pm),
        ("bli", "ble", &pm),
        ("alli", "al", &pm),
        ("entli", "ent", &pm),
        ("eli", "e", &pm),
        ("ousli", "ous", &pm),
        ("ization", "ize", &pm),
        ("ation", "ate", &pm),
        ("ator", "ate", &pm),
        ("alism", "al", &pm),
        ("iveness", "ive", &pm),
        ("fulness", "ful", &pm),
        ("ousness", "ous", &pm),
        ("aliti", "al", &pm),
        ("iviti", "ive", &pm),
        ("biliti", "ble", &pm),
        ("fulli", "ful", &pm),
        ("logi", "log", &logi),
    ];
    apply_rules(w, &rules)
}

fn step3(w: &[char]) -> Word {
    let pm = positive_measure;
    apply_rules(
        w,
        &[
            ("icate", "ic", &pm),
            ("ative", "", &pm),
            ("alize", "al", &pm),
            ("iciti", "ic", &pm),
            ("ical", "ic", &pm),
            ("ful", "", &pm),
            ("ness", "", &pm),
        ],
    )
}

fn step4(w: &[char]) -> Word {
    let gt1 = |stem: &[char]| measure(stem) > 1;
    let ion = |stem: &[char]| measure(stem) > 1 && matches!(stem.last(), Some('s' | 't'));
    apply_rules(
        w,
        &[
            ("al", "", &gt1),
            ("ance", "", &gt1),
            ("ence", "", &gt1),
            ("er", "", &gt1),
            ("ic", "", &gt1),
            ("able", "", &gt1),
            ("ible", "", &gt1),
            ("ant", "", &gt1),
            ("ement", "", &gt1),
            ("ment", "", &gt1),
            ("ent", "", &gt1),
            ("ion", "", &ion),
            ("ou", "", &gt1),
            ("ism", "", &gt1),
            ("ate", "", &gt1),
            ("iti", "", &gt1),
            ("ous", "", &gt1),
            ("ive", "", &gt1),
            ("ize", "", &gt1),
        ],
    )
}

fn step5a(w: &[char]) -> Word {
    if ends_with(w, "e") {
        let stem = strip(w, "e");
        let m = measure(&stem);
        if m > 1 || (m == 1 && !ends_cvc(&stem)) {
            return stem;
        }
    }
    w.to_vec()
}

fn step5b(w: &[char]) -> Word {
    let word_minus_1 = w[..w.len().saturating_sub(1)].to_vec();
    let condition = move |_: &[char]| measure(&word_minus_1) > 1;
    apply_rules(w, &[("ll", "l", &condition)])
}

/// `PorterStemmer().stem(word)`: lower-cases, maps NLTK's irregular forms, leaves words of at
/// most two characters alone, then applies Porter's steps 1a–5b with NLTK's extensions.
pub fn porter_stem(word: &str) -> String {
    let lowered = word.to_lowercase();
    if let Some((_, stem)) = IRREGULAR.iter().find(|(form, _)| *form == lowered) {
        return (*stem).to_string();
    }
    if word.chars().count() <= 2 {
        return lowered;
    }
    let w: Word = lowered.chars().collect();
    let w = step1a(&w);
    let w = step1b(&w);
    let w = step1c(&w);
    let w = step2(&w);
    let w = step3(&w);
    let w = step4(&w);
    let w = step5a(&w);
    let w = step5b(&w);
    w.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_examples() {
        // Porter's paper / NLTK doctest values.
        for (word, stem) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("feed", "feed"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("sing", "sing"),
            ("conflated", "conflat"),
            ("troubled", "troubl"),
            ("sized", "size"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("generalization", "gener"),
            ("dying", "die"),
            ("skies", "sky"),
            ("is", "is"),
            ("running", "run"),
        ] {
            assert_eq!(porter_stem(word), stem, "{word}");
        }
    }

    #[test]
    fn lowercases_and_handles_unicode() {
        assert_eq!(porter_stem("Running"), "run");
        assert_eq!(porter_stem(""), "");
        // Non-ASCII letters are consonants: "cafés" → step 1a drops the "s".
        assert_eq!(porter_stem("cafés"), "café");
    }
}
