//! Entities of a news article.
//!
//! ```sh
//! cargo run --example ner_news -- [MODEL] [ARTICLE]
//! ```
//! MODEL is a directory or hub id (default dslim/bert-base-NER); ARTICLE a text file
//! (default examples/news_article.txt).

use trident::bert::{Aggregation, NerOptions, TokenClassifier};
use trident::core::{HubOptions, LoadOptions, ModelFiles};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .unwrap_or_else(|| "dslim/bert-base-NER".to_string());
    let path = args.next().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/news_article.txt").to_string()
    });
    let article = std::fs::read_to_string(&path)?;

    let files = ModelFiles::resolve(&model, HubOptions::from_env())?;
    // Loaded once (device and dtype are fixed here); each call brings its own options.
    let ner = TokenClassifier::from_pretrained(&files, &LoadOptions::default())?;
    let options = NerOptions {
        aggregation: Aggregation::Simple,
        ..Default::default()
    };

    // The whole article at once: texts longer than the model's limit are windowed.
    for entities in ner.run(&[article.as_str()], &options)? {
        for e in entities {
            println!("{}", serde_json::to_string(&e)?);
        }
    }
    Ok(())
}
