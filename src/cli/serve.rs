//! `trident serve`: load each model once and serve every task over HTTP (crates/serve).
//!
//! This side knows the model families: it reads each checkpoint's config.json to pick the
//! task (unless the spec names it), loads the pipeline, and hands the loaded models to the
//! server, which answers `/health` with 503 until they are all in.

use super::common::{at_least_one, choices};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use trident_bert::{Embedder, TextClassifier, TokenClassifier};
use trident_core::config::{read_json, CommonConfig};
use trident_core::{
    ChatTemplate, DeviceChoice, Dtype, HubOptions, LoadOptions, ModelFiles, TextEncoder,
};
use trident_serve::{AppState, LoadedModel, ModelSpec, Pipeline, ServeConfig, Task};

/// Options of `trident serve`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  trident serve --model ner=dslim/bert-base-NER --model sentiment=distilbert/distilbert-base-uncased-finetuned-sst-2-english --model gen=gpt2 --port 8080
  trident serve --model embed=weights/all-MiniLM-L6-v2 --api-key \"$KEY\" --json-log
  trident serve --config serve.toml            # the same fields as the flags, [[models]] tables for models
  curl -s localhost:8080/ner -d '{\"inputs\": \"Angela Merkel visited Paris.\"}'

Routes: /ner /classify /embed /summarize /translate /generate; text-embeddings-inference's /embed /predict
/tokenize /info /health /metrics; OpenAI's /v1/models /v1/embeddings /v1/completions /v1/chat/completions;
the OpenAPI document at /openapi.json and a page at /docs. Environment: TRIDENT_HOST, TRIDENT_PORT,
TRIDENT_MODELS (comma-separated specs), TRIDENT_API_KEY, TRIDENT_MAX_* as the flags. Without --model: the
CLI's default models (ner, classify, embed, summarize, translate with t5-small, generate).")]
pub struct ServeArgs {
    /// A model to serve: NAME=DIR|HUB_ID (e.g. ner=dslim/bert-base-NER), or NAME:TASK=… to
    /// set the task (ner, classify, embed, summarize, translate, generate) instead of reading
    /// it from the checkpoint. Repeat for several models.
    #[arg(short, long, value_name = "NAME=MODEL")]
    model: Vec<String>,
    /// A TOML file with any of these settings (flags win over it, the environment too).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    host: Option<String>,
    /// Port (0: any free port, printed at start).
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    /// Most tokens in one encoder batch (default 2048): requests that wait together are
    /// packed up to it; it bounds the memory a batch's activations take.
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    max_batch_tokens: Option<u64>,
    /// Most requests in one batch.
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    max_batch_requests: Option<u64>,
    /// Requests in flight at once; more get 429 with Retry-After.
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    max_concurrent_requests: Option<u64>,
    /// Longest input in tokens (longer: 413).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    max_input_tokens: Option<u64>,
    /// Most inputs in one request (more: 413).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    max_client_batch_size: Option<u64>,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, value_name = "BYTES", value_parser = at_least_one)]
    max_payload_bytes: Option<u64>,
    /// Most new tokens a generation request may ask for.
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    max_new_tokens: Option<u64>,
    /// Seconds before a request is answered 504 (its generation stops).
    #[arg(long, value_name = "SECONDS", value_parser = at_least_one)]
    request_timeout: Option<u64>,
    /// Require `Authorization: Bearer KEY` on every route but /health, /metrics and /docs.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Access log as JSON lines on stderr.
    #[arg(long)]
    json_log: bool,
    /// Where to run: auto (CUDA when present, else CPU), cpu, cuda or mps.
    #[arg(long, default_value = "auto", value_name = "DEVICE", ignore_case = true, value_parser = choices::<DeviceChoice>(&[("auto", &[]), ("cpu", &[]), ("cuda", &["gpu"]), ("mps", &[])]))]
    device: DeviceChoice,
    /// Numeric format of every model: f32, bf16 or int8.
    #[arg(long, default_value = "f32", value_name = "DTYPE", ignore_case = true, value_parser = choices::<Dtype>(&[("f32", &["float32", "float"]), ("bf16", &["bfloat16"]), ("int8", &["qint8"])]))]
    dtype: Dtype,
}

/// The models served without `--model`: the CLI's defaults, one per task.
fn default_models() -> Vec<ModelSpec> {
    [
        ("ner", super::encoders::NER_MODEL),
        ("classify", super::encoders::CLASSIFY_MODEL),
        ("embed", super::encoders::EMBED_MODEL),
        ("summarize", super::summarize::SUMMARIZE_MODEL),
        ("translate", "t5-small"),
        ("generate", super::generate::GPT_MODEL),
    ]
    .into_iter()
    .map(|(name, source)| ModelSpec {
        name: name.into(),
        source: source.into(),
        task: Some(name.into()),
    })
    .collect()
}

fn settings(args: &ServeArgs) -> anyhow::Result<ServeConfig> {
    let mut config = match &args.config {
        Some(path) => ServeConfig::from_toml(path).map_err(anyhow::Error::msg)?,
        None => ServeConfig::default(),
    };
    config
        .apply_env(|k| std::env::var(k).ok())
        .map_err(anyhow::Error::msg)?;
    if !args.model.is_empty() {
        config.models = args
            .model
            .iter()
            .map(|s| ModelSpec::parse(s))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
    }
    if config.models.is_empty() {
        config.models = default_models();
    }
    if let Some(h) = &args.host {
        config.host = h.clone();
    }
    if let Some(p) = args.port {
        config.port = p;
    }
    let sizes = [
        (args.max_batch_tokens, &mut config.max_batch_tokens),
        (args.max_batch_requests, &mut config.max_batch_requests),
        (
            args.max_concurrent_requests,
            &mut config.max_concurrent_requests,
        ),
        (args.max_input_tokens, &mut config.max_input_tokens),
        (
            args.max_client_batch_size,
            &mut config.max_client_batch_size,
        ),
        (args.max_payload_bytes, &mut config.max_payload_bytes),
        (args.max_new_tokens, &mut config.max_new_tokens),
    ];
    for (flag, field) in sizes {
        if let Some(v) = flag {
            *field = v as usize;
        }
    }
    if let Some(t) = args.request_timeout {
        config.request_timeout_s = t;
    }
    if args.api_key.is_some() {
        config.api_key = args.api_key.clone();
    }
    config.json_log |= args.json_log;
    for m in &config.models {
        if let Some(t) = &m.task {
            if Task::parse(t).is_none() {
                anyhow::bail!(
                    "model '{}': unknown task '{t}' (ner, classify, embed, summarize, translate, generate)",
                    m.name
                );
            }
        }
    }
    config.validate().map_err(anyhow::Error::msg)?;
    Ok(config)
}

/// The task of a checkpoint: the spec's, else the name's when it is a task name and the
/// checkpoint could do several (T5), else what config.json says.
fn task_of(spec: &ModelSpec, files: &ModelFiles) -> anyhow::Result<Task> {
    if let Some(t) = spec.task.as_deref().and_then(Task::parse) {
        return Ok(t);
    }
    let config: CommonConfig = read_json(&files.get("config.json")?)?;
    let arch = config.architectures.join(" ");
    let by_name = Task::parse(&spec.name);
    Ok(match config.model_type.as_str() {
        _ if arch.contains("ForTokenClassification") => Task::Ner,
        _ if arch.contains("ForSequenceClassification") => Task::Classify,
        "marian" | "m2m_100" => Task::Translate,
        "t5" | "mt5" | "bart" => match by_name {
            Some(Task::Translate) => Task::Translate,
            _ => Task::Summarize,
        },
        t if trident::seq2seq::CAUSAL_MODEL_TYPES.contains(&t) => Task::Generate,
        "bert" | "distilbert" | "roberta" | "mpnet" | "xlm-roberta" => Task::Embed,
        other => anyhow::bail!(
            "model '{}': cannot tell the task of model_type '{other}' ({arch}); name it: {}:TASK={}",
            spec.name,
            spec.name,
            spec.source
        ),
    })
}

/// Load one model for the server.
fn load(spec: &ModelSpec, options: &LoadOptions) -> anyhow::Result<LoadedModel> {
    let files = ModelFiles::resolve(&spec.source, HubOptions::from_env())?;
    let task = task_of(spec, &files)?;
    let pipeline = match task {
        Task::Ner => Pipeline::Ner(TokenClassifier::from_pretrained(&files, options)?),
        Task::Classify => Pipeline::Classify(TextClassifier::from_pretrained(&files, options)?),
        Task::Embed => Pipeline::Embed(Embedder::from_pretrained(&files, options)?),
        Task::Summarize => Pipeline::Summarize(trident::summarizer(&files, options)?),
        Task::Translate => Pipeline::Translate(trident::translator(&files, options)?),
        Task::Generate => Pipeline::Generate(trident::generator(&files, options)?),
    };
    let tokenizer = TextEncoder::from_files(&files)?;
    let labels = match &pipeline {
        Pipeline::Classify(p) => p.labels().to_vec(),
        Pipeline::Ner(_) => {
            let path = files.get("config.json")?;
            read_json::<CommonConfig>(&path)?.labels(&path)?
        }
        _ => Vec::new(),
    };
    // A generation model's chat template (/v1/chat/completions); one that does not compile is
    // a load error naming its file.
    let chat_template = match task {
        Task::Generate => ChatTemplate::find(&files)?,
        _ => None,
    };
    Ok(LoadedModel {
        name: spec.name.clone(),
        source: spec.source.clone(),
        dtype: options.dtype.to_string(),
        max_input_length: tokenizer.model_max_length,
        pipeline,
        tokenizer,
        labels,
        chat_template,
    })
}

/// Run `trident serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Printed here rather than returned: these messages name settings by their TOML and
    // environment names, which the CLI's error printer would turn into flags.
    let config = match settings(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let options = LoadOptions {
        device: args.device,
        dtype: args.dtype,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let address = format!("{}:{}", config.host, config.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
        let local = listener.local_addr()?;
        let specs = config.models.clone();
        let state = AppState::new(config);
        eprintln!(
            "trident serve: listening on http://{local} (loading {} model{}; /health says when ready)",
            specs.len(),
            if specs.len() == 1 { "" } else { "s" }
        );
        // Load on a blocking thread while the server already answers /health (503).
        let loading = state.clone();
        let (failed, on_failure) = tokio::sync::oneshot::channel::<()>();
        tokio::task::spawn_blocking(move || {
            let loaded: anyhow::Result<Vec<LoadedModel>> = specs
                .iter()
                .map(|s| {
                    let m = load(s, &options).map_err(|e| anyhow::anyhow!("model '{}' ({}): {e}", s.name, s.source))?;
                    eprintln!("trident serve: {} ready ({}, {})", s.name, m.task().name(), s.source);
                    Ok(m)
                })
                .collect();
            let loaded = loaded.and_then(|models| {
                loading
                    .set_models(models)
                    .map_err(|e| anyhow::anyhow!("cannot start a model's worker thread: {e}"))
            });
            match loaded {
                Ok(()) => {}
                Err(e) => {
                    eprintln!("trident serve: {e}");
                    loading.set_load_error(e.to_string());
                    let _ = failed.send(());
                }
            }
        });
        let failure = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = failure.clone();
        let shutdown = async move {
            tokio::select! {
                _ = trident_serve::shutdown_signal() => {
                    eprintln!("trident serve: shutting down (finishing the requests in flight)");
                }
                Ok(()) = on_failure => {
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        };
        trident_serve::serve(state, listener, shutdown).await?;
        Ok(if failure.load(std::sync::atomic::Ordering::Relaxed) {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    })
}
