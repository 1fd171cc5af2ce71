//! `trident generate "prompt"`: continue prompts with a decoder-only checkpoint (GPT-2, Llama).
//!
//! The text format streams each continuation to the output as its tokens are produced, one
//! prompt at a time; json and jsonl print transformers' text-generation pipeline output
//! (`[{"generated_text": …}]` per prompt), generating `--batch-size` prompts together.

use super::common::ModelArgs;
use super::generation_args::GenerationArgs;
use super::io::{from_file, process, read_inputs, Format, IoArgs, Progress, Rendered};
use clap::Args;
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;
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
        return_full_text: !args.no_prompt,
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
    if text {
        return stream(&args, &generator, &options, &settings);
    }
    let render = |_: &str, texts: &Vec<GeneratedText>| -> Rendered {
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
    process(
        &args.io,
        CHUNK,
        |prompts| Ok(generator.run(prompts, &options)?),
        render,
        || generator.tokens_processed(),
    )
}

/// The text format: each prompt's continuation written as it is generated. Several outputs
/// per prompt (`--num-return-sequences`) are written one after the other once all are done.
fn stream(
    args: &GenerateArgs,
    generator: &TextGenerator,
    options: &GenerateOptions,
    settings: &GenerationConfig,
) -> anyhow::Result<ExitCode> {
    let items = read_inputs(&args.io)?;
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
        let head = if args.no_prompt { "" } else { prompt.as_str() };
        if live {
            sink.write_all(head.as_bytes())?;
            if args.show_probs.is_some() {
                sink.write_all(b"\n")?;
            }
            sink.flush()?;
        }
        let mut on_piece = |piece: Piece| {
            if !live {
                return Ok(());
            }
            let written = match piece.step {
                Some(step) => writeln!(sink, "{}", step_line(step)),
                None if args.show_probs.is_some() => Ok(()),
                None => write!(sink, "{}", piece.text),
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
                    if !live || args.show_probs.is_some() {
                        if n > 0 {
                            sink.write_all(b"\n")?;
                        }
                        sink.write_all(t.generated_text.as_bytes())?;
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
