//! trident-bert: the encoder-only family (BERT, DistilBERT, RoBERTa) with sequence- and
//! token-classification heads, sentence embeddings, and their pipelines.
//!
//! ```no_run
//! use trident_bert::pipelines::ner::{NerOptions, TokenClassifier};
//! use trident_core::{LoadOptions, ModelFiles};
//! let files = ModelFiles::local("weights/bert-tiny-ner")?;
//! // Loaded once; each call brings its own options.
//! let ner = TokenClassifier::from_pretrained(&files, &LoadOptions::default())?;
//! for entity in &ner.run(&["Angela Merkel visited Paris."], &NerOptions::default())?[0] {
//!     println!("{entity:?}");
//! }
//! # Ok::<(), trident_core::Error>(())
//! ```

pub mod config;
pub mod heads;
pub mod model;
pub mod pipelines;
pub mod train;

pub use config::{EncoderConfig, Family};
pub use pipelines::classify::{ClassifyOptions, Label, TextClassifier};
pub use pipelines::embed::{cosine_similarity, EmbedOptions, Embedder, Embedding};
pub use pipelines::ner::{Aggregation, Entity, NerOptions, TokenClassifier};
pub use pipelines::DEFAULT_BATCH_SIZE;
pub use trident_core::LoadOptions;
