//! `trident summarize`: summaries of documents with an encoder-decoder checkpoint (BART-CNN by
//! default, T5, …).

use super::common::ModelArgs;
use super::generation_args::GenerationArgs;
use super::io::{process, IoArgs, Rendered};
use clap::Args;
use serde::Serialize;
use std::cell::Cell;
use std::process::ExitCode;
use trident_core::seq2seq::{SummarizeOptions, Summary};

/// Texts handed to the pipeline at once (and retried one by one if the group fails).
pub(super) const CHUNK: usize = 16;

/// Default model of `trident summarize`: transformers 4.x's default summarization model.
pub const SUMMARIZE_MODEL: &str = "sshleifer/distilbart-cnn-12-6";

/// Options of `trident summarize`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  trident summarize --format json \"The United Nations said on Monday...\"
  trident summarize --input articles.txt --num-beams 4 --max-new-tokens 60 --output summaries.jsonl --format jsonl
  trident summarize --model t5-small --input report.txt --resummarize

The model's generation_config.json and task_specific_params[\"summarization\"] (distilbart-cnn: 4 beams,
length penalty 2, 56-142 tokens; t5: the prefix \"summarize: \") apply first, as in transformers'
summarization pipeline; the flags above override them. Models: BART (distilbart, bart-large-cnn), T5.")]
pub struct SummarizeArgs {
    /// Longest input in tokens; longer documents are split at sentence boundaries, each piece
    /// is summarized, and the summaries are joined (default: the tokenizer's limit, 1024 for
    /// BART, 512 for T5).
    #[arg(long, value_name = "N")]
    max_input_tokens: Option<usize>,
    /// When a document had to be split, summarize the joined summaries once more.
    #[arg(long)]
    resummarize: bool,
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

/// One input's outputs as each format shows them: `texts` are the output texts, `values`
/// their JSON objects. A single output is its object (an element of transformers' list); several
/// (--num-return-sequences) are a list. A lone input prints transformers' list.
pub(super) fn render<T: Serialize>(values: &[T], texts: Vec<&str>) -> Rendered {
    let list = serde_json::json!(values);
    let value = match values {
        [one] => serde_json::json!(one),
        _ => list.clone(),
    };
    Rendered {
        value,
        alone: Some(list),
        text: texts.join("\n"),
        heading: false,
    }
}

/// Tell the user on stderr that a document was split.
pub(super) fn note_split(input: &str, chunks: usize, limit: usize, done: &str) {
    if chunks > 1 {
        let start: String = input
            .split_whitespace()
            .take(6)
            .collect::<Vec<_>>()
            .join(" ");
        super::report::warn(format!(
            "the text starting \"{start}…\" is longer than the model's {limit}-token input: \
             it was split at sentence boundaries into {chunks} pieces, {done} one by one and \
             joined"
        ));
    }
}

/// Run `trident summarize`.
pub fn run(mut args: SummarizeArgs) -> anyhow::Result<ExitCode> {
    args.io.documents = !args.per_line;
    let files = args.model.files(SUMMARIZE_MODEL)?;
    let summarizer = trident::summarizer(&files, &args.model.load_options())?;
    let options = SummarizeOptions {
        generation: args.generation.options(),
        max_input_tokens: args.max_input_tokens,
        batch_size: args.model.batch_size as usize,
        resummarize: args.resummarize,
    };
    // Settings that cannot work with this model are refused before any input is read.
    let settings = summarizer.settings(&options)?;
    if args.generation.show(&settings)? {
        return Ok(ExitCode::SUCCESS);
    }
    args.generation.warn_unused(&settings);
    let limit = summarizer.max_input_tokens(&options);
    let tokens = Cell::new(0);
    let render_one = |input: &str, summaries: &Vec<Summary>| -> Rendered {
        if let Some(first) = summaries.first() {
            note_split(input, first.chunks, limit, "summarized");
            tokens.set(tokens.get() + first.generated_tokens);
        }
        let texts = summaries.iter().map(|s| s.summary_text.as_str()).collect();
        render(summaries, texts)
    };
    let pieces = super::io::PiecesBar::new();
    process(
        &args.io,
        CHUNK,
        |texts| {
            Ok(
                summarizer.run_with_progress(texts, &options, &mut |done, total| {
                    pieces.update(done, total)
                })?,
            )
        },
        render_one,
        || tokens.get(),
    )
}
