//! `ferry serve`: an OpenAI-compatible HTTP server.
//!
//! Two threads of control: the HTTP side (tokio + axum) validates and
//! tokenizes requests and turns engine events into responses; the engine
//! thread (`scheduler`) owns the model and decodes every active request in one
//! batch per step. They meet in two channels: jobs in, events out per request.
//! A client that goes away drops its event receiver, which the engine notices
//! at its next step and frees the slot.

pub mod api;
pub mod conn;
pub mod metrics;
pub mod reasoning;
pub mod scheduler;
pub mod tools;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::mpsc;

use crate::engine::constrain::{Constraint, Grammars};
use crate::tokenizer::{ChatTemplate, Tokenizer};
use api::{ApiError, Params};
use metrics::Metrics;
use scheduler::{Admission, Alternative, Event, Job, TokenLogprob};

pub use scheduler::{EngineConfig, run_engine};

pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    pub parallel: usize,
    /// Requests that may wait for a slot beyond the `parallel` running ones.
    pub queue: usize,
    /// Context per sequence.
    pub n_ctx: usize,
    pub max_body_bytes: usize,
    /// The name `/v1/models` lists.
    pub model_id: String,
    /// Control tokens written in chat message content act as control tokens
    /// (llama.cpp's behaviour); by default content is text.
    pub content_special: bool,
    /// Connection cap and header/idle timeouts.
    pub limits: conn::ConnLimits,
    /// How long a request body may take to arrive.
    pub body_timeout: std::time::Duration,
}

struct AppState {
    tok: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
    model_id: String,
    n_ctx: usize,
    api_key: Option<String>,
    jobs: std::sync::mpsc::Sender<Job>,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    max_body: usize,
    started: u64,
    next_id: AtomicU64,
    parallel: usize,
    content_special: bool,
    body_timeout: std::time::Duration,
    /// The tokenizer compiled for constrained decoding, on first use.
    grammars: std::sync::OnceLock<Result<Arc<Grammars>, String>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AppState {
    /// A request id and a default seed that differ between requests.
    fn fresh(&self) -> (String, u64) {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mixed = (nanos ^ n.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (format!("{mixed:016x}"), mixed)
    }

    /// The initial state of the grammar a request holds its output to.
    fn constraint(&self, g: &api::GrammarSpec) -> Result<Constraint, ApiError> {
        let grammars = self
            .grammars
            .get_or_init(|| Grammars::new(self.tok.clone()).map(Arc::new))
            .as_ref()
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    format!("constrained decoding is not available for this model: {e}"),
                )
            })?;
        grammars
            .constraint(&g.spec())
            .map_err(|e| ApiError::invalid(format!("{}: {e}", g.param())).param(g.param()))
    }
}

/// Everything the HTTP side needs; the engine runs elsewhere.
pub struct Server {
    state: Arc<AppState>,
    limits: conn::ConnLimits,
}

impl Server {
    pub fn new(
        opts: &ServeOptions,
        tok: Arc<Tokenizer>,
        jobs: std::sync::mpsc::Sender<Job>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let template = ChatTemplate::for_tokenizer(&tok).ok();
        Server {
            state: Arc::new(AppState {
                tok,
                template,
                model_id: opts.model_id.clone(),
                n_ctx: opts.n_ctx,
                api_key: opts.api_key.clone().filter(|k| !k.is_empty()),
                jobs,
                admission: Admission::new(opts.parallel + opts.queue),
                metrics,
                max_body: opts.max_body_bytes,
                started: unix_now(),
                next_id: AtomicU64::new(0),
                parallel: opts.parallel,
                content_special: opts.content_special,
                body_timeout: opts.body_timeout,
                grammars: std::sync::OnceLock::new(),
            }),
            limits: opts.limits,
        }
    }

    pub fn router(&self) -> Router {
        let state = self.state.clone();
        let guarded = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/completions", post(completions))
            .route("/v1/models", get(models))
            .route("/metrics", get(prometheus))
            .route("/v1/ferry/status", get(status))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                require_key,
            ));
        Router::new()
            .route("/health", get(health))
            .route("/", get(web_page))
            .merge(guarded)
            .with_state(state)
    }
}

/// Bind and serve until Ctrl-C or SIGTERM. Reports the bound address (useful
/// with port 0) through `on_bound` before serving.
pub async fn serve(
    server: Server,
    host: &str,
    port: u16,
    on_bound: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    "another server is using the port: pick another --port"
                }
                std::io::ErrorKind::AddrNotAvailable => {
                    "this machine has no such address: pass one of its own to --host (127.0.0.1, 0.0.0.0, …)"
                }
                std::io::ErrorKind::PermissionDenied => {
                    "ports below 1024 need privileges: pick a --port of 1024 or more"
                }
                _ if e.to_string().contains("lookup") => {
                    "--host must be an IP address or a name this machine resolves"
                }
                _ => "check --host and --port",
            };
            anyhow::anyhow!("cannot listen on {host}:{port}: {e} ({hint})")
        })?;
    on_bound(listener.local_addr()?);
    conn::serve_connections(listener, server.router(), server.limits, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("ferry serve: shutting down");
}

/// With `--api-key`, every route but `/health` needs `Authorization: Bearer KEY`.
async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
            let r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing or incorrect API key: send the server's --api-key as `Authorization: Bearer KEY`",
            )
            .code("invalid_api_key")
            .into_response();
            let mut r = r;
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    next.run(req).await
}

/// Compare without an early exit, so the time taken does not reveal how much
/// of a guessed key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= (x ^ b.get(i).copied().unwrap_or(0)) as usize;
    }
    diff == 0
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such route (ferry serves /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics)",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method not allowed on this route",
    )
}

async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_id,
            "object": "model",
            "created": state.started,
            "owned_by": "ferry",
            "context_length": state.n_ctx,
        }],
    }))
}

/// The web page: a chat and a view of the engine (static, embedded; its
/// requests carry the API key the user types, when the server has one).
async fn web_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("web/index.html"),
    )
        .into_response()
}

/// The model, where its layers are, the last prefill's timeline and the
/// serving figures: what the web page draws.
async fn status(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let engine = state
        .metrics
        .status
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    Json(json!({
        "model": state.model_id,
        "n_ctx": state.n_ctx,
        "parallel": state.parallel,
        "chat_template": state.template.is_some(),
        "layers": engine.layers,
        "trace": engine.trace,
        "metrics": state.metrics.snapshot(),
    }))
}

async fn prometheus(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Read the body up to the configured limit.
async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!(
                "the request body is larger than {} bytes (the server's --max-body)",
                state.max_body
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > state.max_body) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(
        state.body_timeout,
        axum::body::to_bytes(body, state.max_body),
    );
    let Ok(read) = read.await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!(
                "the request body did not arrive within {} s (the server's --body-timeout)",
                state.body_timeout.as_secs_f64()
            ),
        ));
    };
    match read {
        Ok(b) => Ok(b.to_vec()),
        Err(e) if format!("{e:#}").contains("length limit") => Err(too_large()),
        Err(e) => Err(ApiError::invalid(format!("reading the request body: {e}"))),
    }
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, headers, body, Kind::Chat, chat_request).await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state, headers, body, Kind::Completion, completion_request).await
}

/// A validated request: prompt tokens, parameters and the response id.
type Prepared = (Vec<u32>, Params, String);

/// Read the body, turn it into a prompt with `prepare`, and generate; any
/// client error is counted and answered in OpenAI's shape.
async fn handle(
    state: Arc<AppState>,
    headers: HeaderMap,
    body: Body,
    kind: Kind,
    prepare: fn(&AppState, &[u8]) -> Result<Prepared, ApiError>,
) -> Response {
    let prepared = match read_body(&state, &headers, body).await {
        Ok(bytes) => prepare(&state, &bytes),
        Err(e) => Err(e),
    };
    match prepared {
        Ok((prompt, params, id)) => generate(state, prompt, params, id, kind).await,
        Err(e) => {
            Metrics::add(&state.metrics.requests_client_error, 1);
            e.into_response()
        }
    }
}

fn chat_request(state: &AppState, bytes: &[u8]) -> Result<Prepared, ApiError> {
    let req: api::ChatRequest = api::parse(bytes)?;
    let conversation = req.conversation()?;
    let (id, seed) = state.fresh();
    let mut params = req.common.params(req.max_completion_tokens, seed)?;
    params.logprobs = req.common.logprobs(true)?;
    let template = state
        .template
        .as_ref()
        .ok_or_else(|| ApiError::invalid("the model has no chat template; use /v1/completions"))?;
    let (tools, forced) = match req.tools()? {
        Some((t, forced)) => (Some(t), forced),
        None => (None, None),
    };
    params.tools = tools.is_some();
    if let Some(serde_json::Value::Array(offered)) = &tools {
        params.tool_names = offered
            .iter()
            .filter_map(|t| t["function"]["name"].as_str().map(str::to_string))
            .collect();
    }
    if let Some(forced) = &forced {
        if params.grammar.is_some() {
            return Err(ApiError::invalid(
                "a required or named tool_choice and a response_format or grammar were both given; send one",
            )
            .param("tool_choice"));
        }
        let has = |t: &str| state.tok.token_id(t).is_some();
        params.grammar = Some(api::GrammarSpec::Tools(tools::forced_grammar(
            forced,
            has("<tool_call>"),
            has("<|python_tag|>"),
            req.parallel_tool_calls != Some(false),
        )));
    } else if let Some(serde_json::Value::Array(offered)) = &tools
        && params.grammar.is_none()
        && tools::any_strict(offered)
        && let Some(open) = state.tok.token_id(tools::OPEN)
    {
        // `strict` tools the model may call or not: once it opens a call,
        // the call is held to the tools' schemas.
        params.lazy_grammar = Some((
            open,
            api::GrammarSpec::Tools(tools::call_body_grammar(offered)),
        ));
    }
    let opts = crate::tokenizer::RenderOptions {
        add_generation_prompt: true,
        enable_thinking: req.enable_thinking()?,
        tools,
    };
    let prompt = crate::tokenizer::encode_conversation_with(
        &state.tok,
        template,
        &conversation,
        &opts,
        state.content_special,
    )
    .map_err(|e| ApiError::invalid(format!("{e}")).param("messages"))?;
    // Models that think get their reasoning apart from the answer.
    if let Some((open, close)) = reasoning::ReasoningSplit::markers(&state.tok) {
        let text = template
            .render_opts(&conversation, &opts)
            .map_err(|e| ApiError::invalid(format!("{e}")).param("messages"))?;
        params.reasoning = Some(reasoning::ReasoningSplit::new(open, close, &text));
    }
    Ok((prompt, params, format!("chatcmpl-{id}")))
}

fn completion_request(state: &AppState, bytes: &[u8]) -> Result<Prepared, ApiError> {
    let req: api::CompletionRequest = api::parse(bytes)?;
    let prompt = match req.prompt()? {
        Ok(text) => state.tok.encode(text, true, false),
        Err(ids) => {
            let vocab = state.tok.vocab_size() as u32;
            if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
                return Err(ApiError::invalid(format!(
                    "token id {bad} is outside the vocabulary of {vocab}"
                ))
                .param("prompt"));
            }
            ids.to_vec()
        }
    };
    let (id, seed) = state.fresh();
    let mut params = req.common.params(None, seed)?;
    params.logprobs = req.common.logprobs(false)?;
    Ok((prompt, params, format!("cmpl-{id}")))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// Log-probabilities as each endpoint returns them: chat `{"content": [{token,
/// logprob, bytes, top_logprobs}]}`, completions `{tokens, token_logprobs,
/// top_logprobs, text_offset}` (`offset`: where these tokens' text starts in
/// the completion).
fn logprobs_json(kind: Kind, lp: &[TokenLogprob], offset: usize) -> serde_json::Value {
    let alt = |a: &Alternative| json!({"token": a.text(), "logprob": a.logprob, "bytes": a.bytes});
    match kind {
        Kind::Chat => json!({
            "content": lp.iter().map(|t| {
                let mut e = alt(&t.token);
                e["top_logprobs"] = t.top.iter().map(alt).collect();
                e
            }).collect::<Vec<_>>(),
        }),
        Kind::Completion => {
            let mut at = offset;
            let mut text_offset = Vec::with_capacity(lp.len());
            for t in lp {
                text_offset.push(at);
                at += t.token.bytes.len();
            }
            json!({
                "tokens": lp.iter().map(|t| t.token.text()).collect::<Vec<_>>(),
                "token_logprobs": lp.iter().map(|t| t.token.logprob).collect::<Vec<_>>(),
                "top_logprobs": lp.iter().map(|t| {
                    t.top.iter().map(|a| (a.text(), json!(a.logprob))).collect::<serde_json::Map<_, _>>()
                }).collect::<Vec<_>>(),
                "text_offset": text_offset,
            })
        }
    }
}

/// Check the lengths, queue the job, and answer (in one piece or streamed).
async fn generate(
    state: Arc<AppState>,
    prompt: Vec<u32>,
    params: Params,
    id: String,
    kind: Kind,
) -> Response {
    let reject = |e: ApiError| {
        Metrics::add(&state.metrics.requests_client_error, 1);
        e.into_response()
    };
    let n_ctx = state.n_ctx;
    if prompt.is_empty() {
        return reject(ApiError::invalid("the prompt is empty").param("prompt"));
    }
    if prompt.len() >= n_ctx {
        return reject(
            ApiError::invalid(format!(
                "the prompt is {} tokens but the context holds {n_ctx} per sequence (leaving room for at least one generated token); shorten it or start the server with a larger -c",
                prompt.len()
            ))
            .code("context_length_exceeded")
            .param("messages"),
        );
    }
    let room = n_ctx - prompt.len();
    let max_tokens = match params.max_tokens {
        Some(m) if m > room => {
            return reject(
                ApiError::invalid(format!(
                    "max_tokens is {m} but the prompt ({} tokens) leaves room for {room} in the context of {n_ctx}; lower max_tokens or start the server with a larger -c",
                    prompt.len()
                ))
                .code("context_length_exceeded")
                .param("max_tokens"),
            );
        }
        Some(m) => m,
        None => room,
    };
    if params.n > state.parallel {
        return reject(
            ApiError::invalid(format!(
                "n = {} choices need as many parallel sequences; the server runs {} (--parallel)",
                params.n, state.parallel
            ))
            .param("n"),
        );
    }
    let constraint = match &params.grammar {
        Some(g) => match state.constraint(g) {
            Ok(c) => Some(c),
            Err(e) => return reject(e),
        },
        None => None,
    };
    let lazy = match &params.lazy_grammar {
        Some((token, g)) => match state.constraint(g) {
            Ok(c) => Some((*token, c)),
            Err(e) => return reject(e),
        },
        None => None,
    };
    let Some(ticket) = state.admission.try_admit() else {
        Metrics::add(&state.metrics.requests_rejected, 1);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "the server is busy: {} requests are running or queued (--parallel {} plus --queue); retry later",
                state.admission.in_system(),
                state.parallel
            ),
        );
        e.retry_after = Some(1);
        return e.into_response();
    };
    let n = params.n;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let job = Job {
        prompt,
        max_tokens,
        sampling: params.sampling,
        stop: params.stop,
        logprobs: params.logprobs,
        n,
        events: tx,
        constraint,
        lazy,
        ticket: Some(ticket),
    };
    let with_logprobs = params.logprobs.is_some();
    let with_tools = params.tools && kind == Kind::Chat;
    let tool_names = params.tool_names.clone();
    // One reasoning splitter per choice.
    let mut reasoning: Vec<Option<reasoning::ReasoningSplit>> = vec![params.reasoning.clone(); n];
    if state.jobs.send(job).is_err() {
        Metrics::add(&state.metrics.requests_failed, 1);
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the engine has stopped",
        )
        .into_response();
    }
    let created = unix_now();
    let model = state.model_id.clone();

    if !params.stream {
        let mut texts = vec![String::new(); n];
        let mut lps: Vec<Vec<TokenLogprob>> = vec![Vec::new(); n];
        let mut finishes = vec![None; n];
        let (mut prompt_tokens, mut completion_tokens) = (0, 0);
        while let Some((c, ev)) = rx.recv().await {
            match ev {
                Event::Text(t, lp) => {
                    texts[c].push_str(&t);
                    lps[c].extend(lp);
                }
                Event::Failed(m) => {
                    return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", m)
                        .into_response();
                }
                Event::Done {
                    finish,
                    prompt_tokens: p,
                    completion_tokens: g,
                } => {
                    finishes[c] = Some(finish);
                    prompt_tokens = p;
                    completion_tokens += g;
                }
            }
            if finishes.iter().all(Option::is_some) {
                let choices: Vec<serde_json::Value> = (0..n)
                    .map(|c| {
                        let finish = finishes[c].map(|f| f.as_str());
                        let lp = with_logprobs.then(|| logprobs_json(kind, &lps[c], 0));
                        let text = &texts[c];
                        match kind {
                            Kind::Chat => {
                                let mut message = json!({"role": "assistant", "content": text});
                                let mut answer = text.clone();
                                if let Some(split) = &mut reasoning[c] {
                                    let (a, b) = (split.push(text), split.finish());
                                    answer = a.content + &b.content;
                                    let thought = a.reasoning + &b.reasoning;
                                    if !thought.is_empty() {
                                        message["reasoning_content"] = json!(thought);
                                    }
                                }
                                let mut finish = finish;
                                if with_tools {
                                    let (content, calls) = tools::parse_offered(&answer, &tool_names);
                                    if !calls.is_empty() {
                                        answer = content;
                                        message["tool_calls"] = tool_calls_json(&id, c, &calls, false);
                                        finish = Some("tool_calls");
                                    }
                                }
                                message["content"] = if answer.is_empty() && message.get("tool_calls").is_some() {
                                    serde_json::Value::Null
                                } else {
                                    json!(answer)
                                };
                                json!({"index": c, "message": message, "logprobs": lp, "finish_reason": finish})
                            }
                            Kind::Completion => {
                                json!({"index": c, "text": text, "logprobs": lp, "finish_reason": finish})
                            }
                        }
                    })
                    .collect();
                return Json(json!({
                    "id": id,
                    "object": if kind == Kind::Chat { "chat.completion" } else { "text_completion" },
                    "created": created,
                    "model": model,
                    "choices": choices,
                    "usage": usage(prompt_tokens, completion_tokens),
                }))
                .into_response();
            }
        }
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the engine dropped the request",
        )
        .into_response();
    }

    let call_id = id.clone();
    // Streaming: one SSE event per piece of text (of each choice), then each
    // choice's finish, usage (if asked for) and `[DONE]`.
    let chunk = move |choice: serde_json::Value, usage: Option<serde_json::Value>| {
        let mut c = json!({
            "id": id,
            "object": if kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": created,
            "model": model,
            "choices": if choice.is_null() { json!([]) } else { json!([choice]) },
        });
        if let Some(u) = usage {
            c["usage"] = u;
        }
        SseEvent::default().data(c.to_string())
    };
    // Choice `c`'s piece; `lp`: its tokens' log-probabilities, and where its
    // text starts in the choice's whole completion.
    let piece = move |c: usize,
                      text: Option<&str>,
                      finish: Option<&str>,
                      lp: Option<(&[TokenLogprob], usize)>| {
        let lp = match lp {
            Some((lp, offset)) if with_logprobs => logprobs_json(kind, lp, offset),
            _ => serde_json::Value::Null,
        };
        match kind {
            Kind::Chat => json!({
                "index": c,
                "delta": match text { Some(t) => json!({"content": t}), None => json!({}) },
                "logprobs": lp,
                "finish_reason": finish,
            }),
            Kind::Completion => json!({
                "index": c,
                "text": text.unwrap_or(""),
                "logprobs": lp,
                "finish_reason": finish,
            }),
        }
    };
    let include_usage = params.include_usage;
    let mut first: Vec<SseEvent> = Vec::new();
    if kind == Kind::Chat {
        for c in 0..n {
            first.push(chunk(
                json!({"index": c, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}),
                None,
            ));
        }
    }
    // Reasoning text goes out as `delta.reasoning_content`.
    let thought = move |c: usize, r: &str| json!({"index": c, "delta": {"reasoning_content": r}, "logprobs": null, "finish_reason": null});
    struct StreamState {
        offsets: Vec<usize>,
        reasoning: Vec<Option<reasoning::ReasoningSplit>>,
        tools: Vec<Option<tools::ToolStream>>,
        finished: usize,
        prompt_tokens: usize,
        completion_tokens: usize,
    }
    let st = StreamState {
        offsets: vec![0; n],
        reasoning,
        tools: vec![with_tools.then(|| tools::ToolStream::new(tool_names.clone())); n],
        finished: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
    };
    let stream = futures_util::stream::unfold(
        (rx, std::collections::VecDeque::from(first), false, st),
        move |(mut rx, mut pending, mut done, mut st)| {
            let chunk = chunk.clone();
            let call_id = call_id.clone();
            async move {
                loop {
                    if let Some(e) = pending.pop_front() {
                        return Some((Ok::<_, Infallible>(e), (rx, pending, done, st)));
                    }
                    if done {
                        return None;
                    }
                    match rx.recv().await {
                        Some((c, Event::Text(t, lp))) => {
                            let text = match &mut st.reasoning[c] {
                                Some(split) => {
                                    let s = split.push(&t);
                                    if !s.reasoning.is_empty() {
                                        pending.push_back(chunk(thought(c, &s.reasoning), None));
                                    }
                                    s.content
                                }
                                None => t,
                            };
                            let text = match &mut st.tools[c] {
                                Some(calls) => calls.push(&text),
                                None => text,
                            };
                            if !text.is_empty() || !lp.is_empty() {
                                pending.push_back(chunk(
                                    piece(c, Some(&text), None, Some((&lp, st.offsets[c]))),
                                    None,
                                ));
                            }
                            st.offsets[c] += text.len();
                        }
                        Some((
                            c,
                            Event::Done {
                                finish,
                                prompt_tokens,
                                completion_tokens,
                            },
                        )) => {
                            if let Some(split) = &mut st.reasoning[c] {
                                let s = split.finish();
                                if !s.reasoning.is_empty() {
                                    pending.push_back(chunk(thought(c, &s.reasoning), None));
                                }
                                if !s.content.is_empty() {
                                    pending.push_back(chunk(
                                        piece(c, Some(&s.content), None, None),
                                        None,
                                    ));
                                }
                            }
                            let mut finish = finish.as_str();
                            if let Some(calls) = &mut st.tools[c] {
                                let (rest, found) = calls.finish();
                                if !rest.is_empty() {
                                    pending
                                        .push_back(chunk(piece(c, Some(&rest), None, None), None));
                                }
                                if !found.is_empty() {
                                    let delta = json!({
                                        "index": c,
                                        "delta": {"tool_calls": tool_calls_json(&call_id, c, &found, true)},
                                        "logprobs": null,
                                        "finish_reason": null,
                                    });
                                    pending.push_back(chunk(delta, None));
                                    finish = "tool_calls";
                                }
                            }
                            pending.push_back(chunk(piece(c, None, Some(finish), None), None));
                            st.prompt_tokens = prompt_tokens;
                            st.completion_tokens += completion_tokens;
                            st.finished += 1;
                            if st.finished == n {
                                if include_usage {
                                    pending.push_back(chunk(
                                        serde_json::Value::Null,
                                        Some(usage(st.prompt_tokens, st.completion_tokens)),
                                    ));
                                }
                                pending.push_back(SseEvent::default().data("[DONE]"));
                                done = true;
                            }
                        }
                        Some((_, Event::Failed(m))) => {
                            let e =
                                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", m);
                            pending.push_back(SseEvent::default().data(e.body().to_string()));
                            done = true;
                        }
                        None => {
                            let e = ApiError::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "server_error",
                                "the engine dropped the request",
                            );
                            pending.push_back(SseEvent::default().data(e.body().to_string()));
                            done = true;
                        }
                    }
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// OpenAI's `tool_calls` for choice `choice`'s calls; `streamed` adds each
/// call's `index` (the deltas of a stream carry it).
fn tool_calls_json(
    id: &str,
    choice: usize,
    calls: &[tools::ToolCall],
    streamed: bool,
) -> serde_json::Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = json!({
                "id": format!("call_{}_{choice}_{i}", id.trim_start_matches("chatcmpl-")),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            });
            if streamed {
                v["index"] = json!(i);
            }
            v
        })
        .collect()
}

fn usage(prompt: usize, completion: usize) -> serde_json::Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_in_full() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
