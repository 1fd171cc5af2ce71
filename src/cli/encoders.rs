//! `trident classify` (alias `sentiment`), `trident ner` and `trident embed`.

use super::common::ModelArgs;
use super::io::{process, IoArgs, Rendered};
use clap::Args;
use serde_json::json;
use std::process::ExitCode;
use trident_bert::{
    Aggregation, ClassifyOptions, EmbedOptions, Embedder, Entity, Label, NerOptions,
    TextClassifier, TokenClassifier,
};

/// Texts processed between progress updates (and retried one by one if the group fails).
const CHUNK: usize = 64;

/// Options of `trident classify`.
#[derive(Args, Debug)]
pub struct ClassifyArgs {
    /// Return the K best labels per text with their scores ("all" for every label).
    /// Without it, each text gets its best label, as transformers' pipeline returns.
    #[arg(long, value_name = "K|all")]
    top_k: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    io: IoArgs,
}

/// Default model of `trident classify`.
pub const CLASSIFY_MODEL: &str = "distilbert-base-uncased-finetuned-sst-2-english";

/// Run `trident classify`.
pub fn classify(args: ClassifyArgs) -> anyhow::Result<ExitCode> {
    let top_k = match args.top_k.as_deref() {
        None => None,
        Some("all") => Some(None),
        Some(k) => Some(Some(
            k.parse::<usize>().ok().filter(|&k| k > 0).ok_or_else(|| {
                anyhow::anyhow!("--top-k must be a positive number or 'all', not '{k}'")
            })?,
        )),
    };
    let files = args.model.files(CLASSIFY_MODEL)?;
    let options = ClassifyOptions {
        batch_size: args.model.batch_size as usize,
        top_k: top_k.unwrap_or(Some(1)),
        function: None,
    };
    let classifier = TextClassifier::from_pretrained(&files, &args.model.load_options())?;
    let render = |input: &str, labels: &Vec<Label>| -> Rendered {
        let scores = labels
            .iter()
            .map(|l| format!("{}\t{:.4}", l.label, l.score))
            .collect::<Vec<_>>()
            .join("\t");
        let text = format!("{scores}\t{}", preview(input));
        // Without --top-k, transformers returns the best label of each text of a list as a
        // dict, and `[dict]` for a single string.
        let (value, alone) = match (top_k, labels.first()) {
            (None, Some(best)) => (json!(best), Some(json!([best]))),
            _ => (json!(labels), None),
        };
        Rendered {
            value,
            alone,
            text,
            heading: false,
        }
    };
    process(
        &args.io,
        CHUNK,
        |texts| Ok(classifier.run(texts, &options)?),
        render,
        || classifier.tokens_processed(),
    )
}

/// The start of a text on one line, for the text format.
fn preview(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

/// Options of `trident ner`.
#[derive(Args, Debug)]
pub struct NerArgs {
    /// How token labels become entities: none (one per token), simple (group adjacent
    /// tokens with the same tag), first, average or max (decide per word, then group).
    #[arg(long, default_value = "simple", value_name = "STRATEGY", ignore_case = true, value_parser = super::common::choices::<Aggregation>(&[("none", &[]), ("simple", &[]), ("first", &[]), ("average", &[]), ("max", &[])]))]
    aggregation: Aggregation,
    /// Split texts longer than the model's limit into windows sharing N tokens. Long texts
    /// are always windowed (never cut); this sets the overlap and windows every text.
    #[arg(long, value_name = "N")]
    stride: Option<usize>,
    /// Labels to leave out of the output (repeat the flag for several).
    #[arg(long = "ignore-label", value_name = "LABEL", default_values_t = vec!["O".to_string()])]
    ignore_labels: Vec<String>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    io: IoArgs,
}

/// Default model of `trident ner`.
pub const NER_MODEL: &str = "dslim/bert-base-NER";

/// Run `trident ner`.
pub fn ner(mut args: NerArgs) -> anyhow::Result<ExitCode> {
    args.io.blocks = true;
    let files = args.model.files(NER_MODEL)?;
    let options = NerOptions {
        batch_size: args.model.batch_size as usize,
        aggregation: args.aggregation,
        stride: args.stride,
        ignore_labels: args.ignore_labels,
    };
    let ner = TokenClassifier::from_pretrained(&files, &args.model.load_options())?;
    // Options that cannot work with this model are refused before any input is read.
    ner.check(&options)?;
    let render = |_: &str, entities: &Vec<Entity>| -> Rendered {
        let lines: Vec<String> = entities
            .iter()
            .map(|e| match e {
                Entity::Group {
                    entity_group,
                    score,
                    word,
                    start,
                    end,
                } => format!("{entity_group}\t{word}\t{start}-{end}\t{score:.4}"),
                Entity::Token {
                    entity,
                    score,
                    word,
                    start,
                    end,
                    index,
                } => format!("{entity}\t{word}\t{start}-{end}\t{score:.4}\ttoken {index}"),
            })
            .collect();
        let text = if lines.is_empty() {
            "(no entities)".to_string()
        } else {
            lines.join("\n")
        };
        Rendered {
            value: json!(entities),
            alone: None,
            text: text + "\n\n",
            heading: true,
        }
    };
    process(
        &args.io,
        CHUNK,
        |texts| Ok(ner.run(texts, &options)?),
        render,
        || ner.tokens_processed(),
    )
}

/// Options of `trident embed`.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    io: IoArgs,
}

/// Default model of `trident embed`.
pub const EMBED_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Run `trident embed`.
pub fn embed(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    let files = args.model.files(EMBED_MODEL)?;
    let embedder = Embedder::from_pretrained(&files, &args.model.load_options())?;
    let options = EmbedOptions {
        batch_size: args.model.batch_size as usize,
    };
    let render = |_: &str, e: &trident_bert::Embedding| -> Rendered {
        let text = e
            .embedding
            .iter()
            .map(|x| format!("{x:.6}"))
            .collect::<Vec<_>>()
            .join(" ");
        // What sentence-transformers' `encode` returns: a vector per text (a list of them
        // for several texts, the vector itself for one string).
        Rendered {
            value: json!(e.embedding),
            alone: None,
            text,
            heading: false,
        }
    };
    process(
        &args.io,
        CHUNK,
        |texts| Ok(embedder.run(texts, &options)?),
        render,
        || embedder.tokens_processed(),
    )
}
