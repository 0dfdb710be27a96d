//! Chinese word segmentation as Python's `jieba.cut(text, cut_all=False)` (jieba 0.42.1, HMM on)
//! does it, for LongBench's `qa_f1_zh_score` and `rouge_zh_score`.
//!
//! The dictionary, the word graph with its best route, and the HMM (Viterbi) for unknown words
//! come from the `jieba-rs` crate, a port of jieba with the same dictionary and HMM tables. The
//! control flow around them is Python jieba's own, because `jieba-rs` deliberately differs in
//! places (it counts more characters as Chinese, and its HMM step keeps `1.2.3`, `a_b`, `x-y`
//! together where jieba splits them with `[a-zA-Z0-9]+(?:\.\d+)?%?`):
//! - the text is cut into maximal runs of `re_han_default = [\u4E00-\u9FD5a-zA-Z0-9+#&._%-]`;
//!   everything else is emitted one character at a time (`"\r\n"` whole);
//! - a run is cut along the dictionary's best route (`jieba-rs` without HMM gives the route;
//!   the runs of single ASCII letters/digits it merges are split back into single steps — no
//!   dictionary word consists only of ASCII letters and digits);
//! - consecutive single-character steps are buffered (`__cut_DAG`): a one-character buffer is
//!   emitted as is, a buffer that is a dictionary word character by character, any other buffer
//!   goes to `finalseg.cut`: Chinese runs `[\u4E00-\u9FD5]+` through the HMM (`jieba-rs` with an
//!   empty dictionary), other runs split by `[a-zA-Z0-9]+(?:\.\d+)?%?` into matches and gaps.
//!
//! Python jieba's `dict.txt` lists `B超 3 n` twice, so its frequency total is 3 higher than that
//! of `jieba-rs`' copy; a word that can never occur in a run (it contains a NUL) is added with
//! frequency 3 to make the totals, and so every route score, identical.

use std::sync::LazyLock;

use jieba_rs::Jieba;
use regex::Regex;

/// The full dictionary, with Python's frequency total.
static JIEBA: LazyLock<Jieba> = LazyLock::new(|| {
    let mut jieba = Jieba::new();
    jieba.add_word("\u{0}B超", Some(3), None);
    jieba
});

/// No dictionary words: `cut(run, true)` is then the HMM alone (`finalseg.__cut`).
static HMM_ONLY: LazyLock<Jieba> = LazyLock::new(|| {
    let mut jieba = Jieba::empty();
    // A finite total (an empty one makes every route score infinite); the word never occurs.
    jieba.add_word("\u{0}", Some(1), None);
    jieba
});

/// `finalseg`'s `re_skip`.
static FINALSEG_SKIP: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"[a-zA-Z0-9]+(?:\.[0-9]+)?%?").ok());

/// Python jieba's `re_han_default` character class.
fn is_han_default(c: char) -> bool {
    is_hmm_han(c)
        || c.is_ascii_alphanumeric()
        || matches!(c, '+' | '#' | '&' | '.' | '_' | '%' | '-')
}

/// `finalseg`'s `re_han` character class.
fn is_hmm_han(c: char) -> bool {
    ('\u{4E00}'..='\u{9FD5}').contains(&c)
}

/// Splits `s` into maximal runs of characters that agree on `pred`.
fn runs(s: &str, pred: impl Fn(char) -> bool) -> Vec<(&str, bool)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(first) = rest.chars().next() {
        let class = pred(first);
        let end = rest.find(|c: char| pred(c) != class).unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        out.push((run, class));
        rest = tail;
    }
    out
}

/// `finalseg.cut(buf)`.
fn finalseg_cut<'a>(buf: &'a str, out: &mut Vec<&'a str>) {
    for (run, han) in runs(buf, is_hmm_han) {
        if han {
            out.extend(HMM_ONLY.cut(run, true).into_iter().map(|t| t.word));
            continue;
        }
        let Some(re) = FINALSEG_SKIP.as_ref() else {
            out.push(run);
            continue;
        };
        let mut last = 0;
        for m in re.find_iter(run) {
            if m.start() > last {
                out.push(&run[last..m.start()]);
            }
            out.push(m.as_str());
            last = m.end();
        }
        if last < run.len() {
            out.push(&run[last..]);
        }
    }
}

/// Flushes the buffer of single-character steps (`__cut_DAG`).
fn flush<'a>(buf: &'a str, out: &mut Vec<&'a str>) {
    if buf.is_empty() {
        return;
    }
    let mut chars = buf.char_indices();
    chars.next();
    if chars.next().is_none() {
        out.push(buf);
    } else if !JIEBA.has_word(buf) {
        finalseg_cut(buf, out);
    } else {
        out.extend(buf.char_indices().map(|(i, c)| &buf[i..i + c.len_utf8()]));
    }
}

/// `__cut_DAG(block)` for one `re_han_default` run.
fn cut_block<'a>(block: &'a str, out: &mut Vec<&'a str>) {
    // Route steps: byte ranges within the block.
    let mut steps: Vec<(usize, usize)> = Vec::new();
    let base = block.as_ptr() as usize;
    for token in JIEBA.cut(block, false) {
        let start = token.word.as_ptr() as usize - base;
        let word = token.word;
        if word.len() > 1 && word.chars().all(|c| c.is_ascii_alphanumeric()) {
            steps.extend((0..word.len()).map(|i| (start + i, start + i + 1)));
        } else {
            steps.push((start, start + word.len()));
        }
    }
    let mut buf_start: Option<usize> = None;
    let mut buf_end = 0;
    for (start, end) in steps {
        let word = &block[start..end];
        if word.chars().nth(1).is_none() {
            buf_start.get_or_insert(start);
            buf_end = end;
        } else {
            if let Some(b) = buf_start.take() {
                flush(&block[b..buf_end], out);
            }
            out.push(word);
        }
    }
    if let Some(b) = buf_start {
        flush(&block[b..buf_end], out);
    }
}

/// `list(jieba.cut(text, cut_all=False))`: the words of `text`, in order; their concatenation
/// is `text`.
pub fn jieba_cut(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for (run, han) in runs(text, is_han_default) {
        if han {
            cut_block(run, &mut out);
            continue;
        }
        let mut rest = run;
        while let Some(first) = rest.chars().next() {
            let len = if rest.starts_with("\r\n") {
                2
            } else {
                first.len_utf8()
            };
            let (piece, tail) = rest.split_at(len);
            out.push(piece);
            rest = tail;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenation_is_the_input() {
        let text = "我来到北京清华大学。Hello, world!\r\n 价格是12.5%吗？";
        assert_eq!(jieba_cut(text).concat(), text);
        assert!(jieba_cut("").is_empty());
    }

    #[test]
    fn python_reference_segmentations() {
        // Python jieba 0.42.1: list(jieba.cut("我来到北京清华大学"))
        assert_eq!(
            jieba_cut("我来到北京清华大学"),
            vec!["我", "来到", "北京", "清华大学"]
        );
        // list(jieba.cut("他来到了网易杭研大厦")) — "杭研" comes from the HMM.
        assert_eq!(
            jieba_cut("他来到了网易杭研大厦"),
            vec!["他", "来到", "了", "网易", "杭研", "大厦"]
        );
        // Non-han characters one by one, "\r\n" kept together:
        // list(jieba.cut("你好，a b\r\n")) == ['你好', '，', 'a', ' ', 'b', '\r\n']
        assert_eq!(
            jieba_cut("你好，a b\r\n"),
            vec!["你好", "，", "a", " ", "b", "\r\n"]
        );
        // finalseg's re_skip: list(jieba.cut("槾12.5ABC")) == ['槾', '12.5', 'ABC'] and
        // list(jieba.cut("版本1.2.3")) == ['版本', '1.2', '.', '3'].
        assert_eq!(jieba_cut("槾12.5ABC"), vec!["槾", "12.5", "ABC"]);
        assert_eq!(jieba_cut("版本1.2.3"), vec!["版本", "1.2", ".", "3"]);
    }
}
