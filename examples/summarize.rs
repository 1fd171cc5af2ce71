//! Summarize a news article with T5.
//!
//! ```sh
//! cargo run --example summarize -- [MODEL] [ARTICLE]
//! ```
//! MODEL is a directory or hub id (default t5-small; `weights/t5-tiny` works offline but,
//! being random, writes nonsense); ARTICLE a text file (default examples/news_article.txt).
//! An article longer than the model's input is split at sentence boundaries, each piece is
//! summarized, and the summaries are joined.

use trident::core::generation::GenerationConfig;
use trident::core::{HubOptions, LoadOptions, ModelFiles};
use trident::t5::SummarizeOptions;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "t5-small".to_string());
    let path = args.next().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/news_article.txt").to_string()
    });
    let article = std::fs::read_to_string(&path)?;

    let files = ModelFiles::resolve(&model, HubOptions::from_env())?;
    // Load once (CUDA when present, else the CPU); options come with each call.
    let summarizer = trident::summarizer(&files, &LoadOptions::default())?;
    // The checkpoint's summarization defaults apply (t5-small: 4 beams, no 3-gram repeats);
    // here we only allow longer summaries than its 20-token default.
    let options = SummarizeOptions {
        generation: GenerationConfig {
            max_new_tokens: Some(60),
            ..Default::default()
        },
        ..Default::default()
    };
    for summary in summarizer.run(&[&article], &options)?.remove(0) {
        if summary.chunks > 1 {
            eprintln!(
                "(the article is longer than {} tokens: summarized in {} pieces)",
                summarizer.max_input_tokens(&options),
                summary.chunks
            );
        }
        println!("{}", summary.summary_text);
    }
    Ok(())
}
