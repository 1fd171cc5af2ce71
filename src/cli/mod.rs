//! Subcommands of the `trident` binary.

mod chat;
mod common;
mod doctor;
mod encoders;
mod explain;
mod generate;
mod generation_args;
pub mod io;
pub mod report;
mod serve;
mod summarize;
mod train;
mod translate;

pub use common::with_flags;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Run transformer models from Hugging Face checkpoints, on CPU or GPU, with no Python:
/// classification and sentiment, named entities (ner), sentence embeddings (embed),
/// summarization, translation and text generation; `doctor` checks the installation and
/// `completions` prints shell completions.
///
/// Models are given with --model as a local directory (config.json, model.safetensors,
/// tokenizer.json) or a Hugging Face Hub id (e.g. dslim/bert-base-NER), fetched into the
/// standard HF cache ($HF_HOME/hub). Set HF_HUB_OFFLINE=1 to use only what is cached.
#[derive(Parser, Debug)]
#[command(name = "trident", version, about, long_about)]
pub struct Cli {
    /// Number of CPU threads for libtorch and for Trident's own kernels (default: all cores).
    #[arg(short = 't', long, global = true, value_name = "N")]
    threads: Option<i32>,

    /// Say nothing on stderr but errors: no summary line, no warnings.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    /// Print every warning as it happens (by default repeated warnings are summarised once,
    /// with a count, at the end).
    #[arg(short, long, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Classify texts (sentiment and the like): the best label and its score per text.
    #[command(visible_alias = "sentiment", after_help = default_model(encoders::CLASSIFY_MODEL))]
    Classify(encoders::ClassifyArgs),
    /// Named-entity recognition: people, organisations, places… with character offsets.
    #[command(after_help = default_model(encoders::NER_MODEL))]
    Ner(encoders::NerArgs),
    /// Sentence embeddings (mean-pooled, normalised), one vector per text.
    #[command(after_help = default_model(encoders::EMBED_MODEL))]
    Embed(encoders::EmbedArgs),
    /// Summarize documents (BART, T5): long documents are split at sentence boundaries, not cut.
    #[command(after_help = default_model(summarize::SUMMARIZE_MODEL))]
    Summarize(summarize::SummarizeArgs),
    /// Translate documents (OPUS-MT, NLLB, M2M100, T5), e.g. `translate --from fr --to en "Le chat dort."`.
    #[command(after_help = translate::DEFAULT_MODEL_HELP)]
    Translate(translate::TranslateArgs),
    /// Continue a prompt (GPT-2, Llama, Mistral, Qwen2, BLOOM), streaming the text as it is
    /// generated.
    #[command(after_help = default_model(generate::GPT_MODEL))]
    Generate(generate::GenerateArgs),
    /// Chat with an instruction-tuned model (SmolLM2, Qwen2.5, Llama 3…) in the terminal,
    /// through its chat template, with the answer streamed as it is generated.
    Chat(chat::ChatArgs),
    /// Show what the model does with one text, step by step: tokens, embeddings and positions,
    /// attention per layer and head, the residual stream, and the output, as one
    /// self-contained HTML page (or JSON, or a terminal summary).
    Explain(explain::ExplainArgs),
    /// Serve every task over HTTP: per-task routes, text-embeddings-inference's and OpenAI's
    /// APIs, with batching of concurrent requests.
    Serve(serve::ServeArgs),
    /// Fine-tune a BERT, DistilBERT or RoBERTa checkpoint on your labelled data
    /// (`train classify`, `train ner`) into a checkpoint the other commands use.
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// Check the installation: libtorch version, threads, CPU kernels, CUDA/MPS, model
    /// cache, hub access.
    Doctor(doctor::DoctorArgs),
    /// Print shell completions, e.g. `trident completions bash > ~/.local/share/bash-completion/completions/trident`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The line `--help` ends with: the model a command uses without `--model`.
fn default_model(model: &str) -> String {
    format!("Default model (without --model): {model}")
}

/// Run the chosen subcommand; the exit code says whether everything succeeded.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    report::set_verbosity(match (cli.quiet, cli.verbose) {
        (true, _) => 0,
        (_, true) => 2,
        _ => 1,
    });
    if let Some(n) = cli.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        trident_core::set_threads(n as usize).map_err(|e| anyhow::anyhow!("--threads: {e}"))?;
    }
    // A mistyped TRIDENT_KERNELS is refused here rather than silently measured.
    trident_core::nn::kernels::Policy::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    match cli.command {
        Command::Classify(args) => encoders::classify(args),
        Command::Ner(args) => encoders::ner(args),
        Command::Embed(args) => encoders::embed(args),
        Command::Summarize(args) => summarize::run(args),
        Command::Translate(args) => translate::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Train(command) => train::run(command),
        Command::Doctor(args) => doctor::run(args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "trident", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}
