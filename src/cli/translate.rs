//! `trident translate --from fr --to en`: translations with OPUS-MT (the default, one model per
//! language pair), NLLB/M2M100 (language codes) or T5 (prompts).

use super::common::ModelArgs;
use super::generation_args::GenerationArgs;
use super::io::{process, IoArgs, Rendered};
use super::summarize::{note_split, render, CHUNK};
use clap::Args;
use std::cell::Cell;
use std::process::ExitCode;
use trident_core::seq2seq::{TranslateOptions, Translation};
use trident_core::{HubOptions, ModelFiles};

/// What `trident translate --help` says about the model it picks.
pub const DEFAULT_MODEL_HELP: &str = "Default model (without --model): Helsinki-NLP/opus-mt-<from>-<to>, the OPUS-MT model of the pair (--from defaults to en)";

/// Options of `trident translate`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  trident translate --from fr --to en \"Le chat dort sur le canapé.\"      # Helsinki-NLP/opus-mt-fr-en
  trident translate --model Helsinki-NLP/opus-mt-de-en \"Das Haus ist wunderbar.\"
  trident translate --model facebook/nllb-200-distilled-600M --from fra_Latn --to eng_Latn --input doc.txt
  trident translate --model t5-small --to de --input sentences.txt --format jsonl --num-beams 4

An OPUS-MT (Marian) model translates its own pair and needs no --from/--to; NLLB takes codes such as
fra_Latn, M2M100 codes such as fr; T5 uses its task_specific_params[\"translation_<from>_to_<to>\"]
(prefix, beams, lengths). The model's generation settings apply first; the flags above override them.")]
pub struct TranslateArgs {
    /// Target language code: en, de, … (eng_Latn for NLLB). Optional for an OPUS-MT model,
    /// which translates one pair.
    #[arg(long, value_name = "LANG")]
    to: Option<String>,
    /// Source language code: fr, en, … (fra_Latn for NLLB). Without --model it defaults to
    /// en.
    #[arg(long, value_name = "LANG")]
    from: Option<String>,
    /// Longest input in tokens; longer documents are split at sentence boundaries, each piece
    /// is translated, and the translations are joined (default: the tokenizer's limit, 512
    /// for OPUS-MT and T5, 1024 for NLLB).
    #[arg(long, value_name = "N")]
    max_input_tokens: Option<usize>,
    /// Treat each line of a plain-text --input (or stdin) as its own document. Without it, a
    /// plain-text file is one document (its paragraphs together); JSON Lines input is always
    /// one document per line.
    #[arg(long)]
    per_line: bool,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    generation: GenerationArgs,
    #[command(flatten)]
    io: IoArgs,
}

/// The OPUS-MT model of a pair, `Helsinki-NLP/opus-mt-{from}-{to}`.
fn opus_mt(from: &str, to: &str) -> String {
    format!("Helsinki-NLP/opus-mt-{from}-{to}")
}

/// `--model`, or the OPUS-MT model of `--from`/`--to` (said on stderr); a pair whose model
/// cannot be found is an error that says what to pass.
fn model_files(args: &TranslateArgs) -> anyhow::Result<ModelFiles> {
    if args.model.model.is_some() {
        return args.model.files("");
    }
    let Some(to) = args.to.as_deref() else {
        anyhow::bail!(
            "translate needs --to (and --from, default en) to pick a model, or --model: \
             e.g. --from fr --to en (Helsinki-NLP/opus-mt-fr-en)"
        );
    };
    let from = args.from.as_deref().unwrap_or("en");
    let id = opus_mt(from, to);
    let files = ModelFiles::resolve(&id, HubOptions::from_env())?;
    if let Err(e) = files.get("config.json") {
        anyhow::bail!(
            "no model found for {from} → {to}: {id} is not available ({e}). Pass --model with a \
             local directory or a hub id: an OPUS-MT model of the pair, or a multilingual one \
             such as --model facebook/nllb-200-distilled-600M --from fra_Latn --to eng_Latn"
        );
    }
    if !super::report::quiet() {
        eprintln!("translating {from} → {to} with {id} (the OPUS-MT model of the pair)");
    }
    Ok(files)
}

/// Run `trident translate`.
pub fn run(mut args: TranslateArgs) -> anyhow::Result<ExitCode> {
    args.io.documents = !args.per_line;
    let files = model_files(&args)?;
    let mut options = TranslateOptions::model_pair();
    options.source = args.from.clone();
    options.target = args.to.clone();
    options.generation = args.generation.options();
    options.max_input_tokens = args.max_input_tokens;
    options.batch_size = args.model.batch_size as usize;
    let translator = trident::translator(&files, &args.model.load_options())?;
    // A pair or settings that cannot work with this model are refused before any input.
    let settings = translator.settings(&options)?;
    if args.generation.show(&settings)? {
        return Ok(ExitCode::SUCCESS);
    }
    args.generation.warn_unused(&settings);
    let limit = translator.max_input_tokens(&options);
    let tokens = Cell::new(0);
    let render_one = |input: &str, translations: &Vec<Translation>| -> Rendered {
        if let Some(first) = translations.first() {
            note_split(input, first.chunks, limit, "translated");
            tokens.set(tokens.get() + first.generated_tokens);
        }
        let texts = translations
            .iter()
            .map(|t| t.translation_text.as_str())
            .collect();
        render(translations, texts)
    };
    let pieces = super::io::PiecesBar::new();
    process(
        &args.io,
        CHUNK,
        |texts| {
            Ok(
                translator.run_with_progress(texts, &options, &mut |done, total| {
                    pieces.update(done, total)
                })?,
            )
        },
        render_one,
        || tokens.get(),
    )
}
