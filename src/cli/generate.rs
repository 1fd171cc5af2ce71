//! `trident generate "prompt"`: continue prompts with a decoder-only checkpoint (GPT-2, Llama).
//!
//! The text format streams each continuation to the output as its tokens are produced, one
//! prompt at a time; json and jsonl print transformers' text-generation pipeline output
//! (`[{"generated_text": …}]` per prompt), generating `--batch-size` prompts together.
//!
//! With `--chat`, the inputs are conversations (see `chat::conversations`), each rendered with
//! the model's chat template and its generation prompt; the output is the assistant's answer
//! alone, cut before a stop string.

use super::common::ModelArgs;
use super::generation_args::GenerationArgs;
use super::io::{from_file, process_items, read_inputs, Format, IoArgs, Item, Progress, Rendered};
use clap::Args;
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;
use trident_core::chat::{before_stop, ChatTemplate, StopFilter};
use trident_core::generation::GenerationConfig;
use trident_gpt::{GenerateOptions, GeneratedText, Piece, StepProbs, TextGenerator};

/// Default model of `trident generate`.
pub const GPT_MODEL: &str = "gpt2";

/// Prompts handed to the pipeline at once in json/jsonl (and retried one by one if the group
/// fails).
const CHUNK: usize = 16;

/// Options of `trident generate`.
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  trident generate \"The meaning of life is\"
  trident generate --max-new-tokens 40 --do-sample --seed 7 --num-return-sequences 3 \"Once upon a time\"
  trident generate --show-probs 5 --max-new-tokens 10 \"The capital of France is\"
  trident generate --format json --num-beams 4 --no-prompt --input prompts.txt
  trident generate --chat --model HuggingFaceTB/SmolLM2-360M-Instruct '[{\"role\": \"user\", \"content\": \"Hi!\"}]'
  trident generate --chat --format jsonl --input conversations.jsonl

Search is greedy unless --do-sample is given (then the temperature is 0.7 unless set, as in
transformers' text-generation pipeline); at most 256 new tokens (half the context for small
models) unless the model or --max-new-tokens says otherwise. A prompt longer than the context
keeps its last tokens, with a warning.")]
pub struct GenerateArgs {
    /// Output only the generated continuation, without the prompt (transformers'
    /// return_full_text=False).
    #[arg(long)]
    no_prompt: bool,
    /// After each generated token, show the K most probable next tokens with their
    /// probabilities (the model's softmax over the vocabulary, before sampling settings);
    /// greedy search and sampling only.
    #[arg(long, value_name = "K")]
    show_probs: Option<usize>,
    /// Inputs are conversations, rendered with the model's chat template (generation prompt
    /// added): each argument a JSON array of messages ([{"role": …, "content": …}]) or
    /// {"messages": [...]}; --input or stdin one such conversation, a JSON array of them, or
    /// JSON Lines with one per line (an "id" beside "messages" is carried to jsonl output).
    /// The output is the assistant's answer alone, cut before a --stop string.
    #[arg(long)]
    chat: bool,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    generation: GenerationArgs,
    #[command(flatten)]
    io: IoArgs,
}

/// Run `trident generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let files = args.model.files(GPT_MODEL)?;
    // A model without a chat template is refused before it is loaded.
    let template = args
        .chat
        .then(|| ChatTemplate::from_files(&files))
        .transpose()?;
    let generation = args.generation.options();
    let text = args.io.format == Format::Text;
    let mut options = GenerateOptions {
        // Streaming shows one continuation at a time.
        batch_size: if text {
            1
        } else {
            args.model.batch_size as usize
        },
        generation,
        return_full_text: !args.no_prompt && !args.chat,
        show_probs: args.show_probs,
    };
    let generator = trident::generator(&files, &args.model.load_options())?;
    // More new tokens than the context holds: as many as it can hold, with a warning
    // (the prompt then keeps its last token).
    let context = generator.context();
    if let Some(n) = options.generation.max_new_tokens.filter(|&n| n >= context) {
        let most = context.saturating_sub(1);
        eprintln!(
            "warning: --max-new-tokens {n} is more than the model's context of {context} tokens \
             allows: generating at most {most}"
        );
        options.generation.max_new_tokens = Some(most);
    }
    // Settings that cannot work with this model are refused before any input is read.
    let settings = generator.settings(&options)?;
    generator.max_prompt_tokens(&settings)?;
    if args.generation.show(&settings)? {
        return Ok(ExitCode::SUCCESS);
    }
    args.generation.warn_unused(&settings);
    let items = match &template {
        Some(template) => super::chat::conversations(&args.io, template, &generator)?,
        None => read_inputs(&args.io)?,
    };
    // A chat's answer ends before its stop string.
    let stops = match args.chat {
        true => settings.stop_strings.clone().unwrap_or_default(),
        false => Vec::new(),
    };
    if text {
        return stream(&args, &generator, &options, &settings, items, &stops);
    }
    let render = |_: &str, texts: &Vec<GeneratedText>| -> Rendered {
        let texts: Vec<GeneratedText> = texts
            .iter()
            .map(|t| GeneratedText {
                generated_text: before_stop(&t.generated_text, 0, &stops),
                ..t.clone()
            })
            .collect();
        Rendered {
            // transformers returns a list of `{generated_text}` per prompt, for a single
            // prompt as for each prompt of a list.
            value: json!(texts),
            alone: None,
            text: texts
                .iter()
                .map(|t| t.generated_text.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            heading: false,
        }
    };
    process_items(
        &args.io,
        items,
        CHUNK,
        |prompts| Ok(generator.run(prompts, &options)?),
        render,
        || generator.tokens_processed(),
    )
}

/// The text format: each prompt's continuation written as it is generated. Several outputs
/// per prompt (`--num-return-sequences`) are written one after the other once all are done.
/// Text from a stop string in `stops` on is not written (chats).
fn stream(
    args: &GenerateArgs,
    generator: &TextGenerator,
    options: &GenerateOptions,
    settings: &GenerationConfig,
    items: Vec<Item>,
    stops: &[String],
) -> anyhow::Result<ExitCode> {
    let mut sink: Box<dyn Write> = super::io::open_sink(&args.io)?;
    let mut progress = Progress::new(items.len(), from_file(&args.io));
    let copies = settings.num_return_sequences();
    let live = copies == 1;
    let (mut succeeded, mut failed) = (0, 0);
    for item in &items {
        let prompt = match &item.text {
            Ok(prompt) => prompt,
            Err(why) => {
                eprintln!("error: {}: {why}", item.origin);
                // An empty row keeps the outputs in line with the inputs.
                sink.write_all(b"\n")?;
                if items.len() > 1 {
                    sink.write_all(b"\n")?;
                }
                failed += 1;
                continue;
            }
        };
        let head = if args.no_prompt || args.chat {
            ""
        } else {
            prompt.as_str()
        };
        if live {
            sink.write_all(head.as_bytes())?;
            if args.show_probs.is_some() {
                sink.write_all(b"\n")?;
            }
            sink.flush()?;
        }
        let mut filter = StopFilter::default();
        // What is on screen so far, prompt included, which the final text starts with.
        let mut shown = head.to_string();
        let mut on_piece = |piece: Piece| {
            if !live {
                return Ok(());
            }
            let written = match piece.step {
                Some(step) => writeln!(sink, "{}", step_line(step)),
                None if args.show_probs.is_some() => Ok(()),
                None => {
                    let text = filter.push(piece.text, stops);
                    shown.push_str(&text);
                    write!(sink, "{text}")
                }
            };
            written
                .and_then(|()| sink.flush())
                .map_err(|e| trident_core::Error::io("stdout", e))
        };
        let outcome = super::report::with_origin(&item.origin, || {
            generator.run_streaming(&[prompt.as_str()], options, &mut on_piece)
        });
        match outcome {
            Ok(results) => {
                succeeded += 1;
                let texts = results.into_iter().next().unwrap_or_default();
                for (n, t) in texts.iter().enumerate() {
                    let text = before_stop(&t.generated_text, 0, stops);
                    if !live || args.show_probs.is_some() {
                        if n > 0 {
                            sink.write_all(b"\n")?;
                        }
                        sink.write_all(text.as_bytes())?;
                    } else if let Some(rest) = text.strip_prefix(shown.as_str()) {
                        // What the stop filter still held back.
                        sink.write_all(rest.as_bytes())?;
                    }
                }
                sink.write_all(b"\n")?;
                if items.len() > 1 || !live {
                    sink.write_all(b"\n")?;
                }
                sink.flush()?;
            }
            Err(e) => {
                if live {
                    sink.write_all(b"\n")?;
                }
                eprintln!(
                    "error: {}: {}",
                    item.origin,
                    super::with_flags(&e.to_string())
                );
                failed += 1;
            }
        }
        progress.inc(1);
    }
    progress.tokens = generator.tokens_processed();
    progress.finish(succeeded, failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One `--show-probs` line: the chosen token and the most probable candidates.
fn step_line(step: &StepProbs) -> String {
    let top: Vec<String> = step
        .top
        .iter()
        .map(|t| format!("{:?} {:.4}", t.token, t.probability))
        .collect();
    format!(
        "{:<16} {:.4}   top: {}",
        format!("{:?}", step.token),
        step.probability,
        top.join("  ")
    )
}
