//! `trident train classify` and `trident train ner`: fine-tune a BERT, DistilBERT or RoBERTa
//! checkpoint on labelled data into a Hugging Face checkpoint that `trident classify` /
//! `trident ner` (and transformers) load directly.

use super::common::choices;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use trident_bert::train::{label_order, TrainableModel};
use trident_bert::EncoderConfig;
use trident_core::train::data::{self, Example, LabelledText, TagScheme, TaggedSentence};
use trident_core::train::{
    train, EpochReport, EvalScores, Hooks, StepReport, TaskKind, TrainConfig, TrainData,
};
use trident_core::{DeviceChoice, HubOptions, ModelFiles, TextEncoder};

/// The two tasks.
#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// Text classification (sentiment and the like) from CSV/TSV or JSON Lines with a text and
    /// a label column.
    Classify(ClassifyArgs),
    /// Named-entity recognition from CoNLL files (a word and its tag per line, a blank line
    /// between sentences) or JSON Lines with `tokens` and `tags` lists.
    Ner(NerArgs),
}

/// Options of `trident train classify`.
#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// The column (CSV header, JSON field) holding the text.
    #[arg(long, default_value = "text", value_name = "NAME")]
    text_column: String,
    /// The column holding the label (any string: `positive`, `3 stars`, …).
    #[arg(long, default_value = "label", value_name = "NAME")]
    label_column: String,
    #[command(flatten)]
    common: CommonArgs,
}

/// Options of `trident train ner`.
#[derive(Args, Debug)]
pub struct NerArgs {
    /// How the tags are written: iob2 (B- starts every entity), iob1 (B- only between two
    /// entities of one type) or bioes (also E- and S-). The model is trained on IOB2 tags,
    /// which the NER pipelines group.
    #[arg(long, default_value = "iob2", value_name = "SCHEME", ignore_case = true, value_parser = choices::<Scheme>(&[("iob2", &["bio"]), ("iob1", &[]), ("bioes", &["iobes"])]))]
    tag_scheme: Scheme,
    /// JSON Lines: the field holding the words.
    #[arg(long, default_value = "tokens", value_name = "NAME")]
    tokens_column: String,
    /// JSON Lines: the field holding the tags.
    #[arg(long, default_value = "tags", value_name = "NAME")]
    tags_column: String,
    #[command(flatten)]
    common: CommonArgs,
}

/// `--tag-scheme` (clap's `choices` wants `Default` and `FromStr`).
#[derive(Debug, Clone, Copy, Default)]
struct Scheme(TagScheme);

impl std::str::FromStr for Scheme {
    type Err = trident_core::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Scheme)
    }
}

/// What both tasks take.
#[derive(Args, Debug)]
struct CommonArgs {
    /// The base checkpoint: a local directory or a Hugging Face Hub id (BERT, DistilBERT,
    /// RoBERTa; a bare encoder such as all-MiniLM-L6-v2 or an existing classifier).
    #[arg(short, long, value_name = "DIR|HUB_ID")]
    model: String,
    /// The training data.
    #[arg(long, value_name = "FILE")]
    train: PathBuf,
    /// Evaluation data, scored after every epoch (the best epoch is kept).
    #[arg(long, value_name = "FILE", conflicts_with = "eval_split")]
    eval: Option<PathBuf>,
    /// Hold out this share of the training data (chosen by --seed) for evaluation instead.
    /// Without --eval or --eval-split nothing is evaluated and the last epoch is kept.
    #[arg(long, value_name = "RATIO")]
    eval_split: Option<f64>,
    /// Where the trained checkpoint goes (config.json, model.safetensors, tokenizer files,
    /// train_results.json); a new or empty directory unless --resume.
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// Continue the interrupted run whose checkpoint is in --output (same options): it ends
    /// with what the uninterrupted run would have given.
    #[arg(long)]
    resume: bool,
    /// Passes over the training data.
    #[arg(long, default_value_t = 3, value_name = "N")]
    epochs: u64,
    /// The peak learning rate (AdamW).
    #[arg(long, default_value_t = 5e-5, value_name = "LR")]
    learning_rate: f64,
    /// Examples per optimizer step.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = super::common::at_least_one)]
    batch_size: u64,
    /// Longest input in tokens (longer ones are cut; the model's own limit applies too).
    #[arg(long, default_value_t = 128, value_name = "N", value_parser = super::common::at_least_one)]
    max_length: u64,
    /// Share of the steps over which the learning rate warms up linearly from 0 (then it
    /// decays linearly to 0).
    #[arg(long, default_value_t = 0.0, value_name = "RATIO")]
    warmup_ratio: f64,
    /// AdamW's decoupled weight decay (never on biases and LayerNorm weights).
    #[arg(long, default_value_t = 0.0, value_name = "W")]
    weight_decay: f64,
    /// Seeds the data order, the held-out split, dropout and new head weights.
    #[arg(long, default_value_t = 42, value_name = "N")]
    seed: u64,
    /// Save a checkpoint for --resume every N steps (and after every epoch).
    #[arg(long, default_value_t = 500, value_name = "N", value_parser = super::common::at_least_one)]
    save_steps: u64,
    /// Where to train: auto (CUDA when present, else CPU), cpu, cuda or mps.
    #[arg(long, default_value = "auto", value_name = "DEVICE", ignore_case = true, value_parser = choices::<DeviceChoice>(&[("auto", &[]), ("cpu", &[]), ("cuda", &["gpu"]), ("mps", &[])]))]
    device: DeviceChoice,
    /// Stop after N steps in all, as if killed right after a checkpoint (for tests of --resume).
    #[arg(long, hide = true, value_name = "N")]
    stop_after_steps: Option<u64>,
}

/// API names in library messages and the flags that set them here.
const FLAGS: &[(&str, &str)] = &[
    ("text_column", "--text-column"),
    ("label_column", "--label-column"),
    ("tokens_column", "--tokens-column"),
    ("tags_column", "--tags-column"),
    ("eval_split", "--eval-split"),
    ("learning_rate", "--learning-rate"),
    ("warmup_ratio", "--warmup-ratio"),
    ("weight_decay", "--weight-decay"),
    ("save_steps", "--save-steps"),
    ("epochs", "--epochs"),
    ("set the tag scheme to bioes", "pass --tag-scheme bioes"),
    ("resume it", "continue it with --resume"),
    ("resume: ", "--resume: "),
];

/// A library error with its API names replaced by this command's flags.
fn flagged(e: trident_core::Error) -> anyhow::Error {
    let mut message = e.to_string();
    for (name, flag) in FLAGS {
        message = message.replace(name, flag);
    }
    anyhow::anyhow!(message)
}

/// Run `trident train …`.
pub fn run(command: TrainCommand) -> anyhow::Result<ExitCode> {
    match command {
        TrainCommand::Classify(args) => {
            let read = |p: &Path| {
                data::read_labelled_texts(p, &args.text_column, &args.label_column).map_err(flagged)
            };
            let common = &args.common;
            let (train_set, eval_set) = split(read(&common.train)?, common, read)?;
            let setup = Setup::new(common, TaskKind::Classification)?;
            let labels = label_order(
                &setup.files,
                TaskKind::Classification,
                data::class_labels(&train_set),
            )
            .map_err(flagged)?;
            let encode = |set: &[LabelledText]| {
                data::encode_labelled_texts(&setup.tokenizer, set, &labels, setup.max_length)
                    .map_err(flagged)
            };
            let (train, eval) = (encode(&train_set)?, encode(&eval_set)?);
            let fingerprint = json!({
                "text_column": args.text_column,
                "label_column": args.label_column,
            });
            setup.run(common, labels, train, eval, fingerprint)
        }
        TrainCommand::Ner(args) => {
            let read = |p: &Path| {
                data::read_tagged_sentences(
                    p,
                    &args.tokens_column,
                    &args.tags_column,
                    args.tag_scheme.0,
                )
                .map_err(flagged)
            };
            let common = &args.common;
            let (train_set, eval_set) = split(read(&common.train)?, common, read)?;
            let setup = Setup::new(common, TaskKind::TokenClassification)?;
            let labels = label_order(
                &setup.files,
                TaskKind::TokenClassification,
                data::tag_labels(&train_set),
            )
            .map_err(flagged)?;
            let encode = |set: &[TaggedSentence]| {
                data::encode_tagged_sentences(&setup.tokenizer, set, &labels, setup.max_length)
                    .map_err(flagged)
            };
            let (train, eval) = (encode(&train_set)?, encode(&eval_set)?);
            let fingerprint = json!({
                "tokens_column": args.tokens_column,
                "tags_column": args.tags_column,
                "tag_scheme": format!("{:?}", args.tag_scheme.0),
            });
            setup.run(common, labels, train, eval, fingerprint)
        }
    }
}

/// The training and evaluation sets: `--eval FILE`, a held-out `--eval-split`, or none.
fn split<T>(
    train: Vec<T>,
    common: &CommonArgs,
    read: impl Fn(&Path) -> anyhow::Result<Vec<T>>,
) -> anyhow::Result<(Vec<T>, Vec<T>)> {
    match (&common.eval, common.eval_split) {
        (Some(file), _) => Ok((train, read(file)?)),
        (None, Some(ratio)) => Ok(data::split_off(train, ratio, common.seed).map_err(flagged)?),
        (None, None) => Ok((train, Vec::new())),
    }
}

/// The base checkpoint, its tokenizer and the input length.
struct Setup {
    files: ModelFiles,
    tokenizer: TextEncoder,
    max_length: usize,
    kind: TaskKind,
}

impl Setup {
    fn new(common: &CommonArgs, kind: TaskKind) -> anyhow::Result<Self> {
        let files = ModelFiles::resolve(&common.model, HubOptions::from_env())?;
        let config = EncoderConfig::from_file(&files.get("config.json")?)?;
        let tokenizer = TextEncoder::from_files(&files)?;
        let model_limit = config.max_input_tokens();
        let limit = tokenizer
            .model_max_length
            .map_or(model_limit, |t| t.min(model_limit));
        Ok(Setup {
            files,
            tokenizer,
            max_length: (common.max_length as usize).min(limit),
            kind,
        })
    }

    fn run(
        self,
        common: &CommonArgs,
        labels: Vec<String>,
        train_examples: Vec<Example>,
        eval_examples: Vec<Example>,
        task_fingerprint: serde_json::Value,
    ) -> anyhow::Result<ExitCode> {
        let config = TrainConfig {
            epochs: common.epochs,
            learning_rate: common.learning_rate,
            batch_size: common.batch_size as usize,
            warmup_ratio: common.warmup_ratio,
            weight_decay: common.weight_decay,
            max_grad_norm: 1.0,
            seed: common.seed,
            save_steps: Some(common.save_steps),
        };
        config.check().map_err(flagged)?;
        if common.eval_split.is_some() || common.eval.is_some() {
            anyhow::ensure!(
                !eval_examples.is_empty(),
                "the evaluation set is empty: give --eval a file with examples, or a larger --eval-split"
            );
        }
        check_output(&common.output, common.resume)?;
        let mut fingerprint = json!({
            "task": format!("{:?}", self.kind),
            "model": common.model,
            "train": file_id(&common.train)?,
            "eval": match &common.eval {
                Some(f) => file_id(f)?,
                None => json!(common.eval_split),
            },
            "labels": labels,
            "max_length": self.max_length,
        });
        // One flat object, so that a refused resume names the very option that differs.
        let settings = serde_json::to_value(&config)?;
        for part in [&settings, &task_fingerprint] {
            if let (Some(all), Some(more)) = (fingerprint.as_object_mut(), part.as_object()) {
                all.extend(more.clone());
            }
        }
        let device = common.device.resolve()?;
        let model = TrainableModel::load(&self.files, self.kind, &labels, device, common.seed)?;
        if !super::report::quiet() {
            eprintln!(
                "training {} on {} examples ({} for evaluation), {} labels, {} epoch{} of {} steps, on {device:?}",
                self.files.name(),
                train_examples.len(),
                eval_examples.len(),
                labels.len(),
                common.epochs,
                if common.epochs == 1 { "" } else { "s" },
                train_examples.len().div_ceil(config.batch_size),
            );
        }
        let data = TrainData {
            kind: self.kind,
            labels,
            train: train_examples,
            eval: eval_examples,
            pad_id: self.tokenizer.pad_id,
        };
        let mut bar = Bar::new();
        let outcome = train(
            &model,
            &data,
            &config,
            &common.output,
            common.resume,
            fingerprint,
            common.stop_after_steps,
            &mut bar,
        )
        .map_err(flagged)?;
        bar.0.finish_and_clear();
        if super::report::quiet() {
            return Ok(ExitCode::SUCCESS);
        }
        if outcome.stopped {
            eprintln!(
                "stopped after {} steps (--stop-after-steps): continue with --resume",
                outcome.steps
            );
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "trained {} steps in {:.1} s ({:.1} examples/s); the model of epoch {} is in {}",
            outcome.steps,
            outcome.train_seconds,
            outcome.examples_per_second,
            outcome.best_epoch.unwrap_or(common.epochs),
            common.output.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// A new output directory must be empty (or absent); `--resume` needs the unfinished one.
fn check_output(output: &Path, resume: bool) -> anyhow::Result<()> {
    if resume || !output.exists() {
        return Ok(());
    }
    anyhow::ensure!(
        output.is_dir(),
        "--output {} is a file, not a directory",
        output.display()
    );
    let checkpoint = trident_core::train::trainer::checkpoint_dir(output);
    anyhow::ensure!(
        !checkpoint.exists() && !checkpoint.with_extension("tmp").exists(),
        "--output {} holds an unfinished run: continue it with --resume, or choose another directory",
        output.display()
    );
    let empty = std::fs::read_dir(output)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    anyhow::ensure!(
        empty,
        "--output {} is not empty: choose a new directory (a finished model is never overwritten)",
        output.display()
    );
    Ok(())
}

/// A data file's identity for the resume check: its path, size and content hash (FNV-1a).
fn file_id(path: &Path) -> anyhow::Result<serde_json::Value> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok(json!({
        "path": path.display().to_string(),
        "bytes": bytes.len(),
        "fnv1a": format!("{hash:016x}"),
    }))
}

/// The progress bar (on a terminal) and the epoch lines (always, unless `-q`).
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Self {
        let visible =
            std::io::IsTerminal::is_terminal(&std::io::stderr()) && !super::report::quiet();
        let bar = if visible {
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta}] {msg}",
        ) {
            bar.set_style(style);
        }
        Bar(bar)
    }
}

impl Hooks for Bar {
    fn started(&mut self, total: u64, done: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
        if done > 0 && !super::report::quiet() {
            self.say(format!("resuming after step {done} of {total}"));
        }
    }

    fn step(&mut self, r: &StepReport) {
        self.0.set_position(r.step);
        self.0.set_message(format!(
            "epoch {} · loss {:.4} · lr {:.2e} · {:.1} examples/s",
            r.epoch, r.mean_loss, r.lr, r.examples_per_second
        ));
    }

    fn epoch(&mut self, r: &EpochReport) {
        if !super::report::quiet() {
            self.say(epoch_line(r));
        }
    }
}

impl Bar {
    /// A line above the bar, or on stderr when there is no bar (not a terminal).
    fn say(&self, line: String) {
        if self.0.is_hidden() {
            eprintln!("{line}");
        } else {
            self.0.println(line);
        }
    }
}

/// One epoch's summary (and the per-type lines of NER).
fn epoch_line(r: &EpochReport) -> String {
    let mut line = format!("epoch {}: train loss {:.4}", r.epoch, r.train_loss);
    let mut types = String::new();
    match &r.eval {
        None => {}
        Some(EvalScores::Classification { loss, scores }) => line.push_str(&format!(
            " · eval loss {loss:.4} · accuracy {:.4} · macro-F1 {:.4}",
            scores.accuracy, scores.macro_f1
        )),
        Some(EvalScores::Entities { loss, scores }) => {
            line.push_str(&format!(
                " · eval loss {loss:.4} · entities: precision {:.4} recall {:.4} F1 {:.4}",
                scores.overall.precision, scores.overall.recall, scores.overall.f1
            ));
            for (kind, s) in &scores.per_type {
                types.push_str(&format!(
                    "\n    {kind:<12} precision {:.4} recall {:.4} F1 {:.4} (support {})",
                    s.precision, s.recall, s.f1, s.support
                ));
            }
        }
    }
    if r.best {
        line.push_str(if r.eval.is_some() {
            " · best so far, saved"
        } else {
            " · saved"
        });
    }
    line + &types
}
