//! The HTTP API on one port: OpenAI-compatible routes under `/v1`, Ollama-compatible routes
//! under `/api`, `/health` and `/metrics`.
//!
//! Every model request takes the same path: API key → body within the size limit → valid JSON
//! naming a library model → a slot from admission control → the model's running engine → the
//! request forwarded to llama-server and its answer relayed back as it arrives.

mod error;
mod ollama;
mod openai;
mod relay;

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hellas_model::gguf::ModelKind;
use serde::de::DeserializeOwned;
use serde_json::json;

pub use error::ApiError;

use crate::admission::{AdmissionError, Permit};
use crate::app::AppState;
use crate::engine::{EngineLease, EngineStatus};
use crate::library::ModelEntry;

/// The API key a request was made with (its public id).
#[derive(Clone)]
pub struct ClientKey(pub String);

pub fn router(state: Arc<AppState>) -> Router {
    let models = Router::new()
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/rerank", post(openai::rerank))
        .route("/v1/responses", post(openai::responses))
        .route("/v1/messages", post(openai::messages))
        .route("/v1/messages/count_tokens", post(openai::count_tokens))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/ps", get(ollama::ps))
        .route("/api/version", get(ollama::version))
        .route("/api/pull", post(ollama::pull))
        .route("/api/copy", post(ollama::copy))
        .route("/api/delete", axum::routing::delete(ollama::delete))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings))
        .route("/v1/hellas/bench", post(bench))
        .route("/v1/hellas/drain", get(drain_status).post(drain))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    let metrics = Router::new().route("/metrics", get(metrics)).route_layer(middleware::from_fn_with_state(state.clone(), metrics_access));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(metrics)
        .merge(models)
        .fallback(not_found)
        .layer(middleware::from_fn(cors))
        .with_state(state)
}

/// Browsers may call the API from other origins (the setup's "try it" box, web chat clients):
/// it authenticates with bearer keys, never cookies, so allowing any origin exposes nothing.
async fn cors(request: Request, next: Next) -> Response {
    let mut response = if request.method() == axum::http::Method::OPTIONS {
        let mut preflight = StatusCode::NO_CONTENT.into_response();
        let headers = preflight.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, header::HeaderValue::from_static("GET, POST, OPTIONS"));
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, header::HeaderValue::from_static("authorization, content-type"));
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, header::HeaderValue::from_static("600"));
        preflight
    } else {
        next.run(request).await
    };
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, header::HeaderValue::from_static("*"));
    response
}

/// Liveness, and nothing about the box: it answers anyone, also before the claim.
async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `/metrics` names the models and what they are asked: it needs an API key, like the models,
/// unless the caller's address is in `api.metrics_open_to`.
async fn metrics_access(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if peer(&request).is_some_and(|ip| state.config.api.metrics_open_to.iter().any(|net| net.contains(&ip))) {
        return next.run(request).await;
    }
    require_key(State(state), request, next).await
}

/// The address a request came from.
fn peer(request: &Request) -> Option<std::net::IpAddr> {
    request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, crate::metrics::Metrics::CONTENT_TYPE)], state.metrics_text().await).into_response()
}

/// Whether this box takes new work, for a load balancer's health check: 200 `ready`, or 503
/// `draining` (with Retry-After) until what it runs is done, then 503 `drained`. Like
/// `/health` it answers anyone and tells nothing about the models.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let drain = state.drain_status();
    if drain.status == "ready" {
        return Json(drain).into_response();
    }
    let retry_after = state.config.api.retry_after_secs.to_string();
    (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, retry_after)], Json(drain)).into_response()
}

/// `GET /v1/hellas/drain`: `/ready`'s answer, always 200.
async fn drain_status(State(state): State<Arc<AppState>>) -> Json<crate::app::DrainStatus> {
    Json(state.drain_status())
}

#[derive(serde::Deserialize)]
struct DrainRequest {
    drain: bool,
}

/// `POST /v1/hellas/drain {"drain": true|false}`: starts or ends draining. Only from this box
/// itself (`hellasd drain`, or a fleet tool over SSH), so a client holding an API key cannot
/// take the box out of service.
async fn drain(State(state): State<Arc<AppState>>, request: Request) -> Result<Json<crate::app::DrainStatus>, ApiError> {
    if !peer(&request).is_some_and(|ip| ip.is_loopback()) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "local_only", "draining is started and ended on the box itself: run `hellasd drain` there (e.g. over SSH)"));
    }
    let (_, request): (_, DrainRequest) = read_json(&state, request.into_body()).await?;
    state.admission.set_draining(request.drain);
    Ok(Json(state.drain_status()))
}

#[derive(serde::Deserialize)]
struct BenchRequest {
    model: String,
}

/// `POST /v1/hellas/bench`: measures a model's prefill and decode speed on this box (loading it
/// if needed), keeps the report for the dashboard, and answers it.
async fn bench(State(state): State<Arc<AppState>>, body: Body) -> Result<Json<crate::engine::bench::BenchReport>, ApiError> {
    let (_, request): (_, BenchRequest) = read_json(&state, body).await?;
    Ok(Json(state.bench(&request.model.to_ascii_lowercase()).await?))
}

async fn not_found(request: Request) -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route for {} {}", request.method(), request.uri().path()))
        .into_response()
}

async fn require_key(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let refuse = |e: ApiError| e.for_path(&path);
    match state.owner.is_claimed() {
        Ok(true) => {}
        Ok(false) => {
            return refuse(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_set_up",
                "this box is not set up yet: claim it at http://hellas.local/ (or run `hellasd set-password` as root), then create an API key",
            ))
        }
        Err(e) => return refuse(internal(e)),
    }
    // OpenAI's and Ollama's clients send `Authorization: Bearer`, Anthropic's `x-api-key`.
    let headers = request.headers();
    let bearer = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let token = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok())).map(str::trim);
    let Some(token) = token else {
        return refuse(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing API key: send the header 'Authorization: Bearer <key>' (or 'x-api-key: <key>')",
        ));
    };
    match state.keys.verify(token) {
        Ok(Some(key)) => {
            request.extensions_mut().insert(ClientKey(key.id));
            next.run(request).await
        }
        Ok(None) => refuse(ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", "invalid or revoked API key")),
        Err(e) => refuse(internal(e)),
    }
}

fn internal(e: anyhow::Error) -> ApiError {
    tracing::error!("{e:#}");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", format!("{e:#}"))
}

/// Reads a JSON body of at most `api.max_body_bytes`, returning its bytes and the fields the
/// daemon needs from it.
async fn read_json<T: DeserializeOwned>(state: &AppState, body: Body) -> Result<(Bytes, T), ApiError> {
    let limit = state.config.api.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", format!("request body is larger than {limit} bytes"))
    })?;
    let parsed = serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    Ok((bytes, parsed))
}

/// A request admitted, its engine running and llama-server's answer starting to arrive.
pub struct Dispatched {
    pub model: String,
    pub lease: EngineLease,
    pub permit: Permit,
    pub upstream: reqwest::Response,
    pub started: Instant,
}

impl AppState {
    /// Refuses what the model's kind cannot answer (embeddings or reranking from a chat model,
    /// chat from an embedding model or a reranker, one of those two asked for the other's work)
    /// with what to use instead, rather than the engine's bare 501 or 500.
    fn check_kind(&self, entry: &ModelEntry, path: &str) -> Result<(), ApiError> {
        let kind = |entry: &ModelEntry| self.supervisor.model_info(entry).map_or(ModelKind::Generative, |info| info.kind);
        let wanted = match path {
            "/v1/embeddings" => ModelKind::Embedding,
            "/v1/rerank" => ModelKind::Reranker,
            _ => ModelKind::Generative,
        };
        let is = kind(entry);
        if is == wanted {
            return Ok(());
        }
        let (code, refusal, example) = match wanted {
            ModelKind::Generative => {
                let ask = match is {
                    ModelKind::Reranker => "a reranker: ask it through /v1/rerank",
                    _ => "an embedding model: ask it through /v1/embeddings (Ollama: /api/embed)",
                };
                return Err(ApiError::bad_request(format!("model '{}' is {ask}", entry.name)));
            }
            ModelKind::Embedding => ("model_not_embedding", "makes no embeddings", "an embedding GGUF"),
            ModelKind::Reranker => ("model_not_reranker", "does not rerank", "a reranker GGUF (rank pooling, e.g. bge-reranker-v2-m3)"),
        };
        let what = match is {
            ModelKind::Generative => "it generates text",
            ModelKind::Embedding => "it is an embedding model",
            ModelKind::Reranker => "it is a reranker",
        };
        let models: Vec<String> = self.library.list().unwrap_or_default().into_iter().filter(|e| kind(e) == wanted).map(|e| e.name).collect();
        let instead = match models.as_slice() {
            [] => format!("there is none in the library: pull one, e.g. `hellasd models pull hf.co/ORG/REPO:QUANT` of {example}"),
            models => format!("use {}", models.join(" or ")),
        };
        Err(ApiError::new(StatusCode::BAD_REQUEST, code, format!("model '{}' {refusal} ({what}); {instead}", entry.name)))
    }

    /// Admits a request for `model` and sends `body` to `path` on its engine.
    async fn dispatch(&self, key: &ClientKey, model: &str, path: &str, body: Bytes, started: Instant) -> Result<Dispatched, ApiError> {
        crate::library::validate_name(&model.to_ascii_lowercase()).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
        let entry = self.library.get(model).map_err(internal)?.ok_or_else(|| {
            let available: Vec<String> = self.library.list().unwrap_or_default().into_iter().map(|e| e.name).collect();
            ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!("model '{model}' is not in the library (available: {})", available.join(", ")),
            )
            .with_details(json!({ "available": available }))
        })?;
        self.check_kind(&entry, path)?;
        let admitted = self.admission.acquire(&entry.name, self.config.engine.parallel as usize, &key.0).await;
        let retry_after = std::time::Duration::from_secs(self.config.api.retry_after_secs);
        let permit = admitted.map_err(|refused| match refused {
            AdmissionError::QueueFull { waiting } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                format!("model '{}' is busy: {waiting} requests are already waiting", entry.name),
            )
            .with_retry_after(retry_after),
            AdmissionError::Draining => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "this box is draining (finishing what it runs, taking nothing new): send the request to another box, or retry later",
            )
            .with_retry_after(retry_after),
        })?;
        let lease = self.supervisor.acquire(&entry.name).await?;
        let url = format!("{}{path}", lease.base_url());
        let send = || self.http.post(&url).header(header::CONTENT_TYPE, "application/json").body(body.clone()).send();
        let mut sent = send().await;
        // A request that never reached the engine (refused, or its connection reset before it
        // was written) is safe to send again once; one the engine may have started on is not.
        if sent.as_ref().is_err_and(|e| e.is_connect() || (e.is_request() && !e.is_timeout())) && lease.status() == EngineStatus::Ready {
            sent = send().await;
        }
        let upstream = match sent {
            Ok(upstream) => upstream,
            Err(e) => {
                if lease.plan.split.is_some() {
                    if let Some(degraded) = self.supervisor.check_split(&lease.model, &lease.plan).await {
                        return Err(degraded.into());
                    }
                }
                let message = relay::engine_failure(&lease, &format!("did not answer: {e}")).await;
                return Err(ApiError::new(StatusCode::BAD_GATEWAY, "engine_error", message));
            }
        };
        Ok(Dispatched { model: entry.name, lease, permit, upstream, started })
    }
}
