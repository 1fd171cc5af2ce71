//! Request and response bodies of every route, and the handlers that turn one into the
//! other through the models' workers.
//!
//! - Per task (transformers pipeline names and output shapes): `POST /ner`, `/classify`,
//!   `/summarize`, `/translate`, `/generate`, each `{"inputs": text or [texts],
//!   "parameters": {…}, "model": name?}`.
//! - text-embeddings-inference: `POST /embed`, `/predict`, `/tokenize`; `GET /info`,
//!   `/health`, `/metrics`.
//! - OpenAI: `GET /v1/models`; `POST /v1/embeddings`, `/v1/completions`,
//!   `/v1/chat/completions` (`stream: true` as server-sent events).

use crate::error::ApiError;
use crate::models::{LoadedModel, Task};
use crate::server::{AppState, Slot};
use crate::worker::{Job, Output, StreamPiece, Work};
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use trident_bert::pipelines::classify::ScoreFunction;
use trident_bert::{Aggregation, ClassifyOptions, NerOptions};
use trident_core::chat::{before_stop, StopFilter};
use trident_core::generation::GenerationConfig;
use trident_core::seq2seq::{SummarizeOptions, TranslateOptions};
use trident_gpt::GenerateOptions;
use utoipa::ToSchema;

/// One text or several.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Inputs {
    /// One text: the response is that text's result.
    One(String),
    /// Several texts: the response is a list, one result per text.
    Many(Vec<String>),
}

impl Inputs {
    fn texts(self) -> (Vec<String>, bool) {
        match self {
            Inputs::One(t) => (vec![t], true),
            Inputs::Many(v) => (v, false),
        }
    }
}

/// The body of the per-task routes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// The text or texts.
    pub inputs: Inputs,
    /// The task's options, named as transformers' pipelines name them.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Option<Value>,
    /// Which loaded model (default: the first model of the route's task).
    #[serde(default)]
    pub model: Option<String>,
}

/// NER options.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NerParameters {
    /// `none`, `simple` (default), `first`, `average` or `max`.
    pub aggregation_strategy: Option<String>,
    /// Tokens shared by consecutive windows of a long text.
    pub stride: Option<usize>,
    /// Labels to leave out (default `["O"]`).
    pub ignore_labels: Option<Vec<String>>,
}

/// Classification options.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifyParameters {
    /// How many labels per text (default 1; `null` or a number ≥ the labels: all).
    pub top_k: Option<usize>,
    /// `softmax`, `sigmoid` or `none` (default: what the config implies).
    pub function_to_apply: Option<String>,
}

/// Generation options accepted by `/summarize`, `/translate` and `/generate`: transformers'
/// `generate` arguments.
const GENERATION_KEYS: &[&str] = &[
    "max_new_tokens",
    "max_length",
    "min_length",
    "min_new_tokens",
    "num_beams",
    "early_stopping",
    "length_penalty",
    "no_repeat_ngram_size",
    "repetition_penalty",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "num_return_sequences",
    "stop_strings",
];

fn parse<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let detail = e.to_string();
        if e.is_syntax() || e.is_eof() {
            ApiError::bad_request(format!("the body is not valid JSON: {detail}"))
        } else {
            ApiError::validation(format!("{what}: {detail}"))
        }
    })
}

/// Split `parameters` into the generation settings and the task's own keys (`own`).
fn generation(
    parameters: Option<Value>,
    own: &[&str],
    state: &AppState,
) -> Result<(GenerationConfig, serde_json::Map<String, Value>), ApiError> {
    let map = match parameters {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "parameters must be an object, not {other}"
            )))
        }
    };
    let (mut gen, mut rest) = (serde_json::Map::new(), serde_json::Map::new());
    for (k, v) in map {
        if GENERATION_KEYS.contains(&k.as_str()) {
            gen.insert(k, v);
        } else if own.contains(&k.as_str()) || k == "seed" {
            rest.insert(k, v);
        } else {
            return Err(ApiError::validation(format!(
                "unknown parameter '{k}' (known: {}, {})",
                own.join(", "),
                GENERATION_KEYS.join(", ")
            )));
        }
    }
    let mut config: GenerationConfig = serde_json::from_value(Value::Object(gen))
        .map_err(|e| ApiError::validation(format!("parameters: {e}")))?;
    if let Some(seed) = rest.remove("seed") {
        config.seed = Some(
            seed.as_u64()
                .ok_or_else(|| ApiError::validation("seed must be a whole number ≥ 0"))?,
        );
    }
    // Values that make no sense are refused even when they would go unused (greedy search
    // ignores the temperature): a client that sends them has a bug worth hearing about.
    if config
        .temperature
        .is_some_and(|t| !(t > 0.0 && t.is_finite()))
    {
        return Err(ApiError::validation("temperature must be a number above 0"));
    }
    if config.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        return Err(ApiError::validation("top_p must be in (0, 1]"));
    }
    if config
        .repetition_penalty
        .is_some_and(|p| !(p > 0.0 && p.is_finite()))
    {
        return Err(ApiError::validation(
            "repetition_penalty must be a number above 0",
        ));
    }
    let limit = state.config.max_new_tokens;
    if config.max_new_tokens.is_some_and(|n| n > limit)
        || config.max_length.is_some_and(|n| n > limit * 4)
    {
        return Err(ApiError::validation(format!(
            "max_new_tokens is limited to {limit} on this server (--max-new-tokens)"
        )));
    }
    config.validate().map_err(ApiError::from_trident)?;
    Ok((config, rest))
}

fn typed<T: DeserializeOwned + Default>(parameters: Option<Value>) -> Result<T, ApiError> {
    match parameters {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => {
            serde_json::from_value(v).map_err(|e| ApiError::validation(format!("parameters: {e}")))
        }
    }
}

impl AppState {
    /// The model called `name`, or the first of `task`; it must serve `task`.
    pub fn model(&self, name: Option<&str>, task: Task) -> Result<Arc<LoadedModel>, ApiError> {
        let models = self.models()?;
        let found = match name {
            Some(n) => models.list.iter().find(|m| m.name == n).ok_or_else(|| {
                ApiError::not_found(format!(
                    "no model named '{n}' (loaded: {})",
                    models
                        .list
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?,
            None => models
                .list
                .iter()
                .find(|m| m.task() == task)
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "no {} model is loaded (start the server with --model NAME=… for one)",
                        task.name()
                    ))
                })?,
        };
        if found.task() != task {
            return Err(ApiError::validation(format!(
                "model '{}' does {}, not {}",
                found.name,
                found.task().name(),
                task.name()
            )));
        }
        Ok(found.clone())
    }

    /// Check the request's inputs against the limits; their token count.
    fn check_inputs(&self, model: &LoadedModel, texts: &[String]) -> Result<usize, ApiError> {
        if texts.is_empty() {
            return Err(ApiError::validation(
                "inputs is empty: give at least one text",
            ));
        }
        let limit = self.config.max_client_batch_size;
        if texts.len() > limit {
            return Err(ApiError::too_large(format!(
                "{} inputs in one request; the limit is {limit} (--max-client-batch-size)",
                texts.len()
            )));
        }
        let mut tokens = 0;
        for (i, t) in texts.iter().enumerate() {
            let n = model
                .tokenizer
                .encode(t)
                .map_err(ApiError::from_trident)?
                .len();
            if n > self.config.max_input_tokens {
                return Err(ApiError::too_large(format!(
                    "input {i} has {n} tokens; the limit is {} (--max-input-tokens)",
                    self.config.max_input_tokens
                )));
            }
            tokens += n;
        }
        metrics::counter!("trident_input_tokens_total", "model" => model.name.clone())
            .increment(tokens as u64);
        Ok(tokens)
    }

    /// Run `work` on `model`'s worker, within the request timeout.
    pub async fn submit(
        &self,
        model: &LoadedModel,
        work: Work,
        tokens: usize,
    ) -> Result<Output, ApiError> {
        let (reply, receive) = oneshot::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let job = Job {
            work,
            reply,
            cancelled: cancelled.clone(),
            tokens,
        };
        let worker = self.worker(&model.name)?;
        worker
            .submit(job)
            .map_err(|e| ApiError::overloaded(format!("{e}: retry shortly")))?;
        let timeout = Duration::from_secs(self.config.request_timeout_s);
        match tokio::time::timeout(timeout, receive).await {
            Ok(Ok(Ok(out))) => Ok(out),
            Ok(Ok(Err(e))) => Err(ApiError::from_trident(e)),
            Ok(Err(_)) => Err(ApiError::internal(
                "the model failed on this request (see the server log)",
            )),
            Err(_) => {
                cancelled.store(true, Ordering::Relaxed);
                Err(ApiError::timeout(format!(
                    "the request took longer than {} s (--request-timeout)",
                    self.config.request_timeout_s
                )))
            }
        }
    }
}

/// One result per text, or the text's result alone for a single text.
fn shape<T: Serialize>(mut results: Vec<T>, single: bool) -> Value {
    if single && results.len() == 1 {
        json!(results.remove(0))
    } else {
        json!(results)
    }
}

/// transformers' text2text shape: one object per text when one sequence is returned.
fn sequences<T: Serialize>(results: Vec<Vec<T>>, single: bool) -> Value {
    let one_each = results.iter().all(|r| r.len() == 1);
    let values: Vec<Value> = results
        .into_iter()
        .map(|mut r| {
            if one_each {
                json!(r.remove(0))
            } else {
                json!(r)
            }
        })
        .collect();
    if single && one_each {
        json!(values)
    } else {
        shape(values, single)
    }
}

/// `POST /ner`: entities of each text, as transformers' token-classification pipeline.
#[utoipa::path(post, path = "/ner", request_body = TaskRequest, responses((status = 200, description = "entities per text", body = Object)))]
pub async fn ner(State(state): State<Arc<AppState>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: TaskRequest = parse(&body, "/ner")?;
    let model = state.model(req.model.as_deref(), Task::Ner)?;
    let p: NerParameters = typed(req.parameters)?;
    let mut options = NerOptions::default();
    if let Some(a) = p.aggregation_strategy {
        options.aggregation = a.parse::<Aggregation>().map_err(ApiError::from_trident)?;
    }
    options.stride = p.stride;
    if let Some(l) = p.ignore_labels {
        options.ignore_labels = l;
    }
    if let crate::models::Pipeline::Ner(pipe) = &model.pipeline {
        pipe.check(&options).map_err(ApiError::from_trident)?;
    }
    let (texts, single) = req.inputs.texts();
    let tokens = state.check_inputs(&model, &texts)?;
    match state
        .submit(&model, Work::Ner(texts, options), tokens)
        .await?
    {
        Output::Ner(v) => Ok(Json(shape(v, single))),
        _ => Err(ApiError::internal("unexpected output")),
    }
}

fn score_function(name: &str) -> Result<ScoreFunction, ApiError> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "softmax" => ScoreFunction::Softmax,
        "sigmoid" => ScoreFunction::Sigmoid,
        "none" => ScoreFunction::None,
        other => {
            return Err(ApiError::validation(format!(
                "function_to_apply '{other}': use softmax, sigmoid or none"
            )))
        }
    })
}

/// `POST /classify`: labels of each text, as transformers' text-classification pipeline.
#[utoipa::path(post, path = "/classify", request_body = TaskRequest, responses((status = 200, description = "labels per text", body = Object)))]
pub async fn classify(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: TaskRequest = parse(&body, "/classify")?;
    let model = state.model(req.model.as_deref(), Task::Classify)?;
    let explicit_all = req
        .parameters
        .as_ref()
        .is_some_and(|p| p.get("top_k") == Some(&Value::Null));
    let p: ClassifyParameters = typed(req.parameters)?;
    if p.top_k == Some(0) {
        return Err(ApiError::validation("top_k must be at least 1"));
    }
    let options = ClassifyOptions {
        top_k: if explicit_all {
            None
        } else {
            p.top_k.or(Some(1))
        },
        function: p
            .function_to_apply
            .as_deref()
            .map(score_function)
            .transpose()?,
        ..Default::default()
    };
    let one_label = options.top_k == Some(1);
    let (texts, single) = req.inputs.texts();
    let tokens = state.check_inputs(&model, &texts)?;
    match state
        .submit(&model, Work::Classify(texts, options), tokens)
        .await?
    {
        // top_k = 1: one {label, score} per text, as transformers.
        Output::Classify(v) if one_label && !single => Ok(Json(json!(v
            .into_iter()
            .map(|mut l| l.remove(0))
            .collect::<Vec<_>>()))),
        Output::Classify(v) => Ok(Json(shape(v, single))),
        _ => Err(ApiError::internal("unexpected output")),
    }
}

/// `POST /summarize`: summaries, as transformers 4.x's summarization pipeline.
#[utoipa::path(post, path = "/summarize", request_body = TaskRequest, responses((status = 200, description = "[{summary_text}]", body = Object)))]
pub async fn summarize(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: TaskRequest = parse(&body, "/summarize")?;
    let model = state.model(req.model.as_deref(), Task::Summarize)?;
    let (generation, _) = generation(req.parameters, &[], &state)?;
    let options = SummarizeOptions {
        generation,
        ..Default::default()
    };
    if let crate::models::Pipeline::Summarize(p) = &model.pipeline {
        p.settings(&options).map_err(ApiError::from_trident)?;
    }
    let (texts, single) = req.inputs.texts();
    let tokens = state.check_inputs(&model, &texts)?;
    match state
        .submit(&model, Work::Summarize(texts, options), tokens)
        .await?
    {
        Output::Summarize(v) => Ok(Json(sequences(v, single))),
        _ => Err(ApiError::internal("unexpected output")),
    }
}

/// `POST /translate`: translations, as transformers 4.x's translation pipeline
/// (`src_lang`/`tgt_lang` in `parameters`).
#[utoipa::path(post, path = "/translate", request_body = TaskRequest, responses((status = 200, description = "[{translation_text}]", body = Object)))]
pub async fn translate(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: TaskRequest = parse(&body, "/translate")?;
    let model = state.model(req.model.as_deref(), Task::Translate)?;
    let (generation, own) = generation(req.parameters, &["src_lang", "tgt_lang"], &state)?;
    let lang = |k: &str| -> Result<Option<String>, ApiError> {
        match own.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(ApiError::validation(format!(
                "{k} must be a language code, not {v}"
            ))),
        }
    };
    let mut options = TranslateOptions::model_pair();
    options.source = lang("src_lang")?;
    options.target = lang("tgt_lang")?;
    options.generation = generation;
    if let crate::models::Pipeline::Translate(p) = &model.pipeline {
        p.settings(&options).map_err(ApiError::from_trident)?;
    }
    let (texts, single) = req.inputs.texts();
    let tokens = state.check_inputs(&model, &texts)?;
    match state
        .submit(&model, Work::Translate(texts, options), tokens)
        .await?
    {
        Output::Translate(v) => Ok(Json(sequences(v, single))),
        _ => Err(ApiError::internal("unexpected output")),
    }
}

fn generate_options(
    model: &LoadedModel,
    generation: GenerationConfig,
    return_full_text: bool,
) -> Result<GenerateOptions, ApiError> {
    let options = GenerateOptions {
        generation,
        return_full_text,
        ..Default::default()
    };
    if let crate::models::Pipeline::Generate(p) = &model.pipeline {
        p.settings(&options).map_err(ApiError::from_trident)?;
    }
    Ok(options)
}

/// `POST /generate`: continuations, as transformers' text-generation pipeline.
#[utoipa::path(post, path = "/generate", request_body = TaskRequest, responses((status = 200, description = "[{generated_text}] per prompt", body = Object)))]
pub async fn generate(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: TaskRequest = parse(&body, "/generate")?;
    let model = state.model(req.model.as_deref(), Task::Generate)?;
    let (generation, own) = generation(req.parameters, &["return_full_text"], &state)?;
    let full = match own.get("return_full_text") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(ApiError::validation(format!(
                "return_full_text must be true or false, not {v}"
            )))
        }
    };
    let options = generate_options(&model, generation, full)?;
    let (texts, single) = req.inputs.texts();
    let tokens = state.check_inputs(&model, &texts)?;
    match state
        .submit(&model, Work::Generate(texts, options, None), tokens)
        .await?
    {
        Output::Generate(v) => Ok(Json(shape(v, single))),
        _ => Err(ApiError::internal("unexpected output")),
    }
}

// ---------------------------------------------------------------------------------------
// text-embeddings-inference
// ---------------------------------------------------------------------------------------

/// `POST /embed` body (text-embeddings-inference).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    /// The text or texts.
    pub inputs: Inputs,
    /// L2-normalize each vector (default true).
    #[serde(default)]
    pub normalize: Option<bool>,
    /// Accepted for compatibility; inputs over the limit are refused (413), not cut.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Which loaded model.
    #[serde(default)]
    pub model: Option<String>,
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

async fn embeddings(
    state: &AppState,
    model: &LoadedModel,
    texts: Vec<String>,
    normalize: bool,
) -> Result<(Vec<Vec<f32>>, usize), ApiError> {
    let tokens = state.check_inputs(model, &texts)?;
    match state.submit(model, Work::Embed(texts), tokens).await? {
        Output::Embed(v) => Ok((
            v.into_iter()
                .map(|e| {
                    if normalize {
                        normalized(e.embedding)
                    } else {
                        e.embedding
                    }
                })
                .collect(),
            tokens,
        )),
        _ => Err(ApiError::internal("unexpected output")),
    }
}

/// `POST /embed`: one vector per text (text-embeddings-inference's shape: always a list).
#[utoipa::path(post, path = "/embed", request_body = EmbedRequest, responses((status = 200, description = "[[float]]", body = Vec<Vec<f32>>)))]
pub async fn embed(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: EmbedRequest = parse(&body, "/embed")?;
    let model = state.model(req.model.as_deref(), Task::Embed)?;
    let (texts, _) = req.inputs.texts();
    let (vectors, _) = embeddings(&state, &model, texts, req.normalize.unwrap_or(true)).await?;
    Ok(Json(json!(vectors)))
}

/// `POST /predict` body (text-embeddings-inference).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// The text or texts.
    pub inputs: Inputs,
    /// Logits instead of probabilities.
    #[serde(default)]
    pub raw_scores: bool,
    /// Accepted for compatibility; inputs over the limit are refused (413).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Which loaded model.
    #[serde(default)]
    pub model: Option<String>,
}

/// `POST /predict`: every label with its score, best first (text-embeddings-inference).
#[utoipa::path(post, path = "/predict", request_body = PredictRequest, responses((status = 200, description = "[{label, score}] per text", body = Object)))]
pub async fn predict(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: PredictRequest = parse(&body, "/predict")?;
    let model = state.model(req.model.as_deref(), Task::Classify)?;
    let options = ClassifyOptions {
        top_k: None,
        function: req.raw_scores.then_some(ScoreFunction::None),
        ..Default::default()
    };
    let (texts, single) = req.inputs.texts();
    let tokens = state.check_inputs(&model, &texts)?;
    match state
        .submit(&model, Work::Classify(texts, options), tokens)
        .await?
    {
        Output::Classify(v) => Ok(Json(shape(v, single))),
        _ => Err(ApiError::internal("unexpected output")),
    }
}

/// `POST /tokenize` body (text-embeddings-inference).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    /// The text or texts.
    pub inputs: Inputs,
    /// Include the special tokens (default true).
    #[serde(default)]
    pub add_special_tokens: Option<bool>,
    /// Which loaded model.
    #[serde(default)]
    pub model: Option<String>,
}

/// One token as text-embeddings-inference's `/tokenize` returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SimpleToken {
    /// Its id.
    pub id: i64,
    /// The text it covers (the token string for special tokens).
    pub text: String,
    /// Whether it is a special token.
    pub special: bool,
    /// Character offset where it starts (none for special tokens).
    pub start: Option<usize>,
    /// Character offset where it ends.
    pub stop: Option<usize>,
}

/// `POST /tokenize`: the tokens of each text with their character spans.
#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest, responses((status = 200, description = "[[token]] per text", body = Vec<Vec<SimpleToken>>)))]
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: TokenizeRequest = parse(&body, "/tokenize")?;
    let models = state.models()?;
    let model = match req.model.as_deref() {
        Some(_) => {
            let any = req.model.as_deref();
            models
                .list
                .iter()
                .find(|m| Some(m.name.as_str()) == any)
                .cloned()
                .ok_or_else(|| {
                    ApiError::not_found(format!("no model named '{}'", any.unwrap_or("")))
                })?
        }
        None => models.list[0].clone(),
    };
    let (texts, _) = req.inputs.texts();
    if texts.is_empty() {
        return Err(ApiError::validation(
            "inputs is empty: give at least one text",
        ));
    }
    let special = req.add_special_tokens.unwrap_or(true);
    let mut out = Vec::with_capacity(texts.len());
    for text in &texts {
        let e = if special {
            model.tokenizer.encode(text)
        } else {
            model.tokenizer.encode_plain(text)
        }
        .map_err(ApiError::from_trident)?;
        let chars: Vec<char> = text.chars().collect();
        let tokens: Vec<SimpleToken> = (0..e.len())
            .map(|i| {
                let (s, t) = e.offsets[i];
                SimpleToken {
                    id: e.ids[i],
                    text: if e.special[i] {
                        e.tokens[i].clone()
                    } else {
                        chars[s.min(chars.len())..t.min(chars.len())]
                            .iter()
                            .collect()
                    },
                    special: e.special[i],
                    start: (!e.special[i]).then_some(s),
                    stop: (!e.special[i]).then_some(t),
                }
            })
            .collect();
        out.push(tokens);
    }
    Ok(Json(json!(out)))
}

/// `GET /info`: the served model (text-embeddings-inference's fields; the first model, or
/// every model under `models`).
#[utoipa::path(get, path = "/info", responses((status = 200, description = "model and limits", body = Object)))]
pub async fn info(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let models = state.models()?;
    let describe = |m: &LoadedModel| {
        let model_type = match m.task() {
            Task::Embed => json!({"embedding": {"pooling": "mean"}}),
            Task::Classify | Task::Ner => {
                json!({"classifier": {"id2label": m.labels.iter().enumerate().map(|(i, l)| (i.to_string(), json!(l))).collect::<serde_json::Map<_, _>>()}})
            }
            _ => json!({"generative": {}}),
        };
        json!({
            "model_id": m.source,
            "name": m.name,
            "task": m.task(),
            "model_sha": null,
            "model_dtype": m.dtype,
            "model_type": model_type,
            "max_input_length": m.max_input_length,
        })
    };
    let first = &models.list[0];
    let mut body = describe(first);
    let c = &state.config;
    let extra = json!({
        "max_concurrent_requests": c.max_concurrent_requests,
        "max_batch_tokens": c.max_batch_tokens,
        "max_batch_requests": c.max_batch_requests,
        "max_client_batch_size": c.max_client_batch_size,
        "max_input_tokens": c.max_input_tokens,
        "tokenization_workers": 1,
        "version": env!("CARGO_PKG_VERSION"),
        "models": models.list.iter().map(|m| describe(m)).collect::<Vec<_>>(),
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    Ok(Json(body))
}

// ---------------------------------------------------------------------------------------
// OpenAI
// ---------------------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `GET /v1/models`.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, description = "the loaded models", body = Object)))]
pub async fn v1_models(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let models = state.models().map_err(ApiError::openai)?;
    let data: Vec<Value> = models
        .list
        .iter()
        .map(|m| json!({"id": m.name, "object": "model", "created": state.started_unix, "owned_by": "trident", "task": m.task(), "source": m.source}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `POST /v1/embeddings` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct OpenAiEmbeddingsRequest {
    /// Text or texts.
    pub input: Inputs,
    /// Which loaded model (default: the first embedding model).
    #[serde(default)]
    pub model: Option<String>,
    /// `float` (the default: a list of numbers) or `base64` (the little-endian f32 bytes,
    /// base64-encoded: what OpenAI's Python client asks for unless told otherwise).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Accepted, not used.
    #[serde(default)]
    pub user: Option<String>,
}

/// OpenAI's `encoding_format: "base64"`: the vector's f32 values as little-endian bytes, in
/// standard base64 (the client decodes them with `numpy.frombuffer(..., dtype="float32")`).
fn base64_f32(v: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `POST /v1/embeddings`.
#[utoipa::path(post, path = "/v1/embeddings", request_body = OpenAiEmbeddingsRequest, responses((status = 200, description = "OpenAI's embedding list", body = Object)))]
pub async fn v1_embeddings(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let go = async {
        let req: OpenAiEmbeddingsRequest = parse(&body, "/v1/embeddings")?;
        let base64 = match req.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::validation(format!(
                    "encoding_format: \"{other}\" is not one of \"float\", \"base64\""
                )))
            }
        };
        let model = state.model(req.model.as_deref(), Task::Embed)?;
        let (texts, _) = req.input.texts();
        let (vectors, tokens) = embeddings(&state, &model, texts, false).await?;
        let data: Vec<Value> = vectors
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let embedding = if base64 {
                    json!(base64_f32(&v))
                } else {
                    json!(v)
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        Ok(Json(json!({
            "object": "list",
            "data": data,
            "model": model.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })))
    };
    go.await.map_err(ApiError::openai)
}

/// The OpenAI sampling fields shared by completions and chat completions.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Sampling {
    /// Most new tokens (default 16 for completions, the server's limit for chat).
    #[serde(default, alias = "max_completion_tokens")]
    pub max_tokens: Option<usize>,
    /// 0 is greedy; otherwise sampling at this temperature (default 1).
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass (default 1).
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Completions per prompt.
    #[serde(default)]
    pub n: Option<usize>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Stop strings.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub stop: Option<Value>,
    /// Seed of the sampler.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Accepted, not used.
    #[serde(default)]
    pub user: Option<String>,
    /// Accepted when 0; other penalties are not supported.
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    /// Accepted when 0; other penalties are not supported.
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
}

impl Sampling {
    fn config(&self, default_max: usize, limit: usize) -> Result<GenerationConfig, ApiError> {
        let max = self.max_tokens.unwrap_or(default_max);
        if max == 0 || max > limit {
            return Err(ApiError::validation(format!(
                "max_tokens must be between 1 and {limit} on this server"
            )));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if v.is_some_and(|v| v != 0.0) {
                return Err(ApiError::validation(format!(
                    "{name} is not supported (leave it 0)"
                )));
            }
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::validation("temperature must be between 0 and 2"));
        }
        let stop =
            match &self.stop {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(vec![s.clone()]),
                Some(v) => Some(serde_json::from_value::<Vec<String>>(v.clone()).map_err(
                    |_| ApiError::validation("stop must be a string or a list of strings"),
                )?),
            };
        let n = self.n.unwrap_or(1);
        if n == 0 || n > 16 {
            return Err(ApiError::validation("n must be between 1 and 16"));
        }
        let sample = temperature > 0.0;
        let config = GenerationConfig {
            max_new_tokens: Some(max),
            do_sample: Some(sample),
            temperature: sample.then_some(temperature),
            top_p: self.top_p.filter(|_| sample),
            top_k: sample.then_some(0),
            num_return_sequences: Some(n),
            stop_strings: stop,
            seed: self.seed,
            ..Default::default()
        };
        if n > 1 && !sample {
            return Err(ApiError::validation(
                "n > 1 needs sampling (temperature > 0)",
            ));
        }
        config.validate().map_err(ApiError::from_trident)?;
        Ok(config)
    }
}

/// `POST /v1/completions` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// Which loaded model (default: the first text-generation model).
    #[serde(default)]
    pub model: Option<String>,
    /// The prompt or prompts.
    pub prompt: Inputs,
    /// Sampling settings.
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Return the prompt before the completion.
    #[serde(default)]
    pub echo: bool,
}

/// One message of a chat.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Its text.
    pub content: String,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// Which loaded model (default: the first text-generation model).
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Sampling settings.
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// The prompt of a chat: the model's chat template when it has one, else the messages as
/// `role: content` lines followed by `assistant:`.
fn chat_prompt(model: &LoadedModel, messages: &[Message]) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::validation("messages is empty"));
    }
    if let Some(template) = &model.chat_template {
        // One BOS: the template's goes when the tokenizer adds its own (Llama 3).
        return template
            .prompt(messages, &model.tokenizer)
            .map_err(|e| ApiError::validation(e.to_string()));
    }
    let mut prompt = String::new();
    for m in messages {
        prompt.push_str(&format!("{}: {}\n", m.role, m.content));
    }
    prompt.push_str("assistant:");
    Ok(prompt)
}

fn finish_reason(generated: usize, max: usize) -> &'static str {
    if generated >= max {
        "length"
    } else {
        "stop"
    }
}

/// `POST /v1/completions`.
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest, responses((status = 200, description = "OpenAI's text completion, or server-sent events", body = Object)))]
pub async fn v1_completions(
    State(state): State<Arc<AppState>>,
    slot: Option<Extension<Slot>>,
    body: Bytes,
) -> Response {
    let go = async {
        let req: CompletionRequest = parse(&body, "/v1/completions")?;
        let model = state.model(req.model.as_deref(), Task::Generate)?;
        let config = req.sampling.config(16, state.config.max_new_tokens)?;
        let (prompts, _) = req.prompt.texts();
        let request = Completion {
            stream: req.sampling.stream,
            echo: req.echo,
            chat: false,
            slot: slot.map(|Extension(s)| s),
        };
        complete(&state, model, prompts, config, request).await
    };
    go.await.unwrap_or_else(|e| e.openai().into_response())
}

/// `POST /v1/chat/completions`.
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatRequest, responses((status = 200, description = "OpenAI's chat completion, or server-sent events", body = Object)))]
pub async fn v1_chat(
    State(state): State<Arc<AppState>>,
    slot: Option<Extension<Slot>>,
    body: Bytes,
) -> Response {
    let go = async {
        let req: ChatRequest = parse(&body, "/v1/chat/completions")?;
        let model = state.model(req.model.as_deref(), Task::Generate)?;
        let limit = state.config.max_new_tokens;
        let config = req.sampling.config(limit.min(256), limit)?;
        let prompt = chat_prompt(&model, &req.messages)?;
        let request = Completion {
            stream: req.sampling.stream,
            echo: false,
            chat: true,
            slot: slot.map(|Extension(s)| s),
        };
        complete(&state, model, vec![prompt], config, request).await
    };
    go.await.unwrap_or_else(|e| e.openai().into_response())
}

/// How a completion is answered.
struct Completion {
    stream: bool,
    echo: bool,
    chat: bool,
    /// The request's concurrency slot, kept by a stream until it ends.
    slot: Option<Slot>,
}

/// Run a completion (or chat) request, whole or streamed.
async fn complete(
    state: &Arc<AppState>,
    model: Arc<LoadedModel>,
    prompts: Vec<String>,
    config: GenerationConfig,
    request: Completion,
) -> Result<Response, ApiError> {
    let Completion {
        stream,
        echo,
        chat,
        slot,
    } = request;
    let stops: Vec<String> = config.stop_strings.clone().unwrap_or_default();
    let max = config.max_new_tokens.unwrap_or(16);
    let options = generate_options(&model, config, echo)?;
    let tokens = state.check_inputs(&model, &prompts)?;
    let id = format!("{}-{:x}", if chat { "chatcmpl" } else { "cmpl" }, rand_id());
    let created = now();
    let name = model.name.clone();
    let per_prompt = options.generation.num_return_sequences();
    if !stream {
        let out = match state
            .submit(
                &model,
                Work::Generate(prompts.clone(), options, None),
                tokens,
            )
            .await?
        {
            Output::Generate(v) => v,
            _ => return Err(ApiError::internal("unexpected output")),
        };
        let mut choices = Vec::new();
        let mut completion_tokens = 0;
        for (p, texts) in out.into_iter().enumerate() {
            for (s, g) in texts.into_iter().enumerate() {
                completion_tokens += g.generated_tokens;
                let index = p * per_prompt + s;
                let from = if echo { prompts[p].len() } else { 0 };
                let text = before_stop(&g.generated_text, from, &stops);
                let reason = if text.len() < g.generated_text.len() {
                    "stop"
                } else {
                    finish_reason(g.generated_tokens, max)
                };
                choices.push(if chat {
                    json!({"index": index, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": reason})
                } else {
                    json!({"index": index, "text": text, "logprobs": null, "finish_reason": reason})
                });
            }
        }
        let object = if chat {
            "chat.completion"
        } else {
            "text_completion"
        };
        return Ok(Json(json!({
            "id": id, "object": object, "created": created, "model": name, "choices": choices,
            "usage": {"prompt_tokens": tokens, "completion_tokens": completion_tokens, "total_tokens": tokens + completion_tokens},
        }))
        .into_response());
    }
    // Streaming: the worker sends pieces as they are produced; the final event carries the
    // finish reasons, then `[DONE]`. Dropping the stream (client gone) stops the generation.
    let (send, receive) = mpsc::unbounded_channel::<StreamPiece>();
    let (reply, result) = oneshot::channel();
    let cancelled = Arc::new(AtomicBool::new(false));
    let job = Job {
        work: Work::Generate(prompts, options, Some(send)),
        reply,
        cancelled: cancelled.clone(),
        tokens,
    };
    state
        .worker(&model.name)?
        .submit(job)
        .map_err(|e| ApiError::overloaded(format!("{e}: retry shortly")))?;
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |index: usize,
                      text: Option<&str>,
                      reason: Option<&str>,
                      first: bool|
          -> Event {
        let choice = if chat {
            let mut delta = serde_json::Map::new();
            if first {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": reason})
        } else {
            json!({"index": index, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": reason})
        };
        Event::default().data(json!({"id": id, "object": object, "created": created, "model": name, "choices": [choice]}).to_string())
    };
    let timeout = Duration::from_secs(state.config.request_timeout_s);
    let pieces = tokio_stream::wrappers::UnboundedReceiverStream::new(receive);
    let mut started = std::collections::HashSet::new();
    let filters = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        usize,
        StopFilter,
    >::new()));
    let (piece_filters, piece_stops) = (filters.clone(), stops.clone());
    let chunk_piece = chunk.clone();
    let body = pieces
        .filter_map(move |p| {
            let index = p.input * per_prompt + p.sequence;
            let text = piece_filters
                .lock()
                .map(|mut f| f.entry(index).or_default().push(&p.text, &piece_stops))
                .unwrap_or_default();
            let event = (!text.is_empty()).then(|| {
                let first = started.insert(index);
                chunk_piece(index, Some(&text), None, first)
            });
            futures::future::ready(event)
        })
        .chain(futures::stream::once(async move {
            // The stream's slot among the concurrent requests is freed when it ends.
            let _slot = slot.and_then(|s| s.take());
            let reasons: Vec<Event> = match tokio::time::timeout(timeout, result).await {
                Ok(Ok(Ok(Output::Generate(v)))) => {
                    let mut filters = filters.lock().map(|mut f| std::mem::take(&mut *f)).unwrap_or_default();
                    let mut events = Vec::new();
                    for (p, seqs) in v.iter().enumerate() {
                        for (s, g) in seqs.iter().enumerate() {
                            let index = p * per_prompt + s;
                            let filter = filters.entry(index).or_default();
                            // Text held back for a stop string that never came goes out now.
                            let rest = filter.flush();
                            if !rest.is_empty() {
                                events.push(chunk(index, Some(&rest), None, false));
                            }
                            let reason = if filter.stopped() { "stop" } else { finish_reason(g.generated_tokens, max) };
                            events.push(chunk(index, None, Some(reason), false));
                        }
                    }
                    events
                }
                Ok(Ok(Err(e))) => vec![Event::default().data(json!({"error": {"message": e.to_string(), "type": "backend"}}).to_string())],
                _ => {
                    cancelled.store(true, Ordering::Relaxed);
                    vec![Event::default().data(json!({"error": {"message": "the generation did not finish in time", "type": "timeout"}}).to_string())]
                }
            };
            futures::stream::iter(reasons.into_iter().chain([Event::default().data("[DONE]")]))
        }).flatten())
        .map(Ok::<_, std::convert::Infallible>);
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
