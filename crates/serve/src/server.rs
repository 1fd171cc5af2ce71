//! The server: shared state, the router with its middleware (access log and metrics, API
//! key, the concurrency limit, draining), readiness while the models load, and graceful
//! shutdown.

use crate::api;
use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::models::LoadedModel;
use crate::worker::{self, Limits, WorkerHandle};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use utoipa::OpenApi;

/// The models once loaded, with their workers.
pub struct Models {
    /// In the order they were given.
    pub list: Vec<Arc<LoadedModel>>,
    workers: HashMap<String, WorkerHandle>,
}

/// What every handler shares.
pub struct AppState {
    /// The settings.
    pub config: ServeConfig,
    models: OnceLock<Models>,
    load_error: OnceLock<String>,
    draining: AtomicBool,
    in_flight: Arc<Semaphore>,
    /// When the server started (Unix seconds).
    pub started_unix: u64,
    metrics: PrometheusHandle,
}

impl AppState {
    /// A server state without models yet (they arrive with [`AppState::set_models`]).
    pub fn new(config: ServeConfig) -> Arc<Self> {
        let in_flight = Arc::new(Semaphore::new(config.max_concurrent_requests));
        Arc::new(AppState {
            config,
            models: OnceLock::new(),
            load_error: OnceLock::new(),
            draining: AtomicBool::new(false),
            in_flight,
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            metrics: prometheus(),
        })
    }

    /// Install the loaded models and start one worker each: the server is ready. An error
    /// (the OS refused a thread) leaves it unready, with the reason.
    pub fn set_models(&self, list: Vec<LoadedModel>) -> std::io::Result<()> {
        let limits = Limits {
            max_batch_requests: self.config.max_batch_requests,
            max_batch_tokens: self.config.max_batch_tokens,
        };
        let list: Vec<Arc<LoadedModel>> = list.into_iter().map(Arc::new).collect();
        let capacity = self.config.max_concurrent_requests;
        let workers = list
            .iter()
            .map(|m| Ok((m.name.clone(), worker::spawn(m.clone(), limits, capacity)?)))
            .collect::<std::io::Result<_>>()?;
        let _ = self.models.set(Models { list, workers });
        Ok(())
    }

    /// Record that loading failed: `/health` says so.
    pub fn set_load_error(&self, message: String) {
        let _ = self.load_error.set(message);
    }

    /// The models, or 503 while they load.
    pub fn models(&self) -> Result<&Models, ApiError> {
        match (self.models.get(), self.load_error.get()) {
            (Some(m), _) if !m.list.is_empty() => Ok(m),
            (_, Some(e)) => Err(ApiError::unavailable(format!(
                "the models failed to load: {e}"
            ))),
            _ => Err(ApiError::unavailable("the models are still loading")),
        }
    }

    pub(crate) fn worker(&self, name: &str) -> Result<&WorkerHandle, ApiError> {
        self.models()?
            .workers
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no model named '{name}'")))
    }

    /// Stop taking requests: new ones get 503 while those in flight finish.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// The process's Prometheus recorder (installed once; every server in the process shares it).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .expect("fixed buckets are valid");
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (an embedding program's): ours still renders.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// The OpenAPI document of every route.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Trident",
        description = "Every Trident task over HTTP: per-task routes, text-embeddings-inference and OpenAI compatible routes."
    ),
    paths(
        api::ner,
        api::classify,
        api::summarize,
        api::translate,
        api::generate,
        api::embed,
        api::predict,
        api::tokenize,
        api::info,
        health,
        metrics_route,
        api::v1_models,
        api::v1_embeddings,
        api::v1_completions,
        api::v1_chat
    ),
    components(schemas(
        api::Inputs,
        api::TaskRequest,
        api::NerParameters,
        api::ClassifyParameters,
        api::EmbedRequest,
        api::PredictRequest,
        api::TokenizeRequest,
        api::SimpleToken,
        api::OpenAiEmbeddingsRequest,
        api::CompletionRequest,
        api::ChatRequest,
        api::Message,
        api::Sampling
    ))
)]
pub struct ApiDoc;

/// `GET /health`: 200 once every model is loaded, 503 before (and while draining).
#[utoipa::path(get, path = "/health", responses((status = 200, description = "ready"), (status = 503, description = "loading, failed or draining")))]
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        return ApiError::unavailable("shutting down").into_response();
    }
    match state.models() {
        Ok(m) => Json(
            json!({"status": "ok", "models": m.list.iter().map(|m| &m.name).collect::<Vec<_>>()}),
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus metrics", content_type = "text/plain")))]
pub async fn metrics_route(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// `GET /docs`: the routes and their bodies, as one self-contained page.
async fn docs() -> Html<String> {
    let doc = ApiDoc::openapi();
    let mut html = String::from(
        "<!doctype html><meta charset=utf-8><title>Trident API</title>\
         <style>body{font:15px/1.5 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}\
         code,pre{background:#f4f4f4;padding:.1em .3em}pre{padding:.6em;overflow:auto}\
         h2{border-top:1px solid #ddd;padding-top:.6em}</style>\
         <h1>Trident API</h1><p>The OpenAPI document is at <a href=/openapi.json>/openapi.json</a>.</p>",
    );
    for (path, item) in &doc.paths.paths {
        let ops = [("GET", &item.get), ("POST", &item.post)];
        for (method, op) in ops {
            let Some(op) = op else { continue };
            html.push_str(&format!("<h2><code>{method} {}</code></h2>", escape(path)));
            if let Some(d) = &op.description {
                html.push_str(&format!("<p>{}</p>", escape(d)));
            } else if let Some(s) = &op.summary {
                html.push_str(&format!("<p>{}</p>", escape(s)));
            }
            if let Some(body) = &op.request_body {
                let text = serde_json::to_string_pretty(body).unwrap_or_default();
                html.push_str(&format!("<p>Request body:</p><pre>{}</pre>", escape(&text)));
            }
        }
    }
    let schemas = doc
        .components
        .as_ref()
        .map(|c| serde_json::to_string_pretty(&c.schemas).unwrap_or_default())
        .unwrap_or_default();
    html.push_str(&format!("<h2>Schemas</h2><pre>{}</pre>", escape(&schemas)));
    Html(html)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Access log, request metrics, draining and the concurrency limit.
async fn gatekeeper(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let path = request.uri().path().to_string();
    let open = matches!(
        route.as_str(),
        "/health" | "/metrics" | "/docs" | "/openapi.json"
    );
    let openai = path.starts_with("/v1/");
    let shaped = |e: ApiError| if openai { e.openai() } else { e }.into_response();
    let response = if state.draining.load(Ordering::Relaxed) && !open {
        refuse(
            request,
            shaped(ApiError::unavailable("the server is shutting down")),
        )
        .await
    } else if let Some(rejection) = (!open).then(|| authorize(&state, &request)).flatten() {
        refuse(request, shaped(rejection)).await
    } else if open {
        next.run(request).await
    } else {
        match state.in_flight.clone().try_acquire_owned() {
            Ok(permit) => {
                // A streaming response takes the slot with it and frees it when the stream
                // ends; otherwise it is freed here, once the response is complete.
                let slot = Slot::default();
                if let Ok(mut s) = slot.0.lock() {
                    *s = Some(permit);
                }
                let mut request = request;
                request.extensions_mut().insert(slot.clone());
                next.run(request).await
            }
            Err(_) => {
                let refusal = shaped(ApiError::overloaded(format!(
                    "more than {} requests in flight (--max-concurrent-requests): retry shortly",
                    state.config.max_concurrent_requests
                )));
                refuse(request, refusal).await
            }
        }
    };
    let status = response.status();
    let seconds = started.elapsed().as_secs_f64();
    metrics::counter!("trident_requests_total", "route" => route.clone(), "status" => status.as_u16().to_string()).increment(1);
    metrics::histogram!("trident_request_duration_seconds", "route" => route.clone())
        .record(seconds);
    if state.config.json_log {
        eprintln!(
            "{}",
            json!({"ts": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
                   "method": method.as_str(), "path": path, "route": route, "status": status.as_u16(),
                   "latency_ms": (seconds * 1e6).round() / 1e3})
        );
    } else {
        tracing::info!(target: "trident::access", "{method} {path} {} {:.1} ms", status.as_u16(), seconds * 1e3);
    }
    response
}

/// Bytes of a refused request's body read before its refusal is sent.
const REFUSED_BODY_LIMIT: usize = 1 << 20;

/// `refusal` for `request`, sent after reading the request's body (up to
/// [`REFUSED_BODY_LIMIT`], for at most a second). A response sent while the client is still
/// sending makes the server close a connection with unread bytes, which resets it, and the
/// client may then see the reset instead of the 429 (seen in `tests/serve.rs` under load as
/// "Unexpected EOF"). Reading a small body costs nothing next to serving it.
async fn refuse(request: Request, refusal: Response) -> Response {
    let body = axum::body::to_bytes(request.into_body(), REFUSED_BODY_LIMIT);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), body).await;
    refusal
}

/// A request's place among the `--max-concurrent-requests`: freed when the last holder
/// drops it (the middleware after a whole response, or a stream when it ends).
#[derive(Clone, Default)]
pub struct Slot(Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl Slot {
    /// Take the permit out (a streaming handler keeps it for the stream's life).
    pub fn take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }
}

fn authorize(state: &AppState, request: &Request) -> Option<ApiError> {
    let key = state.config.api_key.as_ref()?;
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant time: the comparison does not reveal how much of the key was right.
    let equal: bool = given.as_bytes().ct_eq(key.as_bytes()).into();
    (!equal).then(ApiError::unauthorized)
}

async fn not_found(request: Request) -> ApiError {
    let e = ApiError::not_found(format!(
        "no route {} {}: see /docs for the routes",
        request.method(),
        request.uri().path()
    ));
    if request.uri().path().starts_with("/v1/") {
        e.openai()
    } else {
        e
    }
}

async fn method_not_allowed(request: Request) -> ApiError {
    let e = ApiError::method_not_allowed(format!(
        "{} {} is not allowed: see /docs for the routes and their methods",
        request.method(),
        request.uri().path()
    ));
    if request.uri().path().starts_with("/v1/") {
        e.openai()
    } else {
        e
    }
}

/// Bodies larger than the limit are refused before they are read whole.
async fn body_limit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let limit = state.config.max_payload_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return ApiError::too_large(format!(
            "the body is {} bytes; the limit is {limit} (--max-payload-bytes)",
            declared.unwrap_or(0)
        ))
        .into_response();
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE
        && response.headers().get(header::CONTENT_TYPE)
            != Some(&HeaderValue::from_static("application/json"))
    {
        // A body without Content-Length that outgrew the limit while being read.
        return ApiError::too_large(format!(
            "the body is larger than the limit of {limit} bytes (--max-payload-bytes)"
        ))
        .into_response();
    }
    response
}

/// The router of every route.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_payload_bytes;
    Router::new()
        .route("/ner", post(api::ner))
        .route("/classify", post(api::classify))
        .route("/summarize", post(api::summarize))
        .route("/translate", post(api::translate))
        .route("/generate", post(api::generate))
        .route("/embed", post(api::embed))
        .route("/predict", post(api::predict))
        .route("/tokenize", post(api::tokenize))
        .route("/info", get(api::info))
        .route("/health", get(health))
        .route("/metrics", get(metrics_route))
        .route("/v1/models", get(api::v1_models))
        .route("/v1/embeddings", post(api::v1_embeddings))
        .route("/v1/completions", post(api::v1_completions))
        .route("/v1/chat/completions", post(api::v1_chat))
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), gatekeeper))
        .layer(middleware::from_fn_with_state(state.clone(), body_limit))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serve `state` on `listener` until `shutdown` resolves; then stop taking requests (503),
/// let those in flight finish, and return.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let drain_state = state.clone();
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            drain_state.drain();
        })
        .await
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
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
}
