//! Question answering over a compressed context, with the semantics of kvpress's
//! `kv-press-text-generation` pipeline:
//!
//! - the chat template is rendered on one user message `context + separator`, and split at the
//!   separator: the left part (template prefix + context) is the **context**, compressed by the
//!   press during prefill; the right part (end of turn + assistant header) follows each question;
//! - each question is `question + suffix + answer_prefix`, never compressed, placed at its true
//!   positions after the uncompressed context;
//! - greedy decoding, eos checked from the second generated token on;
//! - several questions reuse one compressed context: each question and answer is cut off the
//!   cache before the next.
//!
//! ```no_run
//! # use kvpress_models::{ModelFiles, pipeline::{Pipeline, Request}};
//! # fn main() -> kvpress_models::Result<()> {
//! let files = ModelFiles::open(std::path::Path::new("model-dir"))?;
//! let model = files.load_model::<burn::backend::Flex>(&Default::default())?;
//! let pipe = Pipeline::new(&model, &files.tokenizer, files.eos_token_ids.clone());
//! let out = pipe.run(&Request::new("A long context…").question("What is it about?"), None)?;
//! println!("{}", out.answers[0]);
//! # Ok(()) }
//! ```

use std::time::Instant;

use burn::tensor::backend::Backend;
use kvpress_core::error::{CoreError, Result as CoreResult};
use std::sync::Mutex;

use kvpress_core::press::{ContextModel, LayerInputs, TimedPress};
use kvpress_core::{KvCache, KvQuantization, LayerCache, Press};

use crate::ChatMessage;
use crate::error::{ModelError, Result};
use crate::generate::{GenerationOptions, continue_generation};
use crate::llama::{ForwardOptions, Llama};
use crate::tokenizer::TextTokenizer;

/// One call of the pipeline.
#[derive(Debug, Clone)]
pub struct Request {
    /// The text to compress.
    pub context: String,
    /// Questions answered from the same compressed context (none: one empty question).
    pub questions: Vec<String>,
    /// Text the answer starts with (part of the uncompressed prompt).
    pub answer_prefix: String,
    /// Tokens generated per answer at most.
    pub max_new_tokens: usize,
    /// Context tokens kept at most (the context is truncated to its first tokens).
    pub max_context_length: Option<usize>,
    /// Query-aware compression (kvpress's evaluation flag): the one question is appended to the
    /// context and compressed with it; the uncompressed part is the assistant header only.
    pub query_aware: bool,
}

impl Request {
    /// A request with kvpress's defaults (50 new tokens, no answer prefix).
    pub fn new(context: impl Into<String>) -> Self {
        Self {
            context: context.into(),
            questions: Vec::new(),
            answer_prefix: String::new(),
            max_new_tokens: 50,
            max_context_length: None,
            query_aware: false,
        }
    }

    /// Adds a question.
    pub fn question(mut self, q: impl Into<String>) -> Self {
        self.questions.push(q.into());
        self
    }

    /// Sets the answer prefix.
    pub fn answer_prefix(mut self, p: impl Into<String>) -> Self {
        self.answer_prefix = p.into();
        self
    }

    /// Sets the answer length limit.
    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = n;
        self
    }
}

/// What the pipeline produced.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// One answer per question.
    pub answers: Vec<String>,
    /// Context tokens after truncation.
    pub context_tokens: usize,
    /// Entries held by the longest KV head of each layer after compression.
    pub cache_lengths: Vec<usize>,
    /// Entries held by each KV head of each layer (`[layer][head]`) after compression.
    pub tokens_per_head: Vec<Vec<usize>>,
    /// Bytes the compressed cache holds (measured on its tensors).
    pub cache_bytes: usize,
    /// Bytes the cache would hold without compression: the measured bytes per entry times
    /// the `layers × kv_heads × context_tokens` entries of an uncompressed prefill.
    pub uncompressed_bytes: usize,
    /// Prefill (with compression) seconds.
    pub prefill_seconds: f64,
    /// Seconds spent inside the press (part of `prefill_seconds`).
    pub press_seconds: f64,
    /// Seconds spent answering all questions.
    pub answer_seconds: f64,
}

/// The context and question token ids of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// Template prefix + context.
    pub context_ids: Vec<u32>,
    /// Each question + template suffix + answer prefix.
    pub question_ids: Vec<Vec<u32>>,
    /// Trailing context tokens that are the question (query-aware requests), else 0.
    pub question_tokens: usize,
}

/// A model with its tokenizer, answering questions about compressed contexts.
pub struct Pipeline<'a, B: Backend> {
    model: &'a Llama<B>,
    tokenizer: &'a TextTokenizer,
    eos_token_ids: Vec<u32>,
    quantization: Option<KvQuantization>,
}

impl<'a, B: Backend> Pipeline<'a, B> {
    /// A pipeline over `model` and `tokenizer`; `eos_token_ids` end answers.
    pub fn new(model: &'a Llama<B>, tokenizer: &'a TextTokenizer, eos_token_ids: Vec<u32>) -> Self {
        Self {
            model,
            tokenizer,
            eos_token_ids,
            quantization: None,
        }
    }

    /// Stores the context's cache quantized as `quantization` says (none: full precision).
    /// Presses still score and evict on full-precision entries: each layer is quantized after
    /// its press.
    pub fn with_kv_quantization(mut self, quantization: Option<KvQuantization>) -> Self {
        self.quantization = quantization;
        self
    }

    /// A fresh cache for the model, quantized as this pipeline says.
    fn new_cache(&self) -> KvCache<B> {
        self.model.new_cache_quantized(self.quantization)
    }

    /// The chat template rendered on one user message `content` and generation prompt, split
    /// right after `content`: (template prefix + content, end of turn + assistant header).
    /// Without a template: (BOS + content, "\n"), as kvpress.
    fn split_template(&self, content: &str) -> Result<(String, String)> {
        if !self.tokenizer.has_chat_template() {
            let bos = self.tokenizer.bos_token().unwrap_or_default();
            return Ok((format!("{bos}{content}"), "\n".to_string()));
        }
        let separator = "#".repeat(content.chars().count() + 10);
        let rendered = self
            .tokenizer
            .apply_chat_template(&[ChatMessage::user(format!("{content}{separator}"))], true)?;
        let (left, right) = rendered.split_once(&separator).ok_or_else(|| {
            ModelError::ChatTemplate(
                "the chat template does not keep the user message intact".into(),
            )
        })?;
        Ok((left.to_string(), right.to_string()))
    }

    /// Splits and tokenizes the request as kvpress does.
    pub fn prompt(&self, request: &Request) -> Result<Prompt> {
        if request.context.trim().is_empty() {
            return Err(ModelError::Input("the context is empty".into()));
        }
        if request.query_aware {
            return self.query_aware_prompt(request);
        }
        let (context_text, suffix) = self.split_template(&request.context)?;
        let mut context_ids = self.tokenizer.encode(&context_text, false)?;
        if let Some(max) = request.max_context_length {
            context_ids.truncate(max);
        }
        let questions: Vec<&str> = if request.questions.is_empty() {
            vec![""]
        } else {
            request.questions.iter().map(String::as_str).collect()
        };
        let question_ids = questions
            .iter()
            .map(|q| {
                self.tokenizer
                    .encode(&format!("{q}{suffix}{}", request.answer_prefix), false)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Prompt {
            context_ids,
            question_ids,
            question_tokens: 0,
        })
    }

    /// The query-aware split: template prefix + context + question compressed together (the
    /// context truncated to `max_context_length` first), then the template suffix and answer
    /// prefix.
    fn query_aware_prompt(&self, request: &Request) -> Result<Prompt> {
        let [question] = &request.questions[..] else {
            return Err(ModelError::Input(format!(
                "query-aware compression takes exactly one question, got {}",
                request.questions.len()
            )));
        };
        let (context_text, _) = self.split_template(&request.context)?;
        let context_ids = self.tokenizer.encode(&context_text, false)?;
        let (with_question, suffix) =
            self.split_template(&format!("{}{question}", &request.context))?;
        let full = self.tokenizer.encode(&with_question, false)?;
        // the question's tokens: what the question adds to the templated context
        let question_tokens = full.len().saturating_sub(context_ids.len());
        let mut ids = context_ids;
        if let Some(max) = request.max_context_length {
            ids.truncate(max);
        }
        ids.extend_from_slice(&full[full.len() - question_tokens..]);
        Ok(Prompt {
            context_ids: ids,
            question_ids: vec![
                self.tokenizer
                    .encode(&format!("{suffix}{}", request.answer_prefix), false)?,
            ],
            question_tokens,
        })
    }

    /// Prefills `context_ids` at positions `0..n`, compressing every layer with `press`.
    pub fn prefill(&self, context_ids: &[u32], press: Option<&dyn Press<B>>) -> Result<KvCache<B>> {
        self.prefill_query_aware(context_ids, press, 0)
    }

    /// [`Pipeline::prefill`] where the last `question_tokens` of `context_ids` are the question
    /// (query-aware compression: the press sees the question among the compressed tokens).
    pub fn prefill_query_aware(
        &self,
        context_ids: &[u32],
        press: Option<&dyn Press<B>>,
        question_tokens: usize,
    ) -> Result<KvCache<B>> {
        if let Some(p) = press {
            p.reset();
        }
        let mut cache = self.new_cache();
        let positions: Vec<usize> = (0..context_ids.len()).collect();
        self.model.forward(
            context_ids,
            &positions,
            &mut cache,
            &ForwardOptions {
                press,
                question_tokens,
            },
        )?;
        if let Some(p) = press {
            p.after_prefill(self, context_ids, &mut cache)?;
        }
        Ok(cache)
    }

    /// Answers every question of `prompt` greedily from `cache` (the prefilled context), removing
    /// each question and answer from the cache afterwards. Questions continue after the
    /// uncompressed context, or after the kept entries when a press re-rotated them to
    /// `0..kept` (key_rerotation).
    pub fn answer(
        &self,
        prompt: &Prompt,
        cache: &mut KvCache<B>,
        max_new_tokens: usize,
        press: Option<&dyn Press<B>>,
    ) -> Result<Vec<String>> {
        one_question_for_decoding_presses(press, prompt.question_ids.len())?;
        let forward = ForwardOptions {
            press,
            ..Default::default()
        };
        let context = cache.mark();
        let question_start = cache.next_position();
        let options = GenerationOptions {
            max_new_tokens,
            eos_token_ids: self.eos_token_ids.clone(),
            first_token_never_stops: true,
            ..Default::default()
        };
        let mut answers = Vec::with_capacity(prompt.question_ids.len());
        for question in &prompt.question_ids {
            let generation = continue_generation(
                self.model,
                cache,
                question,
                question_start,
                &options,
                &forward,
                false,
            )?;
            answers.push(self.tokenizer.decode(&generation.tokens, true)?);
            cache.rollback(&context);
        }
        Ok(answers)
    }

    /// Compresses the context with `press` (none: no compression) and answers every question.
    pub fn run(&self, request: &Request, press: Option<&dyn Press<B>>) -> Result<Output> {
        let prompt = self.prompt(request)?;
        one_question_for_decoding_presses(press, prompt.question_ids.len())?;
        self.check_fits(&prompt, request.max_new_tokens)?;
        let start = Instant::now();
        let timed = press.map(TimedPress::new);
        let cache = self.prefill_query_aware(
            &prompt.context_ids,
            timed.as_ref().map(|t| t as &dyn Press<B>),
            prompt.question_tokens,
        )?;
        let prefill_seconds = start.elapsed().as_secs_f64();
        let press_seconds = timed.as_ref().map_or(0.0, TimedPress::seconds);
        self.answer_all(
            &prompt,
            cache,
            request.max_new_tokens,
            press,
            prefill_seconds,
            press_seconds,
        )
    }

    /// [`Pipeline::run`] for several presses (none: no compression) from ONE prefill forward:
    /// a layer's hidden states do not depend on what earlier layers' presses removed from the
    /// cache, so each layer's full cache is copied to every press, which compresses its own copy
    /// with the same inputs a solo run gives it; each press then answers from its own cache.
    /// Outputs are in the order of `presses` and equal those of separate runs; each output's
    /// `prefill_seconds` is the shared forward's time less the other presses' time.
    ///
    /// Peak memory holds the full cache plus every press's compressed copy.
    pub fn run_shared(
        &self,
        request: &Request,
        presses: &[Option<&dyn Press<B>>],
    ) -> Result<Vec<Output>> {
        let prompt = self.prompt(request)?;
        for press in presses {
            one_question_for_decoding_presses(*press, prompt.question_ids.len())?;
        }
        self.check_fits(&prompt, request.max_new_tokens)?;
        let start = Instant::now();
        let timed: Vec<Option<TimedPress<'_, B>>> =
            presses.iter().map(|p| p.map(TimedPress::new)).collect();
        let shared = SharedPrefill {
            quantization: self.quantization,
            members: timed
                .iter()
                .map(|t| {
                    if let Some(t) = t {
                        t.reset();
                    }
                    (
                        t.as_ref().map(|t| t as &dyn Press<B>),
                        Mutex::new(self.new_cache()),
                    )
                })
                .collect(),
        };
        let mut full = self.model.new_cache();
        let positions: Vec<usize> = (0..prompt.context_ids.len()).collect();
        self.model.forward(
            &prompt.context_ids,
            &positions,
            &mut full,
            &ForwardOptions {
                press: Some(&shared),
                question_tokens: prompt.question_tokens,
            },
        )?;
        drop(full);
        let mut caches = Vec::with_capacity(presses.len());
        for (press, cache) in shared.members {
            let mut cache = cache
                .into_inner()
                .map_err(|_| ModelError::Input("a press panicked during the prefill".into()))?;
            if let Some(p) = press {
                p.after_prefill(self, &prompt.context_ids, &mut cache)?;
            }
            caches.push(cache);
        }
        let shared_seconds = start.elapsed().as_secs_f64();
        let press_seconds: Vec<f64> = timed
            .iter()
            .map(|t| t.as_ref().map_or(0.0, TimedPress::seconds))
            .collect();
        let all_presses: f64 = press_seconds.iter().sum();
        presses
            .iter()
            .zip(caches)
            .zip(press_seconds)
            .map(|((press, cache), own)| {
                let prefill_seconds = shared_seconds - (all_presses - own);
                self.answer_all(
                    &prompt,
                    cache,
                    request.max_new_tokens,
                    *press,
                    prefill_seconds,
                    own,
                )
            })
            .collect()
    }

    /// Refuses a prompt whose context, longest question and answer exceed the model's positions.
    fn check_fits(&self, prompt: &Prompt, max_new_tokens: usize) -> Result<()> {
        let n = prompt.context_ids.len();
        let longest = prompt.question_ids.iter().map(Vec::len).max().unwrap_or(0);
        let needed = n + longest + max_new_tokens;
        let limit = self.model.config().max_position_embeddings;
        if needed > limit {
            return Err(ModelError::Input(format!(
                "context ({n} tokens) + question ({longest}) + answer ({max_new_tokens}) need \
                 {needed} positions, the model has {limit}; shorten the context or set \
                 max_context_length"
            )));
        }
        Ok(())
    }

    /// Measures the prefilled `cache` and answers every question of `prompt` from it.
    fn answer_all(
        &self,
        prompt: &Prompt,
        mut cache: KvCache<B>,
        max_new_tokens: usize,
        press: Option<&dyn Press<B>>,
        prefill_seconds: f64,
        press_seconds: f64,
    ) -> Result<Output> {
        let n = prompt.context_ids.len();
        let tokens_per_head = cache.tokens_per_head();
        let cache_bytes = cache.bytes();
        let entries = cache.entries();
        let full_entries =
            self.model.config().num_hidden_layers * self.model.config().num_kv_heads() * n;
        // the full cache: every entry of every head, unquantized
        let uncompressed_bytes = if entries == 0 {
            0
        } else {
            (cache.unquantized_bytes() as f64 / entries as f64 * full_entries as f64).round()
                as usize
        };
        let start = Instant::now();
        let answers = self.answer(prompt, &mut cache, max_new_tokens, press)?;
        Ok(Output {
            answers,
            context_tokens: n,
            cache_lengths: tokens_per_head
                .iter()
                .map(|h| h.iter().copied().max().unwrap_or(0))
                .collect(),
            tokens_per_head,
            cache_bytes,
            uncompressed_bytes,
            prefill_seconds,
            press_seconds,
            answer_seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// The hook of [`Pipeline::run_shared`]: copies each layer's full cache to every member and
/// lets the member's press (if any) compress its copy.
struct SharedPrefill<'a, B: Backend> {
    members: Vec<Member<'a, B>>,
    /// How members quantize their compressed copies (the full cache stays unquantized).
    quantization: Option<KvQuantization>,
}

/// A press of [`SharedPrefill`] (none: the full cache) and the cache it fills.
type Member<'a, B> = (Option<&'a dyn Press<B>>, Mutex<KvCache<B>>);

impl<B: Backend> Press<B> for SharedPrefill<'_, B> {
    fn compress(&self, inputs: &LayerInputs<'_, B>, cache: &mut LayerCache<B>) -> CoreResult<()> {
        for (press, member) in &self.members {
            let mut copy = cache.clone();
            if let Some(p) = press {
                p.compress(inputs, &mut copy)?;
            }
            copy.set_quantization(self.quantization);
            copy.settle()?;
            let mut member = member.lock().map_err(|_| CoreError::Invalid {
                name: "shared prefill",
                detail: "a press panicked during the prefill".into(),
            })?;
            let slot = member
                .layer_mut(inputs.layer)
                .ok_or_else(|| CoreError::Invalid {
                    name: "shared prefill",
                    detail: format!("the cache has no layer {}", inputs.layer),
                })?;
            *slot = copy;
        }
        Ok(())
    }
}

/// A press that compresses during decoding changes the context's entries, so the cache cannot
/// be rolled back to serve a second question (kvpress refuses this too).
fn one_question_for_decoding_presses<B: Backend>(
    press: Option<&dyn Press<B>>,
    questions: usize,
) -> Result<()> {
    if questions > 1 && press.is_some_and(|p| p.compresses_during_decoding()) {
        return Err(ModelError::Input(
            "a press that compresses during decoding changes the context's cache, so it answers \
             one question per context; ask the questions one at a time"
                .into(),
        ));
    }
    Ok(())
}

impl<B: Backend> ContextModel<B> for Pipeline<'_, B> {
    fn encode(&self, text: &str) -> CoreResult<Vec<u32>> {
        self.tokenizer
            .encode(text, false)
            .map_err(|e| CoreError::Model(e.to_string()))
    }

    fn template_parts(&self) -> CoreResult<(String, String)> {
        if !self.tokenizer.has_chat_template() {
            return Ok((String::new(), "\n".to_string()));
        }
        self.split_template("")
            .map_err(|e| CoreError::Model(e.to_string()))
    }

    fn forward(
        &self,
        ids: &[u32],
        positions: &[usize],
        cache: &mut KvCache<B>,
        hook: &dyn Press<B>,
    ) -> CoreResult<()> {
        self.model
            .forward(
                ids,
                positions,
                cache,
                &ForwardOptions {
                    press: Some(hook),
                    ..Default::default()
                },
            )
            .map(|_| ())
            .map_err(|e| CoreError::Model(e.to_string()))
    }
}
