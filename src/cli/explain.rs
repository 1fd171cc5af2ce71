//! `trident explain TASK --model M "text"`: one self-contained HTML page (or JSON, or a
//! terminal summary) showing what the model does with the text, step by step.

use super::common::{choices, ModelArgs};
use anyhow::Context;
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use trident::explain::{self, ExplainOptions, Task};
use trident_bert::Aggregation;
use trident_core::{DeviceChoice, Dtype};

/// What `trident explain` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainFormat {
    /// One self-contained HTML page (no network needed to view it).
    Html,
    /// The same data as JSON.
    Json,
    /// A plain-terminal summary: the tokens, the stacks, the output (top-k per step).
    Text,
}

/// Options of `trident explain`.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The task: ner, classify, embed, summarize, translate or generate.
    #[arg(value_name = "TASK")]
    task: String,

    /// The text to explain.
    #[arg(value_name = "TEXT")]
    text: String,

    /// A local directory or a Hugging Face Hub id; the task command's default when omitted
    /// (translate needs one).
    #[arg(short, long, value_name = "DIR|HUB_ID")]
    model: Option<String>,

    /// Write to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// html (one page with the maps), json (the same data) or text (a terminal summary).
    #[arg(short, long, value_enum, default_value = "html")]
    format: ExplainFormat,

    /// Cut the text after this many tokens (the maps grow with its square; a 512-token page
    /// is still usable).
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_tokens: usize,

    /// Tokens to generate (summarize, translate, generate).
    #[arg(long, default_value_t = 20, value_name = "N")]
    max_new_tokens: usize,

    /// Candidates shown per generation step.
    #[arg(long, default_value_t = 5, value_name = "K")]
    top_k: usize,

    /// Source language (translate), as for `trident translate`.
    #[arg(long, value_name = "LANG")]
    from: Option<String>,

    /// Target language (translate), as for `trident translate`.
    #[arg(long, value_name = "LANG")]
    to: Option<String>,

    /// NER's aggregation strategy: none, simple, first, average or max.
    #[arg(long, default_value = "simple", value_name = "STRATEGY", ignore_case = true, value_parser = choices::<Aggregation>(&[("none", &[]), ("simple", &[]), ("first", &[]), ("average", &[]), ("max", &[])]))]
    aggregation: Aggregation,

    /// Where to run: auto, cpu, cuda or mps.
    #[arg(long, default_value = "auto", value_name = "DEVICE", ignore_case = true, value_parser = choices::<DeviceChoice>(&[("auto", &[]), ("cpu", &[]), ("cuda", &["gpu"]), ("mps", &[])]))]
    device: DeviceChoice,

    /// Numeric format: f32, bf16 or int8.
    #[arg(long, default_value = "f32", value_name = "DTYPE", ignore_case = true, value_parser = choices::<Dtype>(&[("f32", &["float32", "float"]), ("bf16", &["bfloat16"]), ("int8", &["qint8"])]))]
    dtype: Dtype,
}

/// The model a task uses without `--model`: the task command's default.
fn default_model(task: Task) -> anyhow::Result<&'static str> {
    Ok(match task {
        Task::Ner => super::encoders::NER_MODEL,
        Task::Classify => super::encoders::CLASSIFY_MODEL,
        Task::Embed => super::encoders::EMBED_MODEL,
        Task::Summarize => super::summarize::SUMMARIZE_MODEL,
        Task::Generate => super::generate::GPT_MODEL,
        Task::Translate => anyhow::bail!(
            "explain translate needs --model (e.g. Helsinki-NLP/opus-mt-fr-en, or t5-small with --to de)"
        ),
    })
}

/// Run `trident explain`.
pub fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let task: Task = args.task.parse()?;
    anyhow::ensure!(
        !args.text.trim().is_empty(),
        "the text is empty: there is nothing to explain"
    );
    anyhow::ensure!(args.max_tokens >= 2, "--max-tokens must be at least 2");
    anyhow::ensure!(args.top_k >= 1, "--top-k must be at least 1");
    let model = ModelArgs {
        model: args.model.clone(),
        device: args.device,
        dtype: args.dtype,
        batch_size: 1,
    };
    let default = match &args.model {
        Some(_) => "",
        None => default_model(task)?,
    };
    let files = model.files(default)?;
    let options = ExplainOptions {
        load: model.load_options(),
        max_tokens: args.max_tokens,
        max_new_tokens: args.max_new_tokens,
        top_k: args.top_k,
        source: args.from,
        target: args.to,
        aggregation: args.aggregation,
    };
    let explanation = explain::explain(task, &files, &args.text, &options)
        .map_err(|e| anyhow::anyhow!(super::with_flags(&e.to_string())))?;
    if explanation.truncated {
        super::report::warn(format!(
            "the text was cut after {} tokens (--max-tokens)",
            args.max_tokens
        ));
    }
    let rendered = match args.format {
        ExplainFormat::Html => explain::html(&explanation)?,
        ExplainFormat::Json => {
            let mut s = serde_json::to_string(&explanation)?;
            s.push('\n');
            s
        }
        ExplainFormat::Text => explain::text(&explanation),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, rendered)
                .with_context(|| format!("cannot write {}", path.display()))?;
            if !super::report::quiet() {
                eprintln!("wrote {}", path.display());
            }
        }
        None => std::io::stdout().write_all(rendered.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}
