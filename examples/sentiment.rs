//! Sentiment of each sentence of a news article.
//!
//! ```sh
//! cargo run --example sentiment -- [MODEL] [ARTICLE]
//! ```
//! MODEL is a directory or hub id (default distilbert-base-uncased-finetuned-sst-2-english);
//! ARTICLE a text file with one sentence per line (default examples/news_article.txt).

use trident::bert::{ClassifyOptions, TextClassifier};
use trident::core::{HubOptions, LoadOptions, ModelFiles};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .unwrap_or_else(|| "distilbert-base-uncased-finetuned-sst-2-english".to_string());
    let path = args.next().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/news_article.txt").to_string()
    });
    let article = std::fs::read_to_string(&path)?;
    let sentences: Vec<&str> = article.lines().filter(|l| !l.trim().is_empty()).collect();

    let files = ModelFiles::resolve(&model, HubOptions::from_env())?;
    let classifier = TextClassifier::from_pretrained(&files, &LoadOptions::default())?;
    let results = classifier.run(&sentences, &ClassifyOptions::default())?;
    for (sentence, labels) in sentences.iter().zip(results) {
        if let Some(best) = labels.first() {
            println!("{:<9} {:.3}  {}", best.label, best.score, sentence);
        }
    }
    Ok(())
}
