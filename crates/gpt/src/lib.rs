//! trident-gpt: the decoder-only GPT-2 ([`GPT2LMHeadModel`]) and text generation on it
//! ([`generator`]: core's [`TextGenerator`] on GPT-2).
//!
//! gpt2, distilgpt2 and gpt2-medium/large/xl load from Hugging Face checkpoints, with or
//! without the `transformer.` prefix; generation goes through trident-core's one engine
//! ([`trident_core::generation`]).
//!
//! ```no_run
//! use trident_gpt::GenerateOptions;
//! use trident_core::{LoadOptions, ModelFiles};
//! let files = ModelFiles::local("weights/gpt2-tiny")?;
//! // Loaded once; each call brings its own options.
//! let generator = trident_gpt::generator(&files, &LoadOptions::default())?;
//! let options = GenerateOptions::default();
//! for text in &generator.run(&["The United Nations said"], &options)?[0] {
//!     println!("{}", text.generated_text);
//! }
//! # Ok::<(), trident_core::Error>(())
//! ```

pub mod config;
pub mod model;
pub mod pipelines;

pub use config::GPT2Config;
pub use model::{GPT2LMHeadModel, GPT2Model};
pub use pipelines::{
    generator, GenerateOptions, GeneratedText, Piece, StepProbs, TextGenerator, TokenProb,
};
