//! Text generation on GPT-2, through core's one text-generation pipeline
//! ([`trident_core::causal`]).

pub use trident_core::causal::{
    GenerateOptions, GeneratedText, Piece, StepProbs, TextGenerator, TokenProb,
};

use crate::config::GPT2Config;
use crate::model::GPT2LMHeadModel;
use trident_core::{LoadOptions, ModelFiles, Result};

/// A [`TextGenerator`] on a GPT-2 checkpoint.
pub fn generator(files: &ModelFiles, options: &LoadOptions) -> Result<TextGenerator> {
    let config = GPT2Config::from_file(&files.get("config.json")?)?;
    TextGenerator::load(files, || {
        let model =
            GPT2LMHeadModel::load(files, &config, options.device.resolve()?, options.dtype)?;
        Ok((
            Box::new(model),
            config.n_positions as usize,
            config.bos_id(),
        ))
    })
}
