//! Offline, deterministic generator of the RULER synthetic benchmark in kvpress's layout.
//!
//! kvpress evaluates on the Hugging Face dataset `simonjegou/ruler`, which was made by running
//! NVIDIA's RULER scripts (`scripts/data/synthetic/{niah,variable_tracking,
//! common_words_extraction,freq_words_extraction,qa}.py`, task configurations in
//! `scripts/synthetic.yaml`, prompt templates in `scripts/data/synthetic/constants.py`) with the
//! Llama-3.1-8B tokenizer and the `base` (no chat) template, then splitting every prompt into
//! `context` / `question` / `answer_prefix` with the regular expressions of kvpress's
//! `evaluation/benchmarks/ruler/create_huggingface_dataset.py`. This module regenerates such rows
//! without network access:
//!
//! * The prompt text follows the RULER revision kvpress used (autumn 2024, RULER commit
//!   `e40fae1`): same templates (including the `assgined` typo of the variable-tracking answer
//!   prefix, the unspaced `are:1.` of the common-words few-shot answer and the variable-tracking
//!   in-context example whose question lost its last word), same needles, same task parameters.
//! * The rows are cut exactly where kvpress's regular expressions cut them; the split is built in
//!   rather than searched for, and the tests check that the regular expressions would cut at the
//!   same places.
//! * Lengths are measured in the caller's tokens (a counting closure). As RULER does, a prompt
//!   (context + question + answer prefix, no special tokens) plus the task's `max_new_tokens` must
//!   not exceed [`RulerConfig::context_length`]; the haystack size is found by binary search (as
//!   in current RULER), and a sample whose text is denser than the probe's is sized on its own,
//!   so synthetic rows land within 2% below the target (measured with the default model's
//!   tokenizer at 2k–8k), except `niah_multikey_2/3` at short lengths: their haystack is whole
//!   needle-shaped lines (~55 tokens with uuids), so they land within one line.
//!
//! Deviations from RULER, all deliberate:
//!
//! * Randomness comes from our own SplitMix64 generator, seeded per (seed, task, sample index),
//!   so output is byte-identical across platforms and crate versions; it cannot reproduce
//!   RULER's Python `random` draws. Sample `i` does not depend on how many samples are asked for.
//!   The places where RULER reshuffles with a fresh `random.Random(seed)` (needles, word lists,
//!   documents) use a fresh generator derived from the seed alone, as RULER does.
//! * Paul Graham's essays (RULER's essay haystack) and the wonderwords/english word lists are
//!   not shipped. The essay haystack cycles `data/essays.txt`, an original essay-like corpus
//!   written for this project; keys and common words come from `data/words.txt`, a compact
//!   original list of nouns, adjectives and verbs. When the common-words task needs more
//!   distinct words than the list holds, it uses adjective-noun pairs (RULER switches to a large
//!   English word list instead).
//! * NLTK's sentence splitter is replaced by a simple one (a sentence ends at `.`, `!` or `?`
//!   followed by white space); the bundled corpus is written so that this is exact.
//! * Haystack sizes are fitted per sample by stepping down by an estimate of the excess rather
//!   than by RULER's coarse `incremental` steps, so rows stay within 2% of the target length.
//!   The frequent-words task also checks `max_new_tokens` in its length (RULER's 2024 revision
//!   let those rows exceed the target by up to 50 tokens).
//! * Keys inside one sample are distinct, and the distractor needles of `niah_multikey_2/3`
//!   never reuse a queried key (RULER can, rarely, draw duplicates and make a row ambiguous).
//! * The variable-tracking in-context example is drawn once per (seed) and shared by all
//!   samples, as in the 2024 revision kvpress used (RULER later re-randomised it per sample).
//! * QA: RULER reads `json/squad.json` (SQuAD v2 dev) and `json/hotpotqa.json` (HotpotQA dev,
//!   distractor setting); here the caller gives their directory or one of them
//!   ([`RulerConfig::qa_file`]). The haystack unit is a whole document, so QA rows can end
//!   further below the target length than the synthetic ones (as in RULER).

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::eval::sample::Sample;

/// The original essay-like corpus used wherever RULER (and kvpress's needle-in-a-haystack) use
/// Paul Graham's essays. Plain English prose, paragraphs separated by blank lines.
pub const ESSAYS: &str = include_str!("data/essays.txt");

/// The compact word list (sections `[nouns]`, `[adjectives]`, `[verbs]`) standing in for the
/// wonderwords lists RULER samples keys and common words from.
pub const WORDS: &str = include_str!("data/words.txt");

/// RULER's "noise" haystack sentence (`niah.py`, `variable_tracking.py`).
pub const NOISE: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

/// Errors of the RULER generator.
#[derive(Debug, thiserror::Error)]
pub enum RulerError {
    /// A task name that is not one of RULER's 13 task names.
    #[error("unknown RULER task `{name}` (expected one of: {})", RulerTask::ALL.map(|t| t.name()).join(", "))]
    UnknownTask {
        /// The name that was given.
        name: String,
    },
    /// A QA task was asked for without the path of its source dataset.
    #[error(
        "RULER task {task} needs the {dataset} JSON file ({url}, as RULER's \
         scripts/data/synthetic/json/download_qa_dataset.sh downloads it): give its path, or a \
         directory holding squad.json and hotpotqa.json"
    )]
    MissingQaFile {
        /// The QA task.
        task: RulerTask,
        /// The dataset it reads (SQuAD or HotpotQA).
        dataset: &'static str,
        /// Where RULER downloads that file from.
        url: &'static str,
    },
    /// The QA file holds the other QA dataset (`qa_1` reads SQuAD, `qa_2` HotpotQA).
    #[error(
        "RULER task {task} reads a {expected} file, but {} looks like a {found} file (a SQuAD \
         file is a JSON object, a HotpotQA file a JSON array); give a directory holding \
         squad.json and hotpotqa.json to generate both QA tasks",
        path.display()
    )]
    QaWrongDataset {
        /// The QA task.
        task: RulerTask,
        /// The file.
        path: PathBuf,
        /// The dataset the task reads.
        expected: &'static str,
        /// The dataset the file seems to hold.
        found: &'static str,
    },
    /// The QA file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    QaRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The QA file is not valid JSON of the expected format.
    #[error("{} is not a {dataset} JSON file: {source}", path.display())]
    QaParse {
        /// The file.
        path: PathBuf,
        /// The expected format.
        dataset: &'static str,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The QA file holds fewer answerable questions than samples were asked for.
    #[error("{} has {available} answerable questions, {requested} samples were asked for", path.display())]
    NotEnoughQuestions {
        /// The file.
        path: PathBuf,
        /// Usable questions in the file.
        available: usize,
        /// Requested samples.
        requested: usize,
    },
    /// Even the smallest haystack makes the prompt longer than the requested length.
    #[error(
        "context length {context_length} is too short for RULER task {task}: the smallest prompt \
         needs {needed} tokens (including {max_new_tokens} tokens to generate)"
    )]
    ContextTooShort {
        /// The task.
        task: RulerTask,
        /// The requested length.
        context_length: usize,
        /// Tokens the smallest prompt needs (prompt plus `max_new_tokens`).
        needed: usize,
        /// The task's generation budget, counted in the length as RULER does.
        max_new_tokens: usize,
    },
    /// The token counter does not grow with the text, so no haystack size can be fitted.
    #[error(
        "the token counter does not grow with the text (task {task}); cannot size the haystack"
    )]
    CounterNotGrowing {
        /// The task.
        task: RulerTask,
    },
    /// The token-counting closure failed (its error, as text).
    #[error("token counting failed: {0}")]
    Tokenizer(String),
}

/// One of RULER's 13 tasks (names as in RULER's `scripts/synthetic.yaml` and kvpress's `task`
/// column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RulerTask {
    /// `niah_single_1`: noise haystack, word key, 7-digit number value.
    NiahSingle1,
    /// `niah_single_2`: essay haystack, word key, number value.
    NiahSingle2,
    /// `niah_single_3`: essay haystack, word key, UUID value.
    NiahSingle3,
    /// `niah_multikey_1`: essay haystack, 4 keys (1 queried), number values.
    NiahMultikey1,
    /// `niah_multikey_2`: haystack made of distractor needles, word key, number value.
    NiahMultikey2,
    /// `niah_multikey_3`: haystack of distractor needles, UUID key, UUID value.
    NiahMultikey3,
    /// `niah_multivalue`: essay haystack, 1 key with 4 number values.
    NiahMultivalue,
    /// `niah_multiquery`: essay haystack, 4 keys, all 4 queried.
    NiahMultiquery,
    /// `vt`: variable tracking, 1 chain of 4 hops in the noise haystack.
    Vt,
    /// `cwe`: common words extraction (10 words ×30 among words ×3).
    Cwe,
    /// `fwe`: frequent words extraction (Zipf α = 2 over coded words).
    Fwe,
    /// `qa_1`: SQuAD question among distractor paragraphs.
    Qa1,
    /// `qa_2`: HotpotQA question among distractor paragraphs.
    Qa2,
}

impl RulerTask {
    /// All 13 tasks in RULER's order.
    pub const ALL: [RulerTask; 13] = [
        RulerTask::NiahSingle1,
        RulerTask::NiahSingle2,
        RulerTask::NiahSingle3,
        RulerTask::NiahMultikey1,
        RulerTask::NiahMultikey2,
        RulerTask::NiahMultikey3,
        RulerTask::NiahMultivalue,
        RulerTask::NiahMultiquery,
        RulerTask::Vt,
        RulerTask::Cwe,
        RulerTask::Fwe,
        RulerTask::Qa1,
        RulerTask::Qa2,
    ];

    /// The 11 tasks that need no external file (all but `qa_1` and `qa_2`, the last two).
    pub const SYNTHETIC: &'static [RulerTask] = Self::ALL.split_at(11).0;

    /// RULER's name of the task (`niah_single_1`, ..., `qa_2`).
    pub fn name(self) -> &'static str {
        match self {
            RulerTask::NiahSingle1 => "niah_single_1",
            RulerTask::NiahSingle2 => "niah_single_2",
            RulerTask::NiahSingle3 => "niah_single_3",
            RulerTask::NiahMultikey1 => "niah_multikey_1",
            RulerTask::NiahMultikey2 => "niah_multikey_2",
            RulerTask::NiahMultikey3 => "niah_multikey_3",
            RulerTask::NiahMultivalue => "niah_multivalue",
            RulerTask::NiahMultiquery => "niah_multiquery",
            RulerTask::Vt => "vt",
            RulerTask::Cwe => "cwe",
            RulerTask::Fwe => "fwe",
            RulerTask::Qa1 => "qa_1",
            RulerTask::Qa2 => "qa_2",
        }
    }

    /// Tokens generated for the task (RULER's `tokens_to_generate`, kvpress's
    /// `MAX_NEW_TOKENS`): niah 128, vt 30, cwe 120, fwe 50, qa 32. They count in the length.
    pub fn max_new_tokens(self) -> usize {
        match self {
            RulerTask::Vt => 30,
            RulerTask::Cwe => 120,
            RulerTask::Fwe => 50,
            RulerTask::Qa1 | RulerTask::Qa2 => 32,
            _ => 128,
        }
    }

    /// Whether the task reads a QA dataset file (`qa_1`, `qa_2`).
    pub fn needs_qa_file(self) -> bool {
        !RulerTask::SYNTHETIC.contains(&self)
    }
}

impl fmt::Display for RulerTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RulerTask {
    type Err = RulerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RulerTask::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| RulerError::UnknownTask {
                name: s.to_string(),
            })
    }
}

/// Settings of one generation run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulerConfig {
    /// Target length in the model's tokens (RULER's `max_seq_length`): prompt + `max_new_tokens`
    /// stays at or below it (kvpress's dataset has 4096, 8192 and 16384).
    pub context_length: usize,
    /// Samples per task (kvpress's dataset has 500).
    pub samples: usize,
    /// Seed (RULER's `random_seed`, default 42). Same seed, same rows, byte for byte.
    pub seed: u64,
    /// Source of the QA tasks: a directory holding RULER's `squad.json` (SQuAD v2 dev,
    /// <https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json>, for `qa_1`) and
    /// `hotpotqa.json` (HotpotQA dev distractor, `hotpot_dev_distractor_v1.json`, for `qa_2`),
    /// i.e. RULER's `scripts/data/synthetic/json/`; or one of those files (then only the QA task
    /// of that dataset can be generated; the format is recognised from the JSON). `None`: the
    /// QA tasks fail with [`RulerError::MissingQaFile`].
    pub qa_file: Option<PathBuf>,
}

impl Default for RulerConfig {
    /// 4096 tokens, 500 samples, seed 42 (RULER's and kvpress's defaults), no QA files.
    fn default() -> Self {
        RulerConfig {
            context_length: 4096,
            samples: 500,
            seed: 42,
            qa_file: None,
        }
    }
}

/// Generates `config.samples` rows of `task` in kvpress's layout (`context`, `question`,
/// `answer_prefix`, `answers` = RULER's `outputs`, `task`, `max_new_tokens`; `extra` is empty, as
/// kvpress's dataset has no other column).
///
/// `count_tokens` returns the number of the model's tokens in a text, without special tokens
/// (RULER's `text_to_tokens`); its error is kept as text in [`RulerError::Tokenizer`]. The
/// haystack is sized so that
/// `count_tokens(context + question + answer_prefix) + max_new_tokens <= context_length`, as close
/// to the limit as the haystack's unit allows.
///
/// Mirrors RULER's `prepare.py` for one task followed by kvpress's
/// `create_huggingface_dataset.py`; see the module documentation for the deviations.
pub fn generate<E: fmt::Display>(
    task: RulerTask,
    config: &RulerConfig,
    count_tokens: &dyn Fn(&str) -> Result<usize, E>,
) -> Result<Vec<Sample>, RulerError> {
    let count = |text: &str| count_tokens(text).map_err(|e| RulerError::Tokenizer(e.to_string()));
    let sizer = Sizer {
        task,
        context_length: config.context_length,
        count_tokens: &count,
    };
    let lexicon = Lexicon::parse(WORDS);
    let small = config.context_length < 4096;
    let prompts = match task {
        RulerTask::Vt => {
            let icl = vt_icl_example(config.seed, task, &sizer)?;
            let builder = VtBuilder {
                seed: config.seed,
                task,
                icl_prefix: icl,
                small,
            };
            sizer.run(&builder, config.samples)?
        }
        RulerTask::Cwe => {
            let builder = CweBuilder::new(config.seed, task, &lexicon, small);
            sizer.run(&builder, config.samples)?
        }
        RulerTask::Fwe => {
            let builder = FweBuilder {
                seed: config.seed,
                task,
                vocab_size: config.context_length / 50,
            };
            if builder.vocab_size < 5 {
                return Err(RulerError::ContextTooShort {
                    task,
                    context_length: config.context_length,
                    needed: 250,
                    max_new_tokens: task.max_new_tokens(),
                });
            }
            sizer.run(&builder, config.samples)?
        }
        RulerTask::Qa1 | RulerTask::Qa2 => {
            let data = QaData::load(task, config)?;
            if data.questions.len() < config.samples {
                return Err(RulerError::NotEnoughQuestions {
                    path: data.path.clone(),
                    available: data.questions.len(),
                    requested: config.samples,
                });
            }
            let builder = QaBuilder {
                seed: config.seed,
                task,
                data: &data,
            };
            sizer.run(&builder, config.samples)?
        }
        _ => {
            let params = niah_params(task);
            let builder = NiahBuilder::new(config.seed, task, params, &lexicon, small);
            sizer.run(&builder, config.samples)?
        }
    };
    Ok(prompts
        .into_iter()
        .map(|p| Sample {
            context: p.context,
            question: p.question,
            answer_prefix: p.answer_prefix,
            answers: p.answers,
            task: task.name().to_string(),
            max_new_tokens: task.max_new_tokens(),
            extra: Default::default(),
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Randomness

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and fixed forever, so datasets never change
/// with a crate version.
#[derive(Debug, Clone)]
struct Rng {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Independent streams drawn from one seed.
#[derive(Debug, Clone, Copy)]
enum Stream {
    /// Everything random about sample `i`.
    Sample(usize),
    /// The sample used while searching for the haystack size (RULER's first search sample).
    Probe,
    /// RULER's `random.Random(args.random_seed).shuffle(...)`: the same permutation every time.
    FixedShuffle,
    /// Shared state drawn once per task (word-list order, the vt in-context example).
    Shared,
}

impl Rng {
    fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    fn for_stream(seed: u64, task: RulerTask, stream: Stream) -> Self {
        let (tag, index) = match stream {
            Stream::Sample(i) => (1u64, i as u64),
            Stream::Probe => (2, 0),
            Stream::FixedShuffle => (3, 0),
            Stream::Shared => (4, 0),
        };
        let mut h = mix64(seed ^ GOLDEN);
        h = mix64(h ^ fnv1a(task.name()));
        h = mix64(h ^ tag);
        h = mix64(h.wrapping_add(index.wrapping_mul(GOLDEN)));
        Rng::new(h)
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in `0..n` (`n > 0`), without modulo bias.
    fn below(&mut self, n: usize) -> usize {
        let n = n.max(1) as u64;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }

    /// Uniform in `lo..=hi`.
    fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below((hi - lo + 1) as usize) as u64
    }

    /// Fisher-Yates shuffle.
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    /// `k` distinct indices of `0..n` in selection order (Python's `random.sample(range(n), k)`);
    /// `k` is clamped to `n`.
    fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        let k = k.min(n);
        if k.saturating_mul(4) < n {
            // Sparse: rejection keeps memory small for huge populations (adjective-noun pairs).
            let mut seen = HashSet::with_capacity(k);
            let mut out = Vec::with_capacity(k);
            while out.len() < k {
                let x = self.below(n);
                if seen.insert(x) {
                    out.push(x);
                }
            }
            out
        } else {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = i + self.below(n - i);
                pool.swap(i, j);
            }
            pool.truncate(k);
            pool
        }
    }

    /// `k` uppercase ASCII letters.
    fn uppercase(&mut self, k: usize) -> String {
        (0..k)
            .map(|_| char::from(b'A' + self.below(26) as u8))
            .collect()
    }

    /// `k` lowercase ASCII letters.
    fn lowercase(&mut self, k: usize) -> String {
        (0..k)
            .map(|_| char::from(b'a' + self.below(26) as u8))
            .collect()
    }

    /// A random version-4 UUID, formatted like Python's `uuid.UUID(int=..., version=4)`.
    fn uuid4(&mut self) -> String {
        let mut v = (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64());
        v &= !(0xc000u128 << 48);
        v |= 0x8000u128 << 48;
        v &= !(0xf000u128 << 64);
        v |= 4u128 << 76;
        let h = format!("{v:032x}");
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Word lists and text helpers

/// The parsed `data/words.txt`.
#[derive(Debug, Clone)]
struct Lexicon {
    nouns: Vec<&'static str>,
    adjectives: Vec<&'static str>,
    verbs: Vec<&'static str>,
}

impl Lexicon {
    fn parse(text: &'static str) -> Self {
        let mut lex = Lexicon {
            nouns: Vec::new(),
            adjectives: Vec::new(),
            verbs: Vec::new(),
        };
        let mut section: Option<&str> = None;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(name);
                continue;
            }
            match section {
                Some("nouns") => lex.nouns.push(line),
                Some("adjectives") => lex.adjectives.push(line),
                Some("verbs") => lex.verbs.push(line),
                _ => {}
            }
        }
        for list in [&mut lex.nouns, &mut lex.adjectives, &mut lex.verbs] {
            list.sort_unstable();
            list.dedup();
        }
        lex
    }

    /// Number of `adjective-noun` keys (RULER's `words` for needle keys).
    fn pair_count(&self) -> usize {
        self.adjectives.len() * self.nouns.len()
    }

    /// The `i`-th `adjective-noun` pair in sorted order.
    fn pair(&self, i: usize) -> String {
        let n = self.nouns.len().max(1);
        let adj = self.adjectives.get(i / n).copied().unwrap_or("plain");
        let noun = self.nouns.get(i % n).copied().unwrap_or("thing");
        format!("{adj}-{noun}")
    }
}

/// RULER's needle positions: `np.round(np.linspace(0, 100, 40)).astype(int)` (no ties at .5).
fn ruler_depths() -> Vec<usize> {
    (0..40)
        .map(|k| (k as f64 * 100.0 / 39.0).round() as usize)
        .collect()
}

/// Splits space-normalised text into sentences: a sentence ends at `.`, `!` or `?` (optionally
/// followed by closing quotes or brackets) followed by a space. Stand-in for NLTK's
/// `sent_tokenize`; joining the result with single spaces gives the input back.
fn split_sentences(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if matches!(bytes[i], b'.' | b'!' | b'?') {
            let mut j = i + 1;
            while j < bytes.len() && matches!(bytes[j], b'"' | b'\'' | b')' | b']') {
                j += 1;
            }
            if j < bytes.len() && bytes[j] == b' ' {
                let sentence = text[start..j].trim();
                if !sentence.is_empty() {
                    out.push(sentence);
                }
                start = j + 1;
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// The words of the essay corpus (RULER: `re.sub(r'\s+', " ", essay).split(" ")`).
fn essay_words() -> Vec<&'static str> {
    ESSAYS.split_whitespace().collect()
}

/// `" ".join(haystack[:n])`, cycling the corpus when `n` exceeds it (current RULER).
fn essay_text(words: &[&str], n: usize) -> String {
    let mut text = String::with_capacity(n * 7);
    if words.is_empty() {
        return text;
    }
    for i in 0..n {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(words[i % words.len()]);
    }
    text
}

/// RULER's essay insertion (`niah.py`): split into sentences, pick distinct depths from
/// [`ruler_depths`], and put each needle between sentences at `int(len * depth / 100)`.
fn insert_into_essay(text: &str, needles: &[String], rng: &mut Rng) -> String {
    let sentences = split_sentences(text.trim());
    let depths = ruler_depths();
    let mut positions: Vec<usize> = rng
        .sample_indices(depths.len(), needles.len())
        .into_iter()
        .map(|i| (sentences.len() as f64 * (depths[i] as f64 / 100.0)) as usize)
        .collect();
    positions.sort_unstable();
    let mut bounds = vec![0];
    bounds.extend(positions);
    bounds.push(sentences.len());
    let mut parts: Vec<String> = Vec::with_capacity(2 * needles.len() + 1);
    for i in 1..bounds.len() {
        let (a, b) = (
            bounds[i - 1].min(sentences.len()),
            bounds[i].min(sentences.len()),
        );
        parts.push(sentences[a..b.max(a)].join(" "));
        if let Some(needle) = needles.get(i - 1) {
            parts.push(needle.clone());
        }
    }
    parts.join(" ")
}

/// RULER's line insertion (`niah.py`): `sorted(random.sample(range(n), k), reverse=True)` zipped
/// with the needles, each inserted with `list.insert`.
fn insert_lines(lines: &mut Vec<String>, needles: &[String], rng: &mut Rng) {
    let mut indexes = rng.sample_indices(lines.len(), needles.len());
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    for (index, needle) in indexes.into_iter().zip(needles) {
        lines.insert(index, needle.clone());
    }
}

// ---------------------------------------------------------------------------------------------
// Sizing

/// One prompt split the way kvpress splits it.
#[derive(Debug, Clone, PartialEq)]
struct Prompt {
    context: String,
    question: String,
    answer_prefix: String,
    answers: Vec<String>,
}

impl Prompt {
    /// The whole RULER input (template with the answer prefix appended, as `prepare.py` does).
    fn full(&self) -> String {
        let mut s = String::with_capacity(
            self.context.len() + self.question.len() + self.answer_prefix.len(),
        );
        s.push_str(&self.context);
        s.push_str(&self.question);
        s.push_str(&self.answer_prefix);
        s
    }
}

/// A task's prompt generator, parameterised by the haystack size in its own units (sentences,
/// words, documents).
trait Builder {
    /// Smallest valid haystack for `sample` (`None`: the search probe).
    fn min_units(&self, sample: Option<usize>) -> usize;
    /// First size tried by the search (RULER's `incremental`).
    fn probe_units(&self) -> usize;
    /// The prompt of `sample` (`None`: the search probe) with `units` haystack units. The same
    /// sample always draws the same needles whatever `units` is.
    fn build(&self, sample: Option<usize>, units: usize) -> Result<Prompt, RulerError>;
}

/// Sizes haystacks against a token budget.
struct Sizer<'a> {
    task: RulerTask,
    context_length: usize,
    count_tokens: &'a dyn Fn(&str) -> Result<usize, RulerError>,
}

/// No haystack grows past this many units (guards against counters that do not grow).
const MAX_UNITS: usize = 1 << 26;

impl Sizer<'_> {
    fn measure(&self, text: &str) -> Result<usize, RulerError> {
        (self.count_tokens)(text)
    }

    fn too_short(&self, prompt_tokens: usize) -> RulerError {
        RulerError::ContextTooShort {
            task: self.task,
            context_length: self.context_length,
            needed: prompt_tokens + self.task.max_new_tokens(),
            max_new_tokens: self.task.max_new_tokens(),
        }
    }

    /// Largest number of units whose prompt (measured by `measure_units`) fits in `budget`, by
    /// binary search (current RULER's `generate_samples`), plus the tokens per unit near it.
    fn search(
        &self,
        min: usize,
        probe: usize,
        budget: usize,
        measure_units: &dyn Fn(usize) -> Result<usize, RulerError>,
    ) -> Result<(usize, f64), RulerError> {
        let l_min = measure_units(min)?;
        if l_min > budget {
            return Err(self.too_short(l_min));
        }
        let probe = probe.max(min + 1);
        let l_probe = measure_units(probe)?;
        let (mut lo, mut l_lo, mut hi) = if l_probe > budget {
            (min, l_min, probe)
        } else {
            if l_probe <= l_min {
                return Err(RulerError::CounterNotGrowing { task: self.task });
            }
            let per_unit = (l_probe - l_min) as f64 / (probe - min) as f64;
            let extra = (budget - l_probe) as f64 / per_unit * 1.02;
            let guess = probe.saturating_add(extra.min(MAX_UNITS as f64) as usize + 1);
            let (mut lo, mut l_lo, mut hi) = (probe, l_probe, guess.max(probe + 1));
            loop {
                if hi > MAX_UNITS {
                    return Err(RulerError::CounterNotGrowing { task: self.task });
                }
                let l_hi = measure_units(hi)?;
                if l_hi > budget {
                    break;
                }
                if l_hi <= l_lo {
                    return Err(RulerError::CounterNotGrowing { task: self.task });
                }
                (lo, l_lo) = (hi, l_hi);
                hi = hi.saturating_mul(2);
            }
            (lo, l_lo, hi)
        };
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let l_mid = measure_units(mid)?;
            if l_mid <= budget {
                (lo, l_lo) = (mid, l_mid);
            } else {
                hi = mid;
            }
        }
        let per_unit = if lo > min {
            (l_lo.saturating_sub(l_min) as f64 / (lo - min) as f64).max(1e-3)
        } else {
            1.0
        };
        Ok((lo, per_unit))
    }

    /// Finds the haystack size on the probe sample, then generates every sample, stepping its
    /// haystack down until it fits (RULER's per-sample `while True` loop).
    fn run(&self, builder: &dyn Builder, samples: usize) -> Result<Vec<Prompt>, RulerError> {
        let max_new = self.task.max_new_tokens();
        let budget = self
            .context_length
            .checked_sub(max_new)
            .ok_or_else(|| self.too_short(0))?;
        if samples == 0 {
            return Ok(Vec::new());
        }
        let measure_units = |units: usize| -> Result<usize, RulerError> {
            self.measure(&builder.build(None, units)?.full())
        };
        let (units, per_unit) = self.search(
            builder.min_units(None),
            builder.probe_units(),
            budget,
            &measure_units,
        )?;
        let mut out = Vec::with_capacity(samples);
        for index in 0..samples {
            let min = builder.min_units(Some(index));
            let mut n = units.max(min);
            loop {
                let prompt = builder.build(Some(index), n)?;
                let len = self.measure(&prompt.full())?;
                if len <= budget {
                    // a sample whose text is denser than the probe's would end short: size it
                    // on its own
                    if (len + max_new) * 100 < self.context_length * 98 {
                        let measure = |units: usize| -> Result<usize, RulerError> {
                            self.measure(&builder.build(Some(index), units)?.full())
                        };
                        let (fit, _) = self.search(min, n, budget, &measure)?;
                        out.push(builder.build(Some(index), fit)?);
                    } else {
                        out.push(prompt);
                    }
                    break;
                }
                if n <= min {
                    return Err(self.too_short(len));
                }
                let step = (((len - budget) as f64 / per_unit).ceil() as usize).max(1);
                n = n.saturating_sub(step).max(min);
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Needle in a haystack (niah.py)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Haystack {
    /// Repeated [`NOISE`] lines (`type_haystack: noise`, called `repeat` in 2024).
    Noise,
    /// The essay corpus.
    Essay,
    /// Lines that look like needles, with other keys (`type_haystack: needle`).
    Needle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Numbers,
    Words,
    Uuids,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Numbers => "numbers",
            Kind::Words => "words",
            Kind::Uuids => "uuids",
        }
    }

    fn singular(self) -> &'static str {
        match self {
            Kind::Numbers => "number",
            Kind::Words => "word",
            Kind::Uuids => "uuid",
        }
    }
}

/// One `niah_*` entry of RULER's `synthetic.yaml`.
#[derive(Debug, Clone, Copy)]
struct NiahParams {
    haystack: Haystack,
    key: Kind,
    value: Kind,
    num_k: usize,
    num_v: usize,
    num_q: usize,
}

fn niah_params(task: RulerTask) -> NiahParams {
    let p = |haystack, key, value, num_k, num_v, num_q| NiahParams {
        haystack,
        key,
        value,
        num_k,
        num_v,
        num_q,
    };
    match task {
        RulerTask::NiahSingle1 => p(Haystack::Noise, Kind::Words, Kind::Numbers, 1, 1, 1),
        RulerTask::NiahSingle3 => p(Haystack::Essay, Kind::Words, Kind::Uuids, 1, 1, 1),
        RulerTask::NiahMultikey1 => p(Haystack::Essay, Kind::Words, Kind::Numbers, 4, 1, 1),
        RulerTask::NiahMultikey2 => p(Haystack::Needle, Kind::Words, Kind::Numbers, 1, 1, 1),
        RulerTask::NiahMultikey3 => p(Haystack::Needle, Kind::Uuids, Kind::Uuids, 1, 1, 1),
        RulerTask::NiahMultivalue => p(Haystack::Essay, Kind::Words, Kind::Numbers, 1, 4, 1),
        RulerTask::NiahMultiquery => p(Haystack::Essay, Kind::Words, Kind::Numbers, 1, 1, 4),
        // niah_single_2 (and, unreachably, the non-niah tasks).
        _ => p(Haystack::Essay, Kind::Words, Kind::Numbers, 1, 1, 1),
    }
}

struct NiahBuilder<'a> {
    seed: u64,
    task: RulerTask,
    params: NiahParams,
    lexicon: &'a Lexicon,
    essay: Vec<&'static str>,
    small: bool,
}

impl<'a> NiahBuilder<'a> {
    fn new(
        seed: u64,
        task: RulerTask,
        params: NiahParams,
        lexicon: &'a Lexicon,
        small: bool,
    ) -> Self {
        NiahBuilder {
            seed,
            task,
            params,
            lexicon,
            essay: essay_words(),
            small,
        }
    }

    fn num_keys(&self) -> usize {
        self.params.num_k.max(self.params.num_q)
    }

    fn random(&self, kind: Kind, rng: &mut Rng) -> String {
        match kind {
            Kind::Numbers => rng.range_inclusive(1_000_000, 9_999_999).to_string(),
            Kind::Words => self.lexicon.pair(rng.below(self.lexicon.pair_count())),
            Kind::Uuids => rng.uuid4(),
        }
    }

    fn needle(&self, key: &str, value: &str) -> String {
        format!(
            "One of the special magic {} for {key} is: {value}.",
            self.params.value.plural()
        )
    }
}

impl Builder for NiahBuilder<'_> {
    fn min_units(&self, _sample: Option<usize>) -> usize {
        match self.params.haystack {
            Haystack::Essay => 1,
            _ => self.num_keys() * self.params.num_v,
        }
    }

    fn probe_units(&self) -> usize {
        match (self.params.haystack, self.small) {
            (Haystack::Essay, _) => 500,
            (_, false) => 25,
            (_, true) => 5,
        }
    }

    fn build(&self, sample: Option<usize>, units: usize) -> Result<Prompt, RulerError> {
        let p = self.params;
        let mut rng = Rng::for_stream(
            self.seed,
            self.task,
            sample.map_or(Stream::Probe, Stream::Sample),
        );
        let mut keys: Vec<String> = Vec::new();
        let mut values: Vec<Vec<String>> = Vec::new();
        let mut needles = Vec::new();
        for _ in 0..self.num_keys() {
            let key = loop {
                let k = self.random(p.key, &mut rng);
                if !keys.contains(&k) {
                    break k;
                }
            };
            let mut vs = Vec::new();
            for _ in 0..p.num_v {
                let v = self.random(p.value, &mut rng);
                needles.push(self.needle(&key, &v));
                vs.push(v);
            }
            keys.push(key);
            values.push(vs);
        }
        Rng::for_stream(self.seed, self.task, Stream::FixedShuffle).shuffle(&mut needles);

        let haystack = match p.haystack {
            Haystack::Essay => {
                insert_into_essay(&essay_text(&self.essay, units), &needles, &mut rng)
            }
            Haystack::Noise => {
                let mut lines = vec![NOISE.to_string(); units];
                insert_lines(&mut lines, &needles, &mut rng);
                lines.join("\n")
            }
            Haystack::Needle => {
                let mut lines = Vec::with_capacity(units + needles.len());
                for _ in 0..units {
                    let key = loop {
                        let k = self.random(p.key, &mut rng);
                        if !keys.contains(&k) {
                            break k;
                        }
                    };
                    let value = self.random(p.value, &mut rng);
                    lines.push(self.needle(&key, &value));
                }
                insert_lines(&mut lines, &needles, &mut rng);
                lines.join("\n")
            }
        };

        let indices = rng.sample_indices(self.num_keys(), p.num_q);
        let queries: Vec<&str> = indices.iter().map(|&i| keys[i].as_str()).collect();
        let answers: Vec<String> = indices
            .iter()
            .flat_map(|&i| values[i].iter().cloned())
            .collect();
        let query = match queries.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{}, and {last}", rest.join(", ")),
            _ => queries.concat(),
        };

        // RULER rewrites its plural template when a single value is asked for:
        // Some -> A, "are all" -> is, are -> is, and the value type loses its "s".
        let single = p.num_q * p.num_v == 1;
        let (some, are, are_all, kind) = if single {
            ("A", "is", "is", p.value.singular())
        } else {
            ("Some", "are", "are all", p.value.plural())
        };
        Ok(Prompt {
            context: format!(
                "{some} special magic {kind} {are} hidden within the following text. Make sure to \
                 memorize it. I will quiz you about the {kind} afterwards.\n{haystack}\n"
            ),
            question: format!(
                "What {are_all} the special magic {kind} for {query} mentioned in the provided text? "
            ),
            answer_prefix: format!(
                "The special magic {kind} for {query} mentioned in the provided text {are}"
            ),
            answers,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Variable tracking (variable_tracking.py)

const VT_HOPS: usize = 4;
const VT_CHAINS: usize = 1;
const VT_HEAD: &str =
    "Memorize and track the chain(s) of variable assignment hidden in the following text.";
/// Token budget of the in-context example (RULER builds it with `max_seq_length=500`).
const VT_ICL_LENGTH: usize = 500;

/// RULER's `generate_chains`: `num_chains` chains of `num_hops + 1` distinct variables
/// (3 letters in the in-context example, 5 otherwise), the first assigned a 5-digit value.
fn vt_chains(rng: &mut Rng, is_icl: bool) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let letters = if is_icl { 3 } else { 5 };
    let needed = (VT_HOPS + 1) * VT_CHAINS;
    let mut all: Vec<String> = Vec::with_capacity(needed);
    while all.len() < needed {
        let v = rng.uppercase(letters);
        if !all.contains(&v) {
            all.push(v);
        }
    }
    let mut vars = Vec::new();
    let mut chains = Vec::new();
    for group in all.chunks(VT_HOPS + 1) {
        let value = rng.range_inclusive(10_000, 99_998);
        let mut chain = vec![format!("VAR {} = {value}", group[0])];
        for j in 0..VT_HOPS {
            chain.push(format!("VAR {} = VAR {} ", group[j + 1], group[j]));
        }
        vars.push(group.to_vec());
        chains.push(chain);
    }
    (vars, chains)
}

/// RULER's 2024 `generate_input_output` haystack: noise lines ending in a newline, chain
/// statements inserted at sorted random positions, everything joined with spaces.
fn vt_context(rng: &mut Rng, units: usize, chains: &[Vec<String>]) -> String {
    let mut sentences = vec![format!("{NOISE}\n"); units];
    for chain in chains {
        let mut positions = rng.sample_indices(sentences.len(), chain.len());
        positions.sort_unstable();
        for (j, p) in positions.into_iter().enumerate() {
            let at = (p + j).min(sentences.len());
            sentences.insert(at, chain[j].clone());
        }
    }
    sentences.join(" ").replace(". \n", ".\n")
}

fn vt_value(chains: &[Vec<String>]) -> String {
    chains
        .first()
        .and_then(|c| c.first())
        .and_then(|s| s.rsplit('=').next())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The answer prefix of RULER's `constants.py` as of 2024, typo included (`assgined`), since
/// kvpress's dataset carries it.
fn vt_answer_prefix(value: &str) -> String {
    format!(
        "Answer: According to the chain(s) of variable assignment in the text above, {} \
         variables are assgined the value {value}, they are: ",
        VT_HOPS + 1
    )
}

/// The in-context example RULER prepends to every vt prompt, already wrapped as RULER inserts
/// it: `" " + example + " " + answers + "\n\n" + "\n\n"`. The example's template is RULER's
/// template with white space collapsed and its last word (`above.`) dropped.
fn vt_icl_example(seed: u64, task: RulerTask, sizer: &Sizer<'_>) -> Result<String, RulerError> {
    let build = |units: usize| -> (String, Vec<String>) {
        let mut rng = Rng::for_stream(seed, task, Stream::Shared);
        let (vars, chains) = vt_chains(&mut rng, true);
        let value = vt_value(&chains);
        let context = vt_context(&mut rng, units, &chains);
        let text = format!(
            "{VT_HEAD} {context} Question: Find all variables that are assigned the value {value} \
             in the text {}",
            vt_answer_prefix(&value)
        );
        (text, vars.into_iter().next().unwrap_or_default())
    };
    let budget = VT_ICL_LENGTH - RulerTask::Vt.max_new_tokens();
    let measure = |units: usize| sizer.measure(&build(units).0);
    let (units, _) = sizer.search(VT_HOPS + 1, 5, budget, &measure)?;
    let (text, answers) = build(units);
    Ok(format!(" {text} {}\n\n\n\n", answers.join(" ")))
}

struct VtBuilder {
    seed: u64,
    task: RulerTask,
    icl_prefix: String,
    small: bool,
}

impl Builder for VtBuilder {
    fn min_units(&self, _sample: Option<usize>) -> usize {
        VT_HOPS + 1
    }

    fn probe_units(&self) -> usize {
        if self.small { 5 } else { 10 }
    }

    fn build(&self, sample: Option<usize>, units: usize) -> Result<Prompt, RulerError> {
        let mut rng = Rng::for_stream(
            self.seed,
            self.task,
            sample.map_or(Stream::Probe, Stream::Sample),
        );
        let (vars, chains) = vt_chains(&mut rng, false);
        let value = vt_value(&chains);
        let haystack = vt_context(&mut rng, units, &chains);
        Ok(Prompt {
            context: format!("{}{VT_HEAD}\n\n{haystack}\n", self.icl_prefix),
            question: format!(
                "Question: Find all variables that are assigned the value {value} in the text above. "
            ),
            answer_prefix: vt_answer_prefix(&value),
            answers: vars.into_iter().next().unwrap_or_default(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Common words extraction (common_words_extraction.py)

const CWE_NUM: usize = 10;
const CWE_FREQ_COMMON: usize = 30;
const CWE_FREQ_UNCOMMON: usize = 3;
const CWE_HEAD: &str = "Below is a numbered list of words. In these words, some appear more often than \
                        others. Memorize the ones that appear most often.\n";

struct CweBuilder<'a> {
    seed: u64,
    task: RulerTask,
    /// All single words (nouns, adjectives, verbs), sorted, deduplicated, shuffled with the seed.
    pool: Vec<&'static str>,
    lexicon: &'a Lexicon,
    small: bool,
}

impl<'a> CweBuilder<'a> {
    fn new(seed: u64, task: RulerTask, lexicon: &'a Lexicon, small: bool) -> Self {
        let mut pool: Vec<&'static str> = lexicon
            .nouns
            .iter()
            .chain(&lexicon.adjectives)
            .chain(&lexicon.verbs)
            .copied()
            .collect();
        pool.sort_unstable();
        pool.dedup();
        Rng::for_stream(seed, task, Stream::Shared).shuffle(&mut pool);
        CweBuilder {
            seed,
            task,
            pool,
            lexicon,
            small,
        }
    }

    /// RULER's `get_example`: `num_words` distinct words, the first ten repeated
    /// `common_repeats` times, the rest `uncommon_repeats` times, shuffled with the fixed seed and
    /// numbered `1. w 2. w ...`.
    fn example(
        &self,
        rng: &mut Rng,
        num_words: usize,
        common_repeats: usize,
        uncommon_repeats: usize,
    ) -> (String, Vec<String>) {
        let words: Vec<String> = if num_words <= self.pool.len() {
            rng.sample_indices(self.pool.len(), num_words)
                .into_iter()
                .map(|i| self.pool[i].to_string())
                .collect()
        } else {
            rng.sample_indices(self.lexicon.pair_count(), num_words)
                .into_iter()
                .map(|i| self.lexicon.pair(i))
                .collect()
        };
        let split = CWE_NUM.min(words.len());
        let (common, uncommon) = words.split_at(split);
        let mut list: Vec<&str> =
            Vec::with_capacity(common.len() * common_repeats + uncommon.len() * uncommon_repeats);
        for _ in 0..common_repeats {
            list.extend(common.iter().map(String::as_str));
        }
        for _ in 0..uncommon_repeats {
            list.extend(uncommon.iter().map(String::as_str));
        }
        Rng::for_stream(self.seed, self.task, Stream::FixedShuffle).shuffle(&mut list);
        (numbered(&list), common.to_vec())
    }
}

fn numbered<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{}. {}", i + 1, w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn cwe_question() -> String {
    format!("Question: What are the {CWE_NUM} most common words in the above list? ")
}

fn cwe_answer_prefix() -> String {
    format!("Answer: The top {CWE_NUM} words that appear most often in the list are:")
}

impl Builder for CweBuilder<'_> {
    fn min_units(&self, _sample: Option<usize>) -> usize {
        CWE_NUM
    }

    fn probe_units(&self) -> usize {
        100
    }

    fn build(&self, sample: Option<usize>, units: usize) -> Result<Prompt, RulerError> {
        let mut rng = Rng::for_stream(
            self.seed,
            self.task,
            sample.map_or(Stream::Probe, Stream::Sample),
        );
        // RULER: below 4096 tokens a smaller few-shot example and fewer repeats.
        let (ex_words, ex_common, ex_uncommon, common, uncommon) = if self.small {
            (20, 3, 1, 6, 1)
        } else {
            (40, 10, 3, CWE_FREQ_COMMON, CWE_FREQ_UNCOMMON)
        };
        let (ex_context, ex_answer) = self.example(&mut rng, ex_words, ex_common, ex_uncommon);
        let (context, answers) = self.example(&mut rng, units, common, uncommon);
        let (question, answer_prefix) = (cwe_question(), cwe_answer_prefix());
        // The 2024 template glued the few-shot answer to the prefix (`are:1. ...`).
        let shot = format!(
            "{CWE_HEAD}{ex_context}\n{question}{answer_prefix}{}",
            numbered(&ex_answer)
        );
        Ok(Prompt {
            context: format!("{shot}\n{CWE_HEAD}{context}\n"),
            question,
            answer_prefix,
            answers,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Frequent words extraction (freq_words_extraction.py)

const FWE_WORD_LEN: usize = 6;
/// ζ(2) = π²/6, the normaliser of RULER's Zipf counts for α = 2.
const ZETA_2: f64 = std::f64::consts::PI * std::f64::consts::PI / 6.0;

struct FweBuilder {
    seed: u64,
    task: RulerTask,
    /// RULER's `vocab_size = max_seq_length // 50` (2024 revision).
    vocab_size: usize,
}

impl Builder for FweBuilder {
    fn min_units(&self, _sample: Option<usize>) -> usize {
        // From 100 words on, ranks 2..4 (the answers) have strictly more copies than rank 5.
        100
    }

    fn probe_units(&self) -> usize {
        200
    }

    fn build(&self, sample: Option<usize>, units: usize) -> Result<Prompt, RulerError> {
        let mut rng = Rng::for_stream(
            self.seed,
            self.task,
            sample.map_or(Stream::Probe, Stream::Sample),
        );
        let mut set = BTreeSet::new();
        while set.len() < self.vocab_size {
            set.insert(rng.lowercase(FWE_WORD_LEN));
        }
        let mut vocab: Vec<String> = set.into_iter().collect();
        Rng::for_stream(self.seed, self.task, Stream::FixedShuffle).shuffle(&mut vocab);
        if let Some(first) = vocab.first_mut() {
            // RULER: "treat the top ranked as noise".
            *first = "...".to_string();
        }
        let mut words: Vec<&str> = Vec::new();
        for (k, word) in vocab.iter().enumerate() {
            let rank = (k + 1) as f64;
            // num_words * k^-alpha / zeta(alpha), truncated (alpha = 2).
            let copies = (units as f64 * (1.0 / (rank * rank)) / ZETA_2) as usize;
            words.extend(std::iter::repeat_n(word.as_str(), copies));
        }
        Rng::for_stream(self.seed, self.task, Stream::FixedShuffle).shuffle(&mut words);
        Ok(Prompt {
            context: format!(
                "Read the following coded text and track the frequency of each coded word. Find the \
                 three most frequently appeared coded words. {}\n",
                words.join(" ")
            ),
            question:
                "Question: Do not provide any explanation. Please ignore the dots '....'. What \
                       are the three most frequently appeared words in the above coded text? "
                    .to_string(),
            answer_prefix: "Answer: According to the coded text above, the three most frequently \
                            appeared words are:"
                .to_string(),
            answers: vocab.iter().skip(1).take(3).cloned().collect(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// QA (qa.py)

const QA_INSTRUCTION: &str = "Answer the question based on the given documents. Only give me the answer and do not output any other words.";

#[derive(Deserialize)]
struct SquadFile {
    data: Vec<SquadArticle>,
}

#[derive(Deserialize)]
struct SquadArticle {
    paragraphs: Vec<SquadParagraph>,
}

#[derive(Deserialize)]
struct SquadParagraph {
    context: String,
    qas: Vec<SquadQa>,
}

#[derive(Deserialize)]
struct SquadQa {
    question: String,
    #[serde(default)]
    answers: Vec<SquadAnswer>,
    #[serde(default)]
    is_impossible: bool,
}

#[derive(Deserialize)]
struct SquadAnswer {
    text: String,
}

#[derive(Deserialize)]
struct HotpotItem {
    question: String,
    answer: String,
    context: Vec<(String, Vec<String>)>,
}

/// One question with the documents it needs (`context`) and, for SQuAD, the other paragraphs of
/// its article (`more_context`), as RULER's `read_squad` / `read_hotpotqa` build them.
#[derive(Debug, Clone)]
struct QaItem {
    query: String,
    outputs: Vec<String>,
    context: Vec<usize>,
    more: Vec<usize>,
}

#[derive(Debug, Clone)]
struct QaData {
    path: PathBuf,
    questions: Vec<QaItem>,
    docs: Vec<String>,
}

fn doc_index(docs: &[String]) -> std::collections::HashMap<&str, usize> {
    docs.iter()
        .enumerate()
        .map(|(i, d)| (d.as_str(), i))
        .collect()
}

impl QaData {
    fn load(task: RulerTask, config: &RulerConfig) -> Result<QaData, RulerError> {
        const SQUAD: &str = "SQuAD v2 dev";
        const HOTPOT: &str = "HotpotQA dev distractor";
        let (file_name, dataset, url) = match task {
            RulerTask::Qa1 => (
                "squad.json",
                SQUAD,
                "https://rajpurkar.github.io/SQuAD-explorer/dataset/dev-v2.0.json",
            ),
            _ => (
                "hotpotqa.json",
                HOTPOT,
                "http://curtis.ml.cmu.edu/datasets/hotpot/hotpot_dev_distractor_v1.json",
            ),
        };
        let given =
            config
                .qa_file
                .as_ref()
                .ok_or(RulerError::MissingQaFile { task, dataset, url })?;
        let path = if given.is_dir() {
            given.join(file_name)
        } else {
            given.clone()
        };
        let text = std::fs::read_to_string(&path).map_err(|source| RulerError::QaRead {
            path: path.clone(),
            source,
        })?;
        // A SQuAD file is a JSON object, a HotpotQA file a JSON array.
        let found = match text.trim_start().as_bytes().first() {
            Some(b'{') => Some(SQUAD),
            Some(b'[') => Some(HOTPOT),
            _ => None,
        };
        if let Some(found) = found.filter(|f| *f != dataset) {
            return Err(RulerError::QaWrongDataset {
                task,
                path,
                expected: dataset,
                found,
            });
        }
        let path = &path;
        let parse_err = |source| RulerError::QaParse {
            path: path.clone(),
            dataset,
            source,
        };
        if task == RulerTask::Qa1 {
            let file: SquadFile = serde_json::from_str(&text).map_err(parse_err)?;
            Ok(Self::from_squad(path, &file))
        } else {
            let items: Vec<HotpotItem> = serde_json::from_str(&text).map_err(parse_err)?;
            Ok(Self::from_hotpot(path, &items))
        }
    }

    /// RULER's `read_squad`: unique paragraphs sorted, answerable questions in file order.
    fn from_squad(path: &Path, file: &SquadFile) -> QaData {
        let set: BTreeSet<&str> = file
            .data
            .iter()
            .flat_map(|a| a.paragraphs.iter().map(|p| p.context.as_str()))
            .collect();
        let docs: Vec<String> = set.into_iter().map(str::to_string).collect();
        let index = doc_index(&docs);
        let mut questions = Vec::new();
        for article in &file.data {
            let article_docs: Vec<usize> = article
                .paragraphs
                .iter()
                .filter_map(|p| index.get(p.context.as_str()).copied())
                .collect();
            for paragraph in &article.paragraphs {
                let Some(&own) = index.get(paragraph.context.as_str()) else {
                    continue;
                };
                for qa in &paragraph.qas {
                    if qa.is_impossible || qa.answers.is_empty() {
                        continue;
                    }
                    questions.push(QaItem {
                        query: qa.question.clone(),
                        outputs: qa.answers.iter().map(|a| a.text.clone()).collect(),
                        context: vec![own],
                        more: article_docs.iter().copied().filter(|&d| d != own).collect(),
                    });
                }
            }
        }
        QaData {
            path: path.to_path_buf(),
            questions,
            docs,
        }
    }

    /// RULER's `read_hotpotqa`: a document is `title + "\n" + "".join(sentences)`.
    fn from_hotpot(path: &Path, items: &[HotpotItem]) -> QaData {
        let doc =
            |(title, sentences): &(String, Vec<String>)| format!("{title}\n{}", sentences.concat());
        let set: BTreeSet<String> = items
            .iter()
            .flat_map(|d| d.context.iter().map(doc))
            .collect();
        let docs: Vec<String> = set.into_iter().collect();
        let index = doc_index(&docs);
        let questions = items
            .iter()
            .map(|d| QaItem {
                query: d.question.clone(),
                outputs: vec![d.answer.clone()],
                context: d
                    .context
                    .iter()
                    .filter_map(|c| index.get(doc(c).as_str()).copied())
                    .collect(),
                more: Vec::new(),
            })
            .collect();
        QaData {
            path: path.to_path_buf(),
            questions,
            docs,
        }
    }
}

struct QaBuilder<'a> {
    seed: u64,
    task: RulerTask,
    data: &'a QaData,
}

impl QaBuilder<'_> {
    fn item(&self, sample: Option<usize>) -> Option<&QaItem> {
        self.data.questions.get(sample.unwrap_or(0))
    }
}

impl Builder for QaBuilder<'_> {
    fn min_units(&self, sample: Option<usize>) -> usize {
        self.item(sample).map_or(1, |q| q.context.len().max(1))
    }

    fn probe_units(&self) -> usize {
        10
    }

    fn build(&self, sample: Option<usize>, units: usize) -> Result<Prompt, RulerError> {
        let Some(item) = self.item(sample) else {
            return Err(RulerError::NotEnoughQuestions {
                path: self.data.path.clone(),
                available: self.data.questions.len(),
                requested: sample.map_or(1, |s| s + 1),
            });
        };
        let mut rng = Rng::for_stream(
            self.seed,
            self.task,
            sample.map_or(Stream::Probe, Stream::Sample),
        );
        let total = self.data.docs.len();
        let mut chosen: Vec<usize> = if units < total {
            let gold = item.context.len();
            if units.saturating_sub(gold) > item.more.len() {
                let taken: HashSet<usize> =
                    item.context.iter().chain(&item.more).copied().collect();
                let extra: Vec<usize> = (0..total).filter(|i| !taken.contains(i)).collect();
                let want = units - gold - item.more.len();
                let mut docs: Vec<usize> = item.context.iter().chain(&item.more).copied().collect();
                docs.extend(
                    rng.sample_indices(extra.len(), want)
                        .into_iter()
                        .map(|i| extra[i]),
                );
                docs
            } else {
                let mut docs = item.context.clone();
                let want = units.saturating_sub(gold);
                docs.extend(
                    rng.sample_indices(item.more.len(), want)
                        .into_iter()
                        .map(|i| item.more[i]),
                );
                docs
            }
        } else {
            // Current RULER: repeat the whole collection as often as needed.
            (0..units).map(|i| i % total.max(1)).collect()
        };
        Rng::for_stream(self.seed, self.task, Stream::FixedShuffle).shuffle(&mut chosen);
        let documents = chosen
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                format!(
                    "Document {}:\n{}",
                    i + 1,
                    self.data.docs.get(d).map_or("", String::as_str)
                )
            })
            .collect::<Vec<_>>()
            .join("\n\n");
        Ok(Prompt {
            context: format!(
                "{QA_INSTRUCTION}\n\nThe following are given documents.\n\n{documents}\n\n"
            ),
            question: format!("{QA_INSTRUCTION}\n\nQuestion: {} ", item.query),
            answer_prefix: "Answer:".to_string(),
            answers: item.outputs.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Counter = dyn Fn(&str) -> Result<usize, String>;

    /// One token per whitespace-separated word.
    fn words(text: &str) -> Result<usize, String> {
        Ok(text.split_whitespace().count())
    }

    /// One token per four characters (rounded up): a second, differently shaped tokenizer.
    fn chars4(text: &str) -> Result<usize, String> {
        Ok(text.chars().count().div_ceil(4))
    }

    fn config(context_length: usize, samples: usize, seed: u64) -> RulerConfig {
        RulerConfig {
            context_length,
            samples,
            seed,
            ..RulerConfig::default()
        }
    }

    fn make(task: RulerTask, config: &RulerConfig, counter: &Counter) -> Vec<Sample> {
        match generate(task, config, counter) {
            Ok(rows) => rows,
            Err(e) => panic!("{task}: {e}"),
        }
    }

    fn full(s: &Sample) -> String {
        format!("{}{}{}", s.context, s.question, s.answer_prefix)
    }

    /// kvpress's `split_context_question` (create_huggingface_dataset.py), with `rfind`/`find`
    /// in place of its regular expressions (all literal but niah's `What (?:is|are all)`).
    fn kvpress_split(task: &str, text: &str) -> Option<(String, String, String)> {
        let family = task.split('_').next()?;
        let questions: &[&str] = match family {
            "niah" => &[
                "What is the special magic",
                "What are all the special magic",
            ],
            "vt" => &["Question: Find all variables that are assigned the value"],
            "cwe" => &["Question: What are the 10 most common words in the above list?"],
            "fwe" => &["Question: Do not provide any explanation."],
            "qa" => &["Answer the question based on the given documents."],
            _ => return None,
        };
        let idx = questions.iter().filter_map(|p| text.rfind(p)).max()?;
        let (context, qa) = text.split_at(idx);
        let answer = if family == "niah" {
            "The special magic"
        } else {
            "Answer:"
        };
        let j = qa.find(answer)?;
        Some((
            context.to_string(),
            qa[..j].to_string(),
            qa[j..].to_string(),
        ))
    }

    fn squad_fixture() -> String {
        let mut data = Vec::new();
        for a in 0..6 {
            let mut paragraphs = Vec::new();
            for p in 0..4 {
                paragraphs.push(serde_json::json!({
                    "context": format!(
                        "Article {a} paragraph {p} describes the town of Millbrook{a}{p}, which was \
                         founded by settlers who built a mill beside the river. The mill ground \
                         flour for the valley for many years, and the town grew around it."
                    ),
                    "qas": [
                        {"id": format!("{a}-{p}-1"), "question": format!("Who founded Millbrook{a}{p}?"),
                         "answers": [{"text": "settlers", "answer_start": 60}, {"text": "the settlers", "answer_start": 56}],
                         "is_impossible": false},
                        {"id": format!("{a}-{p}-2"), "question": "What is impossible here?",
                         "answers": [], "plausible_answers": [], "is_impossible": true}
                    ]
                }));
            }
            data.push(
                serde_json::json!({"title": format!("Article {a}"), "paragraphs": paragraphs}),
            );
        }
        serde_json::json!({"version": "v2.0", "data": data}).to_string()
    }

    fn hotpot_fixture() -> String {
        let mut items = Vec::new();
        for q in 0..8 {
            let context: Vec<serde_json::Value> = (0..10)
                .map(|d| {
                    serde_json::json!([
                        format!("Title {q} {d}"),
                        [
                            format!("Place {q}{d} is a village in the hills. "),
                            "It has a church and a school."
                        ]
                    ])
                })
                .collect();
            items.push(serde_json::json!({
                "_id": format!("id{q}"),
                "question": format!("Which village has the number {q}?"),
                "answer": format!("Place {q}0"),
                "supporting_facts": [[format!("Title {q} 0"), 0]],
                "context": context,
                "type": "bridge",
                "level": "easy"
            }));
        }
        serde_json::Value::Array(items).to_string()
    }

    struct QaFiles {
        dir: tempfile::TempDir,
        squad: PathBuf,
        hotpot: PathBuf,
    }

    fn qa_files() -> QaFiles {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let squad = dir.path().join("squad.json");
        let hotpot = dir.path().join("hotpotqa.json");
        for (path, text) in [(&squad, squad_fixture()), (&hotpot, hotpot_fixture())] {
            if let Err(e) = std::fs::write(path, text) {
                panic!("write {}: {e}", path.display());
            }
        }
        QaFiles { dir, squad, hotpot }
    }

    #[test]
    fn task_names_round_trip() {
        for task in RulerTask::ALL {
            assert_eq!(task.name().parse::<RulerTask>().ok(), Some(task));
            assert_eq!(task.to_string(), task.name());
        }
        assert!(matches!(
            "niah_single_4".parse::<RulerTask>(),
            Err(RulerError::UnknownTask { .. })
        ));
        assert_eq!(RulerTask::SYNTHETIC.len() + 2, RulerTask::ALL.len());
        let budgets: Vec<usize> = RulerTask::ALL.iter().map(|t| t.max_new_tokens()).collect();
        assert_eq!(
            budgets,
            [128, 128, 128, 128, 128, 128, 128, 128, 30, 120, 50, 32, 32]
        );
    }

    #[test]
    fn bundled_data_is_usable() {
        let lex = Lexicon::parse(WORDS);
        assert!(lex.nouns.len() >= 300 && lex.adjectives.len() >= 150 && lex.verbs.len() >= 100);
        for w in lex.nouns.iter().chain(&lex.adjectives).chain(&lex.verbs) {
            assert!(w.bytes().all(|b| b.is_ascii_lowercase()), "{w}");
        }
        assert!(lex.pair_count() > 50_000);
        assert!((20_000..=40_000).contains(&ESSAYS.len()));
        let text = essay_text(&essay_words(), essay_words().len());
        let sentences = split_sentences(&text);
        assert!(sentences.len() > 200);
        assert_eq!(sentences.join(" "), text);
    }

    #[test]
    fn rng_helpers() {
        let depths = ruler_depths();
        assert_eq!(depths[..6], [0, 3, 5, 8, 10, 13]);
        assert_eq!(depths[34..], [87, 90, 92, 95, 97, 100]);
        let mut rng = Rng::new(1);
        let u = rng.uuid4();
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        for (n, k) in [(10, 10), (10, 3), (100_000, 7)] {
            let s = rng.sample_indices(n, k);
            assert_eq!(s.len(), k);
            assert_eq!(s.iter().collect::<HashSet<_>>().len(), k);
            assert!(s.iter().all(|&i| i < n));
        }
        // The generator is fixed forever: pin its first outputs.
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_rows() {
        let files = qa_files();
        for task in RulerTask::ALL {
            let mut a = config(2048, 3, 7);
            a.qa_file = Some(files.dir.path().to_path_buf());
            let first = make(task, &a, &words);
            let second = make(task, &a, &words);
            assert_eq!(first, second, "{task}");
            let json = |rows: &[Sample]| serde_json::to_string(rows).unwrap_or_default();
            assert_eq!(json(&first), json(&second));
            let other = make(
                task,
                &RulerConfig {
                    seed: 8,
                    ..a.clone()
                },
                &words,
            );
            assert_ne!(first, other, "{task}");
            // Sample i does not depend on how many samples are asked for.
            let one = make(task, &RulerConfig { samples: 1, ..a }, &words);
            assert_eq!(one[0], first[0], "{task}");
        }
    }

    #[test]
    fn different_samples_get_different_needles() {
        for &task in RulerTask::SYNTHETIC {
            let rows = make(task, &config(2048, 4, 42), &words);
            let answers: HashSet<&Vec<String>> = rows.iter().map(|r| &r.answers).collect();
            assert_eq!(answers.len(), rows.len(), "{task}");
        }
    }

    #[test]
    fn answers_appear_in_context() {
        let files = qa_files();
        let mut cfg = config(4096, 3, 42);
        cfg.qa_file = Some(files.dir.path().to_path_buf());
        for task in RulerTask::ALL {
            for row in make(task, &cfg, &words) {
                assert!(!row.answers.is_empty(), "{task}");
                let expected = match task {
                    RulerTask::NiahMultivalue | RulerTask::NiahMultiquery => 4,
                    RulerTask::Vt => 5,
                    RulerTask::Cwe => 10,
                    RulerTask::Fwe => 3,
                    RulerTask::Qa1 => 2,
                    _ => 1,
                };
                assert_eq!(row.answers.len(), expected, "{task}");
                match task {
                    RulerTask::Qa1 | RulerTask::Qa2 => {
                        assert!(
                            row.answers.iter().any(|a| row.context.contains(a.as_str())),
                            "{task}"
                        );
                    }
                    _ => {
                        for a in &row.answers {
                            assert!(row.context.contains(a.as_str()), "{task}: {a}");
                        }
                    }
                }
            }
        }
    }

    /// Occurrences of every word in the last numbered list of a cwe context.
    fn cwe_counts(context: &str) -> std::collections::HashMap<String, usize> {
        let list = context.rsplit(CWE_HEAD).next().unwrap_or_default();
        let mut counts = std::collections::HashMap::new();
        for (i, token) in list.split_whitespace().enumerate() {
            if i % 2 == 1 {
                *counts.entry(token.to_string()).or_insert(0) += 1;
            }
        }
        counts
    }

    #[test]
    fn cwe_and_fwe_answers_are_the_most_frequent() {
        for length in [1024, 4096, 8192] {
            for row in make(RulerTask::Cwe, &config(length, 2, 3), &words) {
                let counts = cwe_counts(&row.context);
                let least_common = row
                    .answers
                    .iter()
                    .map(|a| counts.get(a).copied().unwrap_or(0))
                    .min();
                let most_other = counts
                    .iter()
                    .filter(|(w, _)| !row.answers.contains(w))
                    .map(|(_, &c)| c)
                    .max()
                    .unwrap_or(0);
                assert!(least_common.unwrap_or(0) > most_other, "cwe {length}");
            }
            for row in make(RulerTask::Fwe, &config(length, 2, 3), &words) {
                let body = row
                    .context
                    .split("coded words. ")
                    .nth(1)
                    .unwrap_or_default();
                let mut counts = std::collections::HashMap::new();
                for w in body.split_whitespace().filter(|w| *w != "...") {
                    *counts.entry(w).or_insert(0usize) += 1;
                }
                let least = row
                    .answers
                    .iter()
                    .map(|a| counts.get(a.as_str()).copied().unwrap_or(0))
                    .min();
                let most_other = counts
                    .iter()
                    .filter(|(w, _)| !row.answers.iter().any(|a| a == *w))
                    .map(|(_, &c)| c)
                    .max()
                    .unwrap_or(0);
                assert!(least.unwrap_or(0) > most_other, "fwe {length}");
            }
        }
    }

    #[test]
    fn cwe_uses_pairs_beyond_the_word_list() {
        // 16k whitespace tokens need more distinct words than the bundled list holds.
        let rows = make(RulerTask::Cwe, &config(16384, 1, 1), &words);
        let counts = cwe_counts(&rows[0].context);
        assert!(counts.len() > 716);
        assert!(rows[0].answers.iter().all(|a| a.contains('-')));
    }

    fn assert_length(task: RulerTask, length: usize, counter: &Counter, rows: &[Sample]) {
        for row in rows {
            let total = counter(&full(row)).unwrap_or(usize::MAX) + row.max_new_tokens;
            assert!(total <= length, "{task} at {length}: {total} tokens");
            assert!(
                total as f64 >= 0.98 * length as f64,
                "{task} at {length}: only {total} tokens"
            );
        }
    }

    #[test]
    fn lengths_within_two_percent() {
        for length in [1024, 2048, 4096, 8192] {
            for &task in RulerTask::SYNTHETIC {
                let rows = make(task, &config(length, 2, 11), &words);
                assert_eq!(rows.len(), 2);
                assert_length(task, length, &words, &rows);
            }
        }
    }

    #[test]
    fn lengths_with_another_tokenizer() {
        for length in [4096, 8192] {
            for &task in RulerTask::SYNTHETIC {
                let rows = make(task, &config(length, 2, 5), &chars4);
                assert_length(task, length, &chars4, &rows);
            }
        }
    }

    #[test]
    fn split_matches_kvpress_layout() {
        let files = qa_files();
        let mut cfg = config(4096, 2, 42);
        cfg.qa_file = Some(files.dir.path().to_path_buf());
        for task in RulerTask::ALL {
            for row in make(task, &cfg, &words) {
                let split = kvpress_split(&row.task, &full(&row));
                assert_eq!(
                    split,
                    Some((
                        row.context.clone(),
                        row.question.clone(),
                        row.answer_prefix.clone()
                    )),
                    "{task}"
                );
            }
        }
    }

    #[test]
    fn niah_text_matches_ruler_templates() {
        let row = &make(RulerTask::NiahSingle1, &config(2048, 1, 42), &words)[0];
        let key = row
            .question
            .strip_prefix("What is the special magic number for ")
            .and_then(|q| q.strip_suffix(" mentioned in the provided text? "))
            .unwrap_or_default();
        assert!(key.contains('-'));
        assert!(row.context.starts_with(
            "A special magic number is hidden within the following text. Make sure to memorize \
             it. I will quiz you about the number afterwards.\nThe grass is green."
        ));
        assert!(row.context.ends_with("There and back again.\n") || row.context.ends_with(".\n"));
        assert!(row.context.contains(&format!(
            "One of the special magic numbers for {key} is: {}.",
            row.answers[0]
        )));
        assert_eq!(
            row.answer_prefix,
            format!("The special magic number for {key} mentioned in the provided text is")
        );
        assert_eq!(row.max_new_tokens, 128);
        assert!(row.extra.is_empty());

        let row = &make(RulerTask::NiahSingle3, &config(2048, 1, 42), &words)[0];
        assert!(row.context.starts_with("A special magic uuid is hidden"));
        assert!(
            row.question
                .starts_with("What is the special magic uuid for ")
        );

        let row = &make(RulerTask::NiahMultivalue, &config(2048, 1, 42), &words)[0];
        assert!(row.context.starts_with(
            "Some special magic numbers are hidden within the following text. Make sure to \
             memorize it. I will quiz you about the numbers afterwards.\n"
        ));
        assert!(
            row.question
                .starts_with("What are all the special magic numbers for ")
        );
        assert!(
            row.answer_prefix
                .ends_with(" mentioned in the provided text are")
        );

        let row = &make(RulerTask::NiahMultiquery, &config(2048, 1, 42), &words)[0];
        let query = row
            .question
            .strip_prefix("What are all the special magic numbers for ")
            .and_then(|q| q.strip_suffix(" mentioned in the provided text? "))
            .unwrap_or_default();
        assert_eq!(query.matches(", ").count(), 3);
        assert!(query.contains(", and "));

        // multikey_2: every line of the haystack is a needle-shaped line.
        let row = &make(RulerTask::NiahMultikey2, &config(2048, 1, 42), &words)[0];
        let lines: Vec<&str> = row.context.lines().skip(1).collect();
        assert!(lines.len() > 20);
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with("One of the special magic numbers for "))
        );
        // multikey_3: UUID keys and values.
        let row = &make(RulerTask::NiahMultikey3, &config(2048, 1, 42), &words)[0];
        assert_eq!(row.answers[0].len(), 36);
        assert!(
            row.context
                .lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("One of the special magic uuids for "))
        );
    }

    #[test]
    fn other_templates_match_ruler() {
        let row = &make(RulerTask::Vt, &config(4096, 1, 42), &words)[0];
        let value = row
            .question
            .strip_prefix("Question: Find all variables that are assigned the value ")
            .and_then(|q| q.strip_suffix(" in the text above. "))
            .unwrap_or_default();
        assert_eq!(value.len(), 5);
        assert!(
            row.context
                .starts_with(&format!(" {VT_HEAD} The grass is green."))
        );
        assert!(
            row.context
                .contains(" in the text Answer: According to the chain(s) of variable assignment")
        );
        assert!(
            row.context
                .contains(&format!("\n\n\n\n{VT_HEAD}\n\nThe grass is green."))
        );
        assert!(
            row.context
                .contains(&format!("VAR {} = {value}", row.answers[0]))
        );
        assert_eq!(
            row.answer_prefix,
            format!(
                "Answer: According to the chain(s) of variable assignment in the text above, 5 \
                 variables are assgined the value {value}, they are: "
            )
        );
        assert!(
            row.answers
                .iter()
                .all(|v| v.len() == 5 && v.bytes().all(|b| b.is_ascii_uppercase()))
        );

        let row = &make(RulerTask::Cwe, &config(4096, 1, 42), &words)[0];
        assert!(row.context.starts_with(CWE_HEAD));
        assert!(row.context.contains("in the list are:1. "));
        assert_eq!(row.context.matches(CWE_HEAD).count(), 2);
        assert_eq!(
            row.question,
            "Question: What are the 10 most common words in the above list? "
        );
        assert_eq!(
            row.answer_prefix,
            "Answer: The top 10 words that appear most often in the list are:"
        );

        let row = &make(RulerTask::Fwe, &config(4096, 1, 42), &words)[0];
        assert!(row.context.starts_with(
            "Read the following coded text and track the frequency of each coded word. Find the \
             three most frequently appeared coded words. "
        ));
        assert_eq!(
            row.question,
            "Question: Do not provide any explanation. Please ignore the dots '....'. What are the \
             three most frequently appeared words in the above coded text? "
        );
        assert!(row.answers.iter().all(|w| w.len() == 6));
    }

    #[test]
    fn qa_rows() {
        let files = qa_files();
        let mut cfg = config(2048, 5, 42);
        assert!(matches!(
            generate(RulerTask::Qa1, &cfg, &words),
            Err(RulerError::MissingQaFile { .. })
        ));
        assert!(matches!(
            generate(RulerTask::Qa2, &cfg, &words),
            Err(RulerError::MissingQaFile { .. })
        ));
        cfg.qa_file = Some(files.squad.clone());
        let rows = make(RulerTask::Qa1, &cfg, &words);
        assert_eq!(
            rows[0].question,
            format!("{QA_INSTRUCTION}\n\nQuestion: Who founded Millbrook00? ")
        );
        assert_eq!(rows[0].answers, ["settlers", "the settlers"]);
        assert_eq!(rows[0].answer_prefix, "Answer:");
        assert!(rows[0].context.starts_with(&format!(
            "{QA_INSTRUCTION}\n\nThe following are given documents.\n\nDocument 1:\n"
        )));
        assert!(rows[0].context.contains("Millbrook00,"));
        assert_eq!(rows[0].max_new_tokens, 32);
        for row in &rows {
            let total = words(&full(row)).unwrap_or(usize::MAX) + row.max_new_tokens;
            assert!(total <= 2048);
        }
        assert!(matches!(
            generate(RulerTask::Qa2, &cfg, &words),
            Err(RulerError::QaWrongDataset {
                expected: "HotpotQA dev distractor",
                ..
            })
        ));
        cfg.qa_file = Some(files.hotpot.clone());
        let rows = make(RulerTask::Qa2, &cfg, &words);
        assert!(
            rows[3]
                .context
                .contains("Title 3 0\nPlace 30 is a village in the hills. It has a church")
        );
        assert_eq!(rows[3].answers, ["Place 30"]);
        let too_many = RulerConfig {
            samples: 9,
            ..cfg.clone()
        };
        assert!(matches!(
            generate(RulerTask::Qa2, &too_many, &words),
            Err(RulerError::NotEnoughQuestions {
                available: 8,
                requested: 9,
                ..
            })
        ));
        let broken_path = files.dir.path().join("broken.json");
        assert!(std::fs::write(&broken_path, "[{\"question\": 1}]").is_ok());
        let broken = RulerConfig {
            qa_file: Some(broken_path),
            ..cfg.clone()
        };
        assert!(matches!(
            generate(RulerTask::Qa2, &broken, &words),
            Err(RulerError::QaParse { .. })
        ));
        let missing = RulerConfig {
            qa_file: Some(files.dir.path().join("nope.json")),
            ..cfg
        };
        assert!(matches!(
            generate(RulerTask::Qa2, &missing, &words),
            Err(RulerError::QaRead { .. })
        ));
    }

    #[test]
    fn errors_are_reported() {
        let tiny = config(100, 1, 1);
        for &task in RulerTask::SYNTHETIC {
            assert!(
                matches!(
                    generate(task, &tiny, &words),
                    Err(RulerError::ContextTooShort { .. })
                ),
                "{task}"
            );
        }
        let failing = |_: &str| -> Result<usize, String> { Err("no tokenizer".into()) };
        assert!(matches!(
            generate(RulerTask::NiahSingle1, &config(4096, 1, 1), &failing),
            Err(RulerError::Tokenizer(_))
        ));
        let constant = |_: &str| -> Result<usize, String> { Ok(10) };
        assert!(matches!(
            generate(RulerTask::NiahSingle1, &config(4096, 1, 1), &constant),
            Err(RulerError::CounterNotGrowing { .. })
        ));
        assert!(generate(RulerTask::Cwe, &config(4096, 0, 1), &words).is_ok_and(|r| r.is_empty()));
    }
}
