//! kvpress's `needle_in_haystack` dataset, generated offline.
//!
//! Mirrors `insert_needle_in_haystack` in kvpress's
//! `evaluation/benchmarks/needle_in_haystack/utils.py`, as `evaluation/evaluate.py` calls it:
//! the haystack (the first row of the HF dataset `alessiodevoto/paul_graham_essays`) is
//! tokenised and cut to `max_context_length − len(tokenised needle) − 150` tokens (the 150 tokens
//! leave room for the template and the question); for every requested depth the needle is
//! inserted at token index `int(len(truncated) × depth / 100)`, and the context becomes
//! `"This is a very long story book: <book> {context} </book>."`. One row per depth, all sharing
//! the same haystack, question and answer prefix.
//!
//! Deviations:
//!
//! * The haystack is [`ESSAYS`] (an original essay-like corpus shipped with kvpress-rs), repeated
//!   (copies joined by a blank line) until it is long enough, or a caller-given text; kvpress
//!   uses Paul Graham's essays, which we cannot ship, and never repeats them.
//! * kvpress takes the needle, question, answer prefix and `max_new_tokens` from the dataset row,
//!   which cannot be inspected offline. Our defaults ([`NeedleText::default`]) use the classic
//!   needle and question of Greg Kamradt's `LLMTest_NeedleInAHaystack` (the test whose Paul
//!   Graham haystack that dataset reuses); they are our stand-in, not verified copies of
//!   kvpress's row. All are configurable with [`needle_in_haystack_with`].
//! * kvpress decodes `ids[:i] + needle_ids + ids[i:]` in one go; we decode the haystack's first
//!   `i` tokens and put the needle text there, which is the same text for tokenizers whose
//!   decoding is concatenation (byte-level BPE such as Llama 3's).
//! * Each row also lists the needle in `answers`, and `task` is `needle_in_haystack`.

use std::collections::BTreeMap;
use std::fmt;

use crate::eval::ruler::ESSAYS;
use crate::eval::sample::Sample;

/// kvpress's `context_wrapper`; `{context}` is replaced by the haystack with the needle.
pub const CONTEXT_WRAPPER: &str = "This is a very long story book: <book> {context} </book>.";

/// Tokens kvpress keeps free for "system prompts and other overhead".
pub const OVERHEAD_TOKENS: usize = 150;

/// The task name written in every row.
pub const TASK_NAME: &str = "needle_in_haystack";

/// Errors of the needle-in-a-haystack generator.
#[derive(Debug, thiserror::Error)]
pub enum NeedleError {
    /// A depth outside 0..=100 percent.
    #[error("needle depth {depth} is not a percentage between 0 and 100")]
    InvalidDepth {
        /// The depth given.
        depth: u32,
    },
    /// No depth was given.
    #[error("no needle depth given")]
    NoDepth,
    /// `max_context_length` leaves no room for any haystack.
    #[error(
        "max_context_length {max_context_length} leaves no room for the haystack (needle: \
         {needle_tokens} tokens, overhead: {OVERHEAD_TOKENS} tokens)"
    )]
    ContextTooShort {
        /// The requested length.
        max_context_length: usize,
        /// Tokens of the needle.
        needle_tokens: usize,
    },
    /// The haystack text has no tokens.
    #[error("the haystack text is empty")]
    EmptyHaystack,
    /// Repeating the haystack does not add tokens (a broken token counter).
    #[error("the token counter does not grow with the haystack ({copies} copies: {tokens} tokens)")]
    CounterNotGrowing {
        /// Copies of the haystack joined.
        copies: usize,
        /// Tokens counted in them.
        tokens: usize,
    },
    /// The token-counting or truncating closure failed (its error, as text).
    #[error("tokenization failed: {0}")]
    Tokenizer(String),
}

/// Which rows to make: kvpress's `max_context_length` and `needle_depth` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedleConfig {
    /// Model tokens available in total; the haystack keeps
    /// `max_context_length − needle tokens − 150` of them.
    pub max_context_length: usize,
    /// Depths in percent (0: start of the haystack, 100: end); one row per depth.
    pub depths: Vec<u32>,
}

/// The texts of the rows: the dataset's `needle`, `question`, `answer_prefix` and
/// `max_new_tokens` columns, and the haystack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedleText {
    /// The inserted text, kept verbatim (including surrounding white space).
    pub needle: String,
    /// The question asked after the context.
    pub question: String,
    /// The text the answer starts with.
    pub answer_prefix: String,
    /// Tokens generated at most.
    pub max_new_tokens: usize,
    /// The haystack; `None` uses the bundled [`ESSAYS`] corpus.
    pub haystack: Option<String>,
}

impl Default for NeedleText {
    /// Our stand-in for the dataset's columns: Greg Kamradt's classic needle (with its
    /// surrounding newlines) and question, no answer prefix (with `"Answer:"` the default
    /// model ends its answer at once), 128 new tokens, the bundled essays.
    fn default() -> Self {
        NeedleText {
            needle: "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores \
                     Park on a sunny day.\n"
                .to_string(),
            question: "What is the best thing to do in San Francisco?".to_string(),
            answer_prefix: String::new(),
            max_new_tokens: 128,
            haystack: None,
        }
    }
}

/// [`needle_in_haystack_with`] with the default texts ([`NeedleText::default`]).
pub fn needle_in_haystack<E: fmt::Display>(
    config: &NeedleConfig,
    count_tokens: &dyn Fn(&str) -> Result<usize, E>,
    truncate: &dyn Fn(&str, usize) -> Result<String, E>,
) -> Result<Vec<Sample>, NeedleError> {
    needle_in_haystack_with(config, &NeedleText::default(), count_tokens, truncate)
}

/// Builds one row per depth, each with the needle inserted at that depth of the same truncated
/// haystack (kvpress's `insert_needle_in_haystack`).
///
/// * `count_tokens(text)`: the number of the model's tokens in `text`, without special tokens
///   (`len(tokenizer.encode(text, add_special_tokens=False))`).
/// * `truncate(text, n)`: the text of the first `n` tokens of `text`
///   (`tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:n],
///   skip_special_tokens=True)`); all of `text` when it has fewer tokens.
///
/// Closure errors are kept as text in [`NeedleError::Tokenizer`]. Every row has
/// `extra["needle"]` (the needle, needed by kvpress's ROUGE metric), `extra["needle_depth"]` and
/// `extra["max_context_length"]`.
pub fn needle_in_haystack_with<E: fmt::Display>(
    config: &NeedleConfig,
    text: &NeedleText,
    count_tokens: &dyn Fn(&str) -> Result<usize, E>,
    truncate: &dyn Fn(&str, usize) -> Result<String, E>,
) -> Result<Vec<Sample>, NeedleError> {
    if config.depths.is_empty() {
        return Err(NeedleError::NoDepth);
    }
    if let Some(&depth) = config.depths.iter().find(|&&d| d > 100) {
        return Err(NeedleError::InvalidDepth { depth });
    }
    let count = |t: &str| count_tokens(t).map_err(|e| NeedleError::Tokenizer(e.to_string()));
    let cut = |t: &str, n: usize| truncate(t, n).map_err(|e| NeedleError::Tokenizer(e.to_string()));

    let needle_tokens = count(&text.needle)?;
    let limit = config
        .max_context_length
        .checked_sub(needle_tokens + OVERHEAD_TOKENS)
        .filter(|&l| l > 0)
        .ok_or(NeedleError::ContextTooShort {
            max_context_length: config.max_context_length,
            needle_tokens,
        })?;

    let base = text.haystack.as_deref().unwrap_or(ESSAYS).trim();
    let base_tokens = count(base)?;
    if base_tokens == 0 {
        return Err(NeedleError::EmptyHaystack);
    }
    // Repeat the haystack until it holds at least `limit` tokens (joining copies can merge a
    // few tokens at the seams, hence the loop).
    let mut copies = limit.div_ceil(base_tokens).max(1);
    let mut previous = 0;
    let (haystack, total) = loop {
        let haystack = vec![base; copies].join("\n\n");
        let tokens = count(&haystack)?;
        if tokens >= limit {
            break (haystack, tokens);
        }
        if tokens <= previous {
            return Err(NeedleError::CounterNotGrowing { copies, tokens });
        }
        previous = tokens;
        copies += (limit - tokens).div_ceil(base_tokens).max(1);
    };

    // tokenized_context = tokenizer.encode(context)[:context_length_limit]
    let kept = total.min(limit);
    let truncated = cut(&haystack, kept)?;

    let mut rows = Vec::with_capacity(config.depths.len());
    for &depth in &config.depths {
        // needle_index = int(len(tokenized_context) * depth / 100)
        let index = kept * depth as usize / 100;
        let at = if index == 0 {
            0
        } else if index >= kept {
            truncated.len()
        } else {
            common_prefix_len(&cut(&truncated, index)?, &truncated)
        };
        let inner = format!("{}{}{}", &truncated[..at], text.needle, &truncated[at..]);
        let mut extra = BTreeMap::new();
        extra.insert(
            "needle".to_string(),
            serde_json::Value::from(text.needle.clone()),
        );
        extra.insert("needle_depth".to_string(), serde_json::Value::from(depth));
        extra.insert(
            "max_context_length".to_string(),
            serde_json::Value::from(config.max_context_length),
        );
        rows.push(Sample {
            context: CONTEXT_WRAPPER.replace("{context}", &inner),
            question: text.question.clone(),
            answer_prefix: text.answer_prefix.clone(),
            answers: vec![text.needle.clone()],
            task: TASK_NAME.to_string(),
            max_new_tokens: text.max_new_tokens,
            extra,
        });
    }
    Ok(rows)
}

/// Bytes `prefix` and `text` share at their start, backed off to a character boundary of
/// `text` (a decoded prefix normally is a literal prefix; a lossy decoding may end differently).
fn common_prefix_len(prefix: &str, text: &str) -> usize {
    let mut n = prefix
        .bytes()
        .zip(text.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whitespace tokenizer: one token per word.
    fn count(text: &str) -> Result<usize, String> {
        Ok(text.split_whitespace().count())
    }

    /// The first `n` words, ending at the end of word `n` (spaces belong to the next token, as
    /// in Llama 3's tokenizer).
    fn truncate(text: &str, n: usize) -> Result<String, String> {
        if n == 0 {
            return Ok(String::new());
        }
        let mut words = 0;
        let mut in_word = false;
        for (i, c) in text.char_indices() {
            if c.is_whitespace() {
                if in_word {
                    words += 1;
                    if words == n {
                        return Ok(text[..i].to_string());
                    }
                }
                in_word = false;
            } else {
                in_word = true;
            }
        }
        Ok(text.to_string())
    }

    fn rows(config: &NeedleConfig, text: &NeedleText) -> Vec<Sample> {
        match needle_in_haystack_with(config, text, &count, &truncate) {
            Ok(rows) => rows,
            Err(e) => panic!("{e}"),
        }
    }

    fn inner(context: &str) -> &str {
        context
            .strip_prefix("This is a very long story book: <book> ")
            .and_then(|c| c.strip_suffix(" </book>."))
            .unwrap_or_default()
    }

    fn words(text: &str) -> usize {
        text.split_whitespace().count()
    }

    #[test]
    fn needle_goes_where_asked() {
        let config = NeedleConfig {
            max_context_length: 4000,
            depths: vec![0, 50, 100],
        };
        let text = NeedleText::default();
        let limit = 4000 - words(&text.needle) - OVERHEAD_TOKENS;
        let out = rows(&config, &text);
        assert_eq!(out.len(), 3);
        for (row, depth) in out.iter().zip([0u32, 50, 100]) {
            let body = inner(&row.context);
            // The haystack keeps `limit` tokens, the needle adds its own.
            assert_eq!(words(body), limit + words(&text.needle));
            let at = body.find(text.needle.as_str()).unwrap_or(usize::MAX);
            assert_eq!(
                words(&body[..at]),
                limit * depth as usize / 100,
                "depth {depth}"
            );
            assert_eq!(row.extra["needle"], serde_json::json!(text.needle));
            assert_eq!(row.extra["needle_depth"], serde_json::json!(depth));
            assert_eq!(row.extra["max_context_length"], serde_json::json!(4000));
            assert_eq!(row.question, text.question);
            assert_eq!(row.answer_prefix, text.answer_prefix);
            assert_eq!(row.answers, std::slice::from_ref(&text.needle));
            assert_eq!(row.task, TASK_NAME);
            assert_eq!(row.max_new_tokens, 128);
        }
        assert!(inner(&out[0].context).starts_with("\nThe best thing to do in San Francisco"));
        assert!(inner(&out[0].context).contains("sunny day.\nMost people who start"));
        assert!(inner(&out[2].context).ends_with(text.needle.as_str()));
        assert!(
            out[1]
                .context
                .contains(" is eat a sandwich and sit in Dolores Park on a sunny day.\n ")
        );
        // The rows share the same haystack.
        let plain = |r: &Sample| inner(&r.context).replacen(text.needle.as_str(), "", 1);
        assert_eq!(
            plain(&out[0]).split_whitespace().collect::<Vec<_>>(),
            plain(&out[1]).split_whitespace().collect::<Vec<_>>()
        );
        assert_eq!(plain(&out[1]), plain(&out[2]));
        // Defaults through the short entry point.
        let same = needle_in_haystack(&config, &count, &truncate);
        assert_eq!(same.ok(), Some(out));
    }

    #[test]
    fn haystack_repeats_for_long_contexts() {
        let essay_tokens = words(ESSAYS);
        let config = NeedleConfig {
            max_context_length: 3 * essay_tokens,
            depths: vec![25],
        };
        let text = NeedleText::default();
        let out = rows(&config, &text);
        let body = inner(&out[0].context);
        assert_eq!(
            words(body) - words(&text.needle),
            3 * essay_tokens - OVERHEAD_TOKENS - words(&text.needle)
        );
        assert!(words(body) > 2 * essay_tokens);
        assert!(body.contains("one stroke at a time.\n\nMost people who start a vegetable garden"));
    }

    #[test]
    fn custom_needle_and_haystack() {
        let config = NeedleConfig {
            max_context_length: 200,
            depths: vec![10],
        };
        let text = NeedleText {
            needle: " The passkey is 12345.".to_string(),
            haystack: Some("one two three four five. ".repeat(20)),
            ..NeedleText::default()
        };
        let out = rows(&config, &text);
        let body = inner(&out[0].context);
        // 200 - 4 - 150 = 46 haystack tokens, needle after 46 * 10 / 100 = 4 of them.
        assert_eq!(words(body), 46 + 4);
        assert!(body.starts_with("one two three four The passkey is 12345. five. one two"));
    }

    #[test]
    fn lossy_decoding_is_handled() {
        // Byte tokens: a truncation inside a character decodes to U+FFFD, as a byte-level BPE
        // decoder does.
        let bytes = |t: &str| -> Result<usize, String> { Ok(t.len()) };
        let cut = |t: &str, n: usize| -> Result<String, String> {
            Ok(String::from_utf8_lossy(&t.as_bytes()[..n.min(t.len())]).into_owned())
        };
        let config = NeedleConfig {
            max_context_length: 150 + 3 + 17,
            depths: vec![50, 100],
        };
        let text = NeedleText {
            needle: "[N]".to_string(),
            haystack: Some("é".repeat(40)),
            ..NeedleText::default()
        };
        let out = needle_in_haystack_with(&config, &text, &bytes, &cut);
        let bodies: Vec<String> = out
            .map(|r| r.iter().map(|s| inner(&s.context).to_string()).collect())
            .unwrap_or_default();
        // 17 bytes kept: 8 characters and a broken one; depth 50 is byte 8 (4 characters).
        assert_eq!(
            bodies,
            [
                "éééé[N]éééé\u{FFFD}".to_string(),
                "éééééééé\u{FFFD}[N]".to_string()
            ]
        );
    }

    #[test]
    fn errors() {
        let run = |max_context_length, depths: Vec<u32>| {
            needle_in_haystack(
                &NeedleConfig {
                    max_context_length,
                    depths,
                },
                &count,
                &truncate,
            )
        };
        assert!(matches!(
            run(4000, vec![101]),
            Err(NeedleError::InvalidDepth { depth: 101 })
        ));
        assert!(matches!(run(4000, vec![]), Err(NeedleError::NoDepth)));
        assert!(matches!(
            run(100, vec![0]),
            Err(NeedleError::ContextTooShort { .. })
        ));
        let config = NeedleConfig {
            max_context_length: 4000,
            depths: vec![0],
        };
        let empty = NeedleText {
            haystack: Some("   ".to_string()),
            ..NeedleText::default()
        };
        assert!(matches!(
            needle_in_haystack_with(&config, &empty, &count, &truncate),
            Err(NeedleError::EmptyHaystack)
        ));
        let constant = |_: &str| -> Result<usize, String> { Ok(10) };
        assert!(matches!(
            needle_in_haystack(&config, &constant, &truncate),
            Err(NeedleError::CounterNotGrowing { .. })
        ));
        let failing = |_: &str, _: usize| -> Result<String, String> { Err("offline".into()) };
        let e = needle_in_haystack(&config, &count, &failing);
        assert!(matches!(&e, Err(NeedleError::Tokenizer(m)) if m == "offline"));
    }
}
