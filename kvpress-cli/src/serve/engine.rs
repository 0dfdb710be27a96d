//! The model worker of `kvpress serve`: one thread owns the model and serves the queued jobs one
//! at a time (the pipeline holds one sequence), and the store of compressed contexts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::http::StatusCode;
use kvpress_core::{KvBits, KvCache, KvQuantization, Press};
use kvpress_models::generate::{GenerationOptions, continue_generation_with};
use kvpress_models::llama::ForwardOptions;
use kvpress_models::pipeline::{Pipeline, Request};
use kvpress_models::{ChatMessage, Llama, ModelFiles};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::api::{ApiError, CacheUsage, Compression, ContextRequest, InspectRequest, Usage};
use super::metrics::Metrics;
use crate::backend::Backend;
use crate::report;

/// Limits the server enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Context tokens at most (default: the model's max_position_embeddings).
    pub max_context_tokens: Option<usize>,
    /// Generated tokens at most per request.
    pub max_new_tokens: usize,
    /// Jobs waiting or running at most.
    pub max_queue: usize,
    /// Bytes of compressed caches the context store keeps at most.
    pub store_bytes: usize,
    /// Contexts the store keeps at most.
    pub store_entries: usize,
}

/// A generation: the context (compressed), then the question (never compressed).
#[derive(Debug)]
pub struct GenerateJob {
    /// The context; empty: the question alone, chat-templated.
    pub context: String,
    /// The question; none: the model continues after the context.
    pub question: Option<String>,
    pub max_tokens: usize,
    /// Generate `max_tokens` even past the end-of-sequence token.
    pub ignore_eos: bool,
    pub compression: Compression,
}

/// What a generation sends back: text pieces as they come, then the end.
#[derive(Debug)]
pub enum Event {
    /// The context is compressed and decoding starts.
    Started,
    /// The next piece of text.
    Delta(String),
    /// The end: the whole text, why it stopped and the usage; or an error.
    Done(Result<Finished, ApiError>),
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Finished {
    pub text: String,
    pub finish_reason: &'static str,
    pub usage: Usage,
}

/// A request to the worker.
pub enum Job {
    Generate(GenerateJob, mpsc::UnboundedSender<Event>),
    StoreContext(ContextRequest, oneshot::Sender<Result<Value, ApiError>>),
    ListContexts(oneshot::Sender<Result<Value, ApiError>>),
    DeleteContext(String, oneshot::Sender<Result<Value, ApiError>>),
    Inspect(InspectRequest, oneshot::Sender<Result<Value, ApiError>>),
}

impl Job {
    /// True when nobody waits for the answer any more (the client went away).
    fn abandoned(&self) -> bool {
        match self {
            Job::Generate(_, events) => events.is_closed(),
            Job::StoreContext(_, r)
            | Job::ListContexts(r)
            | Job::DeleteContext(_, r)
            | Job::Inspect(_, r) => r.is_closed(),
        }
    }
}

/// The handle the HTTP side submits jobs through.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: std::sync::mpsc::Sender<Job>,
    /// Jobs queued or running.
    pub pending: Arc<AtomicUsize>,
    max_queue: usize,
}

impl EngineHandle {
    /// Queues `job`, or refuses it when the queue is full (429).
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        if self.pending.fetch_add(1, Ordering::SeqCst) >= self.max_queue {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!(
                    "{} requests are already waiting or running; retry later",
                    self.max_queue
                ),
            ));
        }
        self.jobs.send(job).map_err(|_| {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "engine_stopped",
                "the model worker has stopped",
            )
        })
    }
}

/// A compressed context kept for later questions.
struct Stored {
    context: String,
    cache: KvCache<Backend>,
    usage: CacheUsage,
    press: Option<String>,
    compression_ratio: Option<f64>,
    last_used: u64,
}

/// Compressed contexts, evicted least recently used first beyond the byte or count limit.
struct ContextStore {
    entries: HashMap<String, Stored>,
    clock: u64,
    next_id: u64,
    max_bytes: usize,
    max_entries: usize,
}

impl ContextStore {
    fn bytes(&self) -> usize {
        self.entries.values().map(|s| s.usage.cache_bytes).sum()
    }

    fn insert(&mut self, mut stored: Stored) -> Result<String, ApiError> {
        if stored.usage.cache_bytes > self.max_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "context_too_large",
                format!(
                    "the compressed context takes {} bytes, more than the context store's {} \
                     (compress more, or start the server with a larger --context-store-mib)",
                    stored.usage.cache_bytes, self.max_bytes
                ),
            ));
        }
        while !self.entries.is_empty()
            && (self.bytes() + stored.usage.cache_bytes > self.max_bytes
                || self.entries.len() >= self.max_entries)
        {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                self.entries.remove(&id);
            }
        }
        self.clock += 1;
        self.next_id += 1;
        stored.last_used = self.clock;
        let id = format!("ctx-{:06x}", self.next_id);
        self.entries.insert(id.clone(), stored);
        Ok(id)
    }

    fn get(&mut self, id: &str) -> Result<&Stored, ApiError> {
        self.clock += 1;
        let clock = self.clock;
        let stored = self.entries.get_mut(id).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "context_not_found",
                format!("no stored context '{id}' (it may have been evicted)"),
            )
        })?;
        stored.last_used = clock;
        Ok(stored)
    }

    fn describe(id: &str, s: &Stored) -> Value {
        json!({
            "id": id,
            "object": "context",
            "press": s.press,
            "compression_ratio": s.compression_ratio,
            "usage": s.usage,
        })
    }
}

/// Starts the worker thread: it opens and loads the model (`None`: the default model) and
/// serves jobs until every handle is dropped. Returns the model's name once it is loaded (or
/// the error that stopped it).
pub fn start(
    model_path: Option<std::path::PathBuf>,
    limits: Limits,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(EngineHandle, String, std::thread::JoinHandle<()>)> {
    let (jobs, queue) = std::sync::mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<String>>();
    let pending = Arc::new(AtomicUsize::new(0));
    let handle = EngineHandle {
        jobs,
        pending: pending.clone(),
        max_queue: limits.max_queue.max(1),
    };
    let thread = std::thread::Builder::new()
        .name("kvpress-model".into())
        .spawn(move || {
            let loaded = crate::model::open(model_path.as_deref())
                .and_then(|files| crate::model::load(&files).map(|model| (files, model)));
            let (files, model) = match loaded {
                Ok(loaded) => loaded,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut limits = limits;
            limits.max_context_tokens = Some(
                limits
                    .max_context_tokens
                    .unwrap_or(files.config.max_position_embeddings),
            );
            let _ = ready_tx.send(Ok(files.name.clone()));
            let mut engine = Engine {
                model,
                files,
                store: ContextStore {
                    entries: HashMap::new(),
                    clock: 0,
                    next_id: 0,
                    max_bytes: limits.store_bytes,
                    max_entries: limits.store_entries.max(1),
                },
                limits,
                metrics,
            };
            while let Ok(job) = queue.recv() {
                let answer = if job.abandoned() {
                    engine.metrics.cancelled();
                    None
                } else {
                    Some(engine.serve(job))
                };
                engine
                    .metrics
                    .set_store(engine.store.entries.len(), engine.store.bytes());
                // The job stops counting before its client hears the end, so a client that
                // sends its next request on the answer never finds its own job still queued.
                pending.fetch_sub(1, Ordering::SeqCst);
                if let Some(answer) = answer {
                    answer.send();
                }
            }
        })?;
    let name = ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the model worker stopped while loading"))??;
    Ok((handle, name, thread))
}

struct Engine {
    model: Llama<Backend>,
    files: ModelFiles,
    store: ContextStore,
    limits: Limits,
    metrics: Arc<Metrics>,
}

/// The press of a request; `None` without one.
pub fn build_press(c: &Compression) -> Result<Option<Box<dyn Press<Backend>>>, ApiError> {
    if let Some(r) = c.compression_ratio
        && !(0.0..1.0).contains(&r)
    {
        return Err(ApiError::invalid(format!(
            "compression_ratio must be in [0, 1), got {r}"
        )));
    }
    match c.press.as_deref().map(str::trim) {
        None | Some("") | Some("none") | Some("no_press") => Ok(None),
        Some(expr) => kvpress_presses::registry::build::<Backend>(expr, c.compression_ratio)
            .map(Some)
            .map_err(|e| ApiError::invalid(format!("bad press: {e}"))),
    }
}

/// The cache quantization of a request.
pub fn quantization(c: &Compression) -> Result<Option<KvQuantization>, ApiError> {
    c.kv_quant
        .as_deref()
        .filter(|q| !q.is_empty() && *q != "none")
        .map(|q| {
            q.parse::<KvBits>()
                .map(KvQuantization::new)
                .map_err(|e| ApiError::invalid(e.to_string()))
        })
        .transpose()
}

fn model_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(e.to_string())
}

/// The last message of a job, sent once the job no longer counts as pending.
enum Answer {
    Events(mpsc::UnboundedSender<Event>, Event),
    Reply(
        oneshot::Sender<Result<Value, ApiError>>,
        Result<Value, ApiError>,
    ),
}

impl Answer {
    fn send(self) {
        // A client that went away is no error.
        match self {
            Answer::Events(events, event) => {
                let _ = events.send(event);
            }
            Answer::Reply(reply, result) => {
                let _ = reply.send(result);
            }
        }
    }
}

impl Engine {
    /// Runs `job` (streamed pieces go out as they come) and returns its last message.
    fn serve(&mut self, job: Job) -> Answer {
        match job {
            Job::Generate(job, events) => {
                let start = Instant::now();
                let result = self.generate(job, &events);
                if let Ok(f) = &result {
                    self.metrics
                        .generated(&f.usage, start.elapsed().as_secs_f64());
                    if f.finish_reason == "cancelled" {
                        self.metrics.cancelled();
                    }
                }
                Answer::Events(events, Event::Done(result))
            }
            Job::StoreContext(req, reply) => {
                let result = self.store_context(req);
                Answer::Reply(reply, result)
            }
            Job::ListContexts(reply) => {
                let list: Vec<Value> = self
                    .store
                    .entries
                    .iter()
                    .map(|(id, s)| ContextStore::describe(id, s))
                    .collect();
                Answer::Reply(reply, Ok(json!({"object": "list", "data": list})))
            }
            Job::DeleteContext(id, reply) => {
                let result = match self.store.entries.remove(&id) {
                    Some(_) => Ok(json!({"id": id, "object": "context", "deleted": true})),
                    None => Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "context_not_found",
                        format!("no stored context '{id}'"),
                    )),
                };
                Answer::Reply(reply, result)
            }
            Job::Inspect(req, reply) => {
                let result = self.inspect(req);
                Answer::Reply(reply, result)
            }
        }
    }

    fn pipeline(&self, quantization: Option<KvQuantization>) -> Pipeline<'_, Backend> {
        Pipeline::new(
            &self.model,
            &self.files.tokenizer,
            self.files.eos_token_ids.clone(),
        )
        .with_kv_quantization(quantization)
    }

    /// Refuses a context over the limit, or a prompt + answer past the model's positions.
    fn check_length(
        &self,
        context: usize,
        question: usize,
        max_tokens: usize,
    ) -> Result<(), ApiError> {
        let limit = self.limits.max_context_tokens.unwrap_or(usize::MAX);
        if context > limit {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "context_length_exceeded",
                format!("the context has {context} tokens; this server takes at most {limit}"),
            ));
        }
        let max = self.model.config().max_position_embeddings;
        if context + question + max_tokens > max {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "context_length_exceeded",
                format!(
                    "context ({context}) + question ({question}) + max_tokens ({max_tokens}) \
                     tokens exceed the model's {max} positions"
                ),
            ));
        }
        Ok(())
    }

    /// What `cache` holds for a context of `n` tokens.
    fn cache_usage(&self, cache: &KvCache<Backend>, n: usize) -> CacheUsage {
        let config = self.model.config();
        let slots = config.num_hidden_layers * config.num_kv_heads();
        let entries = cache.entries();
        let full = slots * n;
        CacheUsage {
            context_tokens: n,
            kept_tokens: entries as f64 / slots.max(1) as f64,
            cache_bytes: cache.bytes(),
            cache_bytes_uncompressed: if entries == 0 {
                0
            } else {
                (cache.unquantized_bytes() as f64 / entries as f64 * full as f64).round() as usize
            },
        }
    }

    /// Compresses (or looks up) the context, then decodes after the question, streaming text.
    fn generate(
        &mut self,
        job: GenerateJob,
        events: &mpsc::UnboundedSender<Event>,
    ) -> Result<Finished, ApiError> {
        let press = build_press(&job.compression)?;
        let quantization = quantization(&job.compression)?;
        if job.max_tokens == 0 || job.max_tokens > self.limits.max_new_tokens {
            return Err(ApiError::invalid(format!(
                "max_tokens must be in 1..={}, got {}",
                self.limits.max_new_tokens, job.max_tokens
            )));
        }
        let (mut cache, question_ids, start, usage) = if let Some(id) =
            job.compression.context_id.as_deref()
        {
            if press.is_some() || quantization.is_some() {
                return Err(ApiError::invalid(
                    "a stored context is already compressed: leave press, compression_ratio and \
                     kv_quant out when naming context_id",
                ));
            }
            if !job.context.trim().is_empty() {
                return Err(ApiError::invalid(
                    "with context_id only the question is sent (the last user message)",
                ));
            }
            let stored = self.store.get(id)?;
            let (context, cache, usage) = (
                stored.context.clone(),
                stored.cache.clone(),
                stored.usage.clone(),
            );
            let mut request = Request::new(context);
            request.questions = job.question.clone().into_iter().collect();
            let prompt = self.pipeline(None).prompt(&request).map_err(model_error)?;
            let question = prompt.question_ids.into_iter().next().unwrap_or_default();
            self.check_length(usage.context_tokens, question.len(), job.max_tokens)?;
            let start = cache.next_position();
            (cache, question, start, usage)
        } else if job.context.trim().is_empty() {
            // no context: the question alone, as a chat turn
            let question = job.question.clone().unwrap_or_default();
            if question.trim().is_empty() {
                return Err(ApiError::invalid("the request has no text to answer"));
            }
            let text = if self.files.tokenizer.has_chat_template() {
                self.files
                    .tokenizer
                    .apply_chat_template(&[ChatMessage::user(question)], true)
                    .map_err(model_error)?
            } else {
                question
            };
            let ids = self
                .files
                .tokenizer
                .encode(&text, false)
                .map_err(model_error)?;
            self.check_length(0, ids.len(), job.max_tokens)?;
            let cache = self.model.new_cache_quantized(quantization);
            (cache, ids, 0, CacheUsage::default())
        } else {
            let mut request = Request::new(job.context.clone());
            request.questions = job.question.clone().into_iter().collect();
            let pipe = self.pipeline(quantization);
            let prompt = pipe.prompt(&request).map_err(model_error)?;
            let question = prompt.question_ids.first().cloned().unwrap_or_default();
            self.check_length(prompt.context_ids.len(), question.len(), job.max_tokens)?;
            let cache = pipe
                .prefill(&prompt.context_ids, press.as_deref())
                .map_err(model_error)?;
            let usage = self.cache_usage(&cache, prompt.context_ids.len());
            (cache, question, usage.context_tokens, usage)
        };
        let _ = events.send(Event::Started);
        let options = GenerationOptions {
            max_new_tokens: job.max_tokens,
            eos_token_ids: self.files.eos_token_ids.clone(),
            first_token_never_stops: true,
            ignore_eos: job.ignore_eos,
            ..Default::default()
        };
        // a decoding-time press keeps compressing while the answer is generated
        let forward = ForwardOptions {
            press: press.as_deref().filter(|p| p.compresses_during_decoding()),
            ..Default::default()
        };
        let tokenizer = &self.files.tokenizer;
        let mut generated: Vec<u32> = Vec::new();
        let mut sent = 0usize;
        let mut cancelled = false;
        let mut on_token = |token: u32| {
            generated.push(token);
            if let Ok(text) = tokenizer.decode(&generated, true)
                && !text.ends_with('\u{FFFD}')
                && text.len() > sent
                && text.is_char_boundary(sent)
            {
                let piece = text[sent..].to_string();
                sent = text.len();
                if events.send(Event::Delta(piece)).is_err() {
                    cancelled = true;
                }
            }
            cancelled |= events.is_closed();
            !cancelled
        };
        let generation = continue_generation_with(
            &self.model,
            &mut cache,
            &question_ids,
            start,
            &options,
            &forward,
            false,
            &mut on_token,
        )
        .map_err(model_error)?;
        let text = tokenizer
            .decode(&generation.tokens, true)
            .map_err(model_error)?;
        if text.len() > sent && text.is_char_boundary(sent) {
            let _ = events.send(Event::Delta(text[sent..].to_string()));
        }
        let ended_by_eos = generation
            .tokens
            .last()
            .is_some_and(|t| self.files.eos_token_ids.contains(t));
        let finish_reason = if cancelled {
            "cancelled"
        } else if ended_by_eos {
            "stop"
        } else {
            "length"
        };
        let prompt_tokens = usage.context_tokens + question_ids.len();
        Ok(Finished {
            text,
            finish_reason,
            usage: Usage {
                prompt_tokens,
                completion_tokens: generation.tokens.len(),
                total_tokens: prompt_tokens + generation.tokens.len(),
                cache: usage,
            },
        })
    }

    /// Compresses a context and keeps its cache for later questions.
    fn store_context(&mut self, req: ContextRequest) -> Result<Value, ApiError> {
        let press = build_press(&req.compression)?;
        let quantization = quantization(&req.compression)?;
        if req.compression.context_id.is_some() {
            return Err(ApiError::invalid(
                "context_id names a stored context; send a context",
            ));
        }
        let pipe = self.pipeline(quantization);
        let prompt = pipe
            .prompt(&Request::new(req.context.clone()))
            .map_err(model_error)?;
        self.check_length(prompt.context_ids.len(), 0, 1)?;
        let cache = pipe
            .prefill(&prompt.context_ids, press.as_deref())
            .map_err(model_error)?;
        let usage = self.cache_usage(&cache, prompt.context_ids.len());
        self.metrics.compressed(&usage);
        let stored = Stored {
            context: req.context,
            cache,
            usage,
            press: req.compression.press.clone(),
            compression_ratio: req.compression.compression_ratio,
            last_used: 0,
        };
        let id = self.store.insert(stored)?;
        let stored = self.store.get(&id)?;
        Ok(ContextStore::describe(&id, stored))
    }

    /// The answer with and without compression and what every layer and head kept.
    fn inspect(&mut self, req: InspectRequest) -> Result<Value, ApiError> {
        let press = build_press(&req.compression)?;
        let quantization = quantization(&req.compression)?;
        let max_tokens = req.max_tokens.unwrap_or(32);
        if max_tokens == 0 || max_tokens > self.limits.max_new_tokens {
            return Err(ApiError::invalid(format!(
                "max_tokens must be in 1..={}, got {max_tokens}",
                self.limits.max_new_tokens
            )));
        }
        let request = Request::new(req.context.clone())
            .question(req.question.clone())
            .max_new_tokens(max_tokens);
        let pipe = self.pipeline(quantization);
        let prompt = pipe.prompt(&request).map_err(model_error)?;
        let question = prompt.question_ids.first().map_or(0, Vec::len);
        self.check_length(prompt.context_ids.len(), question, max_tokens)?;
        let start = Instant::now();
        if let Some(p) = press.as_deref() {
            p.reset();
        }
        let mut cache = pipe
            .prefill(&prompt.context_ids, press.as_deref())
            .map_err(model_error)?;
        let usage = self.cache_usage(&cache, prompt.context_ids.len());
        let answers = pipe
            .answer(&prompt, &mut cache, max_tokens, press.as_deref())
            .map_err(model_error)?;
        let compressed_seconds = start.elapsed().as_secs_f64();
        let mut data = report::kept_map(&self.files.tokenizer, &prompt.context_ids, &cache)
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
        let start = Instant::now();
        let uncompressed = if press.is_some() || quantization.is_some() {
            self.pipeline(None)
                .run(&request, None)
                .map_err(model_error)?
                .answers
        } else {
            answers.clone()
        };
        self.metrics.compressed(&usage);
        if let Value::Object(map) = &mut data {
            map.insert("answer".into(), json!(answers.first()));
            map.insert("answer_uncompressed".into(), json!(uncompressed.first()));
            map.insert("press".into(), json!(req.compression.press));
            map.insert(
                "compression_ratio".into(),
                json!(req.compression.compression_ratio),
            );
            map.insert("kv_quant".into(), json!(req.compression.kv_quant));
            map.insert("cache_bytes".into(), json!(usage.cache_bytes));
            map.insert(
                "cache_bytes_uncompressed".into(),
                json!(usage.cache_bytes_uncompressed),
            );
            map.insert(
                "seconds".into(),
                json!({"compressed": compressed_seconds, "uncompressed": start.elapsed().as_secs_f64()}),
            );
        }
        Ok(data)
    }
}
