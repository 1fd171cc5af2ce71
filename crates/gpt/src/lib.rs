//! trident-gpt: the decoder-only GPT-2 ([`GPT2LMHeadModel`]) and text generation on it
//! ([`TextGenerator`]).
//!
//! gpt2, distilgpt2 and gpt2-medium/large/xl load from Hugging Face checkpoints, with or
//! without the `transformer.` prefix; generation goes through trident-core's one engine
//! ([`trident_core::generation`]).
//!
//! ```no_run
//! use trident_gpt::{GenerateOptions, TextGenerator};
//! use trident_core::ModelFiles;
//! let generator = TextGenerator::from_pretrained(&ModelFiles::local("weights/gpt2-tiny")?, GenerateOptions::default())?;
//! for text in &generator.run(&["The United Nations said"])?[0] {
//!     println!("{}", text.generated_text);
//! }
//! # Ok::<(), trident_core::Error>(())
//! ```

pub mod config;
pub mod model;
pub mod pipelines;

pub use config::GPT2Config;
pub use model::{GPT2LMHeadModel, GPT2Model, GPT2State};
pub use pipelines::generate::{
    GenerateOptions, GeneratedText, Piece, StepProbs, TextGenerator, TokenProb,
};
