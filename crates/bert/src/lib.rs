//! trident-bert: the encoder-only family (BERT, DistilBERT, RoBERTa) with sequence- and
//! token-classification heads, sentence embeddings, and their pipelines.
//!
//! ```no_run
//! use trident_bert::pipelines::ner::{NerOptions, TokenClassifier};
//! use trident_core::ModelFiles;
//! let ner = TokenClassifier::from_pretrained(&ModelFiles::local("weights/bert-tiny-ner")?, NerOptions::default())?;
//! for entity in &ner.run(&["Angela Merkel visited Paris."])?[0] {
//!     println!("{entity:?}");
//! }
//! # Ok::<(), trident_core::Error>(())
//! ```

pub mod config;
pub mod heads;
pub mod model;
pub mod pipelines;

pub use config::{EncoderConfig, Family};
pub use pipelines::classify::{ClassifyOptions, Label, TextClassifier};
pub use pipelines::embed::{cosine_similarity, Embedder, Embedding};
pub use pipelines::ner::{Aggregation, Entity, NerOptions, TokenClassifier};
pub use pipelines::PipelineOptions;
