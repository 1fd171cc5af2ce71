//! `trident translate --to de [--from en]`: translations with a T5 checkpoint.

use super::common::ModelArgs;
use super::generation_args::GenerationArgs;
use super::io::{process, IoArgs, Rendered};
use super::summarize::{note_split, render, CHUNK, T5_MODEL};
use clap::Args;
use std::cell::Cell;
use std::process::ExitCode;
use trident_t5::{TranslateOptions, Translation, Translator};

/// Options of `trident translate`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  trident translate --to de \"The house is wonderful.\"
  trident translate --to fr --input sentences.txt --format jsonl --num-beams 4

The model's task_specific_params[\"translation_<from>_to_<to>\"] (prefix, beams, lengths) apply first, as in
transformers' translation pipeline; the flags above override them.")]
pub struct TranslateArgs {
    /// Target language code: de, fr or ro for t5-small (the pairs of the model's
    /// task_specific_params; models without them, like flan-t5, take any of en, de, fr, ro,
    /// es, it, pt, nl, ru, zh, ja).
    #[arg(long, value_name = "LANG")]
    to: String,
    /// Source language code.
    #[arg(long, value_name = "LANG", default_value = "en")]
    from: String,
    /// Longest input in tokens; longer documents are split at sentence boundaries, each piece
    /// is translated, and the translations are joined (default: the tokenizer's limit, 512
    /// for T5).
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

/// Run `trident translate`.
pub fn run(mut args: TranslateArgs) -> anyhow::Result<ExitCode> {
    args.io.documents = !args.per_line;
    let files = args.model.files(T5_MODEL)?;
    let mut options = TranslateOptions::new(&args.from, &args.to);
    options.generation = args.generation.options();
    options.max_input_tokens = args.max_input_tokens;
    options.batch_size = args.model.batch_size as usize;
    let translator = Translator::from_pretrained(&files, &args.model.load_options())?;
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
