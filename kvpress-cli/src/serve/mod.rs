//! `kvpress serve`: an OpenAI-compatible HTTP server that compresses each request's context with
//! a press (axum on tokio; the model runs on one worker thread, requests queue for it).
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions` (both with `"stream": true` as
//! server-sent events), `POST /v1/contexts` (compress once, ask many), `GET /v1/contexts`,
//! `GET|DELETE /v1/contexts/{id}`, `POST /v1/inspect` (the web page's call), `GET /v1/models`,
//! `GET /v1/presses`, `GET /health`, `GET /metrics`, and the web page at `/`. Errors are JSON
//! `{"error": {"message", "type", "code"}}` with a 4xx/5xx status.

pub mod api;
pub mod engine;
pub mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use api::{
    ApiError, ChatRequest, CompletionRequest, ContextRequest, Decoding, InspectRequest, Message,
};
use engine::{EngineHandle, Event, Finished, GenerateJob, Job, Limits};
use metrics::Metrics;

/// Options of `kvpress serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the address is printed on the first line of stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 8 << 20, value_name = "BYTES")]
    max_body_bytes: usize,
    /// Most context tokens a request may send (default: the model's max_position_embeddings).
    #[arg(long, value_name = "N")]
    max_context_tokens: Option<usize>,
    /// Most tokens a request may generate.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    max_new_tokens: usize,
    /// Default max_tokens of a request that gives none.
    #[arg(long, default_value_t = 128, value_name = "N")]
    default_max_tokens: usize,
    /// Requests waiting or running at most; more are refused with 429.
    #[arg(long, default_value_t = 16, value_name = "N")]
    max_queue: usize,
    /// Memory for stored compressed contexts (least recently used evicted first), MiB.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    context_store_mib: usize,
    /// Stored compressed contexts at most.
    #[arg(long, default_value_t = 32, value_name = "N")]
    max_contexts: usize,
}

/// What every handler shares.
#[derive(Clone)]
struct AppState {
    engine: EngineHandle,
    metrics: Arc<Metrics>,
    model: String,
    default_max_tokens: usize,
}

/// Loads the model, binds the address and serves until interrupted.
pub fn run(model: Option<&std::path::Path>, args: &ServeArgs) -> anyhow::Result<()> {
    let limits = Limits {
        max_context_tokens: args.max_context_tokens,
        max_new_tokens: args.max_new_tokens.max(1),
        max_queue: args.max_queue.max(1),
        store_bytes: args.context_store_mib << 20,
        store_entries: args.max_contexts.max(1),
    };
    let metrics = Arc::new(Metrics::default());
    eprintln!("kvpress serve: loading the model…");
    let (engine, model_name, worker) = engine::start(
        model.map(std::path::Path::to_path_buf),
        limits,
        metrics.clone(),
    )?;
    let state = AppState {
        engine,
        metrics,
        model: model_name,
        default_max_tokens: args.default_max_tokens.max(1),
    };
    let app = router(state, args.max_body_bytes);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let addr: SocketAddr = format!("{}:{}", args.host, args.port)
            .parse()
            .with_context(|| format!("bad --host/--port {}:{}", args.host, args.port))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let bound = listener.local_addr()?;
        println!("kvpress serve: listening on http://{bound}");
        use std::io::Write;
        std::io::stdout().flush()?;
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving")
    })?;
    drop(worker);
    Ok(())
}

fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(models))
        .route("/v1/presses", get(presses))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/contexts", post(create_context).get(list_contexts))
        .route("/v1/contexts/{id}", get(get_context).delete(delete_context))
        .route("/v1/inspect", post(inspect))
        .route_layer(middleware::from_fn_with_state(state.clone(), record))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Counts every routed request by route and status.
async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let response = next.run(req).await;
    state.metrics.record(&route, response.status().as_u16());
    response
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {} {}", req.method(), req.uri().path()),
    )
}

/// A body that is not the expected JSON (or is too large) as a JSON error with its status.
fn rejected(r: JsonRejection) -> ApiError {
    let status = r.status();
    let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "request_too_large"
    } else {
        "invalid_request_error"
    };
    ApiError::new(status, kind, r.body_text())
}

async fn page() -> Html<&'static str> {
    Html(crate::report::PAGE)
}

async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"status": "ok", "model": state.model}))
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let queue = state
        .engine
        .pending
        .load(std::sync::atomic::Ordering::SeqCst);
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(queue),
    )
        .into_response()
}

async fn models(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": state.model, "object": "model", "created": 0, "owned_by": "kvpress-rs"}],
    }))
}

async fn presses() -> Json<Value> {
    Json(crate::commands::catalogue_json())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A request id: the time and a counter.
fn request_id(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{:x}{n:04x}", now())
}

/// Context (every message but the last) and question (the last, a user turn).
fn split_messages(messages: &[Message]) -> Result<(String, String), ApiError> {
    let Some((last, earlier)) = messages.split_last() else {
        return Err(ApiError::invalid("messages is empty"));
    };
    if last.role != "user" {
        return Err(ApiError::invalid(format!(
            "the last message is the question and must have role 'user', not '{}'",
            last.role
        )));
    }
    let context = earlier
        .iter()
        .map(|m| m.content.text())
        .collect::<Result<Vec<_>, _>>()?
        .join("\n\n");
    Ok((context, last.content.text()?))
}

/// Whether the response is a chat completion or a text completion.
#[derive(Debug, Clone, Copy)]
enum Flavor {
    Chat,
    Text,
}

impl Flavor {
    fn body(self, id: &str, model: &str, f: &Finished) -> Value {
        let choice = match self {
            Flavor::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": f.text},
                "finish_reason": f.finish_reason,
            }),
            Flavor::Text => {
                json!({"index": 0, "text": f.text, "finish_reason": f.finish_reason})
            }
        };
        json!({
            "id": id,
            "object": match self { Flavor::Chat => "chat.completion", Flavor::Text => "text_completion" },
            "created": now(),
            "model": model,
            "choices": [choice],
            "usage": f.usage,
        })
    }

    fn chunk(self, id: &str, model: &str, piece: Option<&str>, finish: Option<&Finished>) -> Value {
        let finish_reason = finish.map(|f| f.finish_reason);
        let choice = match self {
            Flavor::Chat => json!({
                "index": 0,
                "delta": piece.map_or(json!({}), |t| json!({"content": t})),
                "finish_reason": finish_reason,
            }),
            Flavor::Text => json!({
                "index": 0,
                "text": piece.unwrap_or(""),
                "finish_reason": finish_reason,
            }),
        };
        let mut chunk = json!({
            "id": id,
            "object": match self { Flavor::Chat => "chat.completion.chunk", Flavor::Text => "text_completion" },
            "created": now(),
            "model": model,
            "choices": [choice],
        });
        if let (Some(f), Value::Object(map)) = (finish, &mut chunk) {
            map.insert("usage".into(), json!(f.usage));
        }
        chunk
    }
}

async fn chat(
    State(state): State<AppState>,
    payload: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = payload.map_err(rejected)?;
    let (context, question) = split_messages(&req.messages)?;
    generate(state, context, Some(question), req.decoding, Flavor::Chat).await
}

async fn completions(
    State(state): State<AppState>,
    payload: Result<Json<CompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = payload.map_err(rejected)?;
    let context = req.prompt.unwrap_or_default();
    if context.trim().is_empty() && req.decoding.compression.context_id.is_none() {
        return Err(ApiError::invalid("prompt is empty"));
    }
    generate(state, context, req.question, req.decoding, Flavor::Text).await
}

/// Queues a generation and answers it whole, or streams it as server-sent events. Errors found
/// before decoding starts (bad press, context too long) are answered with their status.
async fn generate(
    state: AppState,
    context: String,
    question: Option<String>,
    decoding: Decoding,
    flavor: Flavor,
) -> Result<Response, ApiError> {
    let stream = decoding.stream;
    let job = GenerateJob {
        context,
        question,
        max_tokens: decoding.max_tokens.unwrap_or(state.default_max_tokens),
        ignore_eos: decoding.ignore_eos,
        compression: decoding.compression,
    };
    // cheap checks before queueing
    engine::build_press(&job.compression)?;
    engine::quantization(&job.compression)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    state.engine.submit(Job::Generate(job, tx))?;
    let stopped = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "engine_stopped",
            "the model worker stopped",
        )
    };
    match rx.recv().await {
        Some(Event::Started) => {}
        Some(Event::Done(Err(e))) => return Err(e),
        Some(_) | None => return Err(stopped()),
    }
    let id = request_id(match flavor {
        Flavor::Chat => "chatcmpl",
        Flavor::Text => "cmpl",
    });
    if !stream {
        // dropping `rx` (a client gone) cancels the generation at its next token
        while let Some(event) = rx.recv().await {
            match event {
                Event::Done(Ok(f)) => {
                    return Ok(Json(flavor.body(&id, &state.model, &f)).into_response());
                }
                Event::Done(Err(e)) => return Err(e),
                Event::Started | Event::Delta(_) => {}
            }
        }
        return Err(stopped());
    }
    let (sse_tx, sse_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let model = state.model.clone();
    tokio::spawn(async move {
        let data = |v: Value| Ok(SseEvent::default().data(v.to_string()));
        if matches!(flavor, Flavor::Chat) {
            let first = json!({
                "id": id, "object": "chat.completion.chunk", "created": now(), "model": model,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}],
            });
            if sse_tx.send(data(first)).await.is_err() {
                return;
            }
        }
        // a client gone closes `sse_tx`; returning drops `rx`, which cancels the generation
        while let Some(event) = rx.recv().await {
            let (message, last) = match event {
                Event::Started => continue,
                Event::Delta(piece) => (data(flavor.chunk(&id, &model, Some(&piece), None)), false),
                Event::Done(Ok(f)) => (data(flavor.chunk(&id, &model, None, Some(&f))), true),
                Event::Done(Err(e)) => (data(e.body()), true),
            };
            if sse_tx.send(message).await.is_err() {
                return;
            }
            if last {
                break;
            }
        }
        let _ = sse_tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Ok(Sse::new(ReceiverStream::new(sse_rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn create_context(
    State(state): State<AppState>,
    payload: Result<Json<ContextRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(req) = payload.map_err(rejected)?;
    engine::build_press(&req.compression)?;
    ask(&state, |reply| Job::StoreContext(req, reply)).await
}

async fn list_contexts(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    ask(&state, Job::ListContexts).await
}

async fn get_context(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Json(list) = ask(&state, Job::ListContexts).await?;
    list["data"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["id"] == id.as_str()))
        .cloned()
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "context_not_found",
                format!("no stored context '{id}'"),
            )
        })
}

async fn delete_context(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    ask(&state, |reply| Job::DeleteContext(id, reply)).await
}

async fn inspect(
    State(state): State<AppState>,
    payload: Result<Json<InspectRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(req) = payload.map_err(rejected)?;
    engine::build_press(&req.compression)?;
    engine::quantization(&req.compression)?;
    ask(&state, |reply| Job::Inspect(req, reply)).await
}

/// Queues a job answered with one JSON value.
async fn ask(
    state: &AppState,
    job: impl FnOnce(oneshot::Sender<Result<Value, ApiError>>) -> Job,
) -> Result<Json<Value>, ApiError> {
    let (reply, answer) = oneshot::channel();
    state.engine.submit(job(reply))?;
    answer
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "engine_stopped",
                "the model worker stopped",
            )
        })?
        .map(Json)
}
