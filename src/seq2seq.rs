//! Load an encoder-decoder or decoder-only checkpoint of any family, by config.json's
//! `model_type`.

use trident_core::config::read_json;
use trident_core::seq2seq::{AnySeq2SeqLm, Summarizer, Translator};
use trident_core::{Error, LoadOptions, ModelFiles, Result};

/// The encoder-decoder families Trident loads, by `model_type`.
pub const SEQ2SEQ_MODEL_TYPES: &[&str] = &["t5", "mt5", "bart", "marian", "m2m_100"];

/// Load the encoder-decoder model of `files` (T5/mT5, BART, Marian, M2M100/NLLB), chosen by
/// config.json's `model_type`.
pub fn load_seq2seq(files: &ModelFiles, options: &LoadOptions) -> Result<AnySeq2SeqLm> {
    #[derive(serde::Deserialize)]
    struct ModelType {
        #[serde(default)]
        model_type: String,
    }
    let config = files.get("config.json")?;
    let model_type = read_json::<ModelType>(&config)?.model_type;
    let (device, dtype) = (options.device.resolve()?, options.dtype);
    Ok(match model_type.as_str() {
        "t5" | "mt5" => Box::new(trident_t5::T5ForConditionalGeneration::from_pretrained(
            files, device, dtype,
        )?),
        "bart" => Box::new(trident_bart::BartForConditionalGeneration::from_pretrained(
            files, device, dtype,
        )?),
        "marian" => Box::new(trident_marian::MarianMTModel::from_pretrained(
            files, device, dtype,
        )?),
        "m2m_100" => Box::new(
            trident_m2m100::M2M100ForConditionalGeneration::from_pretrained(files, device, dtype)?,
        ),
        other => {
            return Err(Error::config(
                config,
                format!(
                    "model_type '{other}' is not an encoder-decoder Trident loads (it loads {})",
                    SEQ2SEQ_MODEL_TYPES.join(", ")
                ),
            ))
        }
    })
}

/// A [`Summarizer`] on the checkpoint `files` (BART-CNN, T5, …).
pub fn summarizer(files: &ModelFiles, options: &LoadOptions) -> Result<Summarizer> {
    Summarizer::new(load_seq2seq(files, options)?, files)
}

/// A [`Translator`] on the checkpoint `files` (OPUS-MT, NLLB, M2M100, T5, …).
pub fn translator(files: &ModelFiles, options: &LoadOptions) -> Result<Translator> {
    Translator::new(load_seq2seq(files, options)?, files)
}

/// The decoder-only families Trident loads, by `model_type`.
pub const CAUSAL_MODEL_TYPES: &[&str] = &["gpt2", "llama", "mistral", "qwen2", "bloom"];

/// A [`TextGenerator`](trident_core::causal::TextGenerator) on the checkpoint `files`
/// (GPT-2, Llama, Mistral, Qwen2, BLOOM), the family chosen by config.json's `model_type`.
pub fn generator(
    files: &ModelFiles,
    options: &LoadOptions,
) -> Result<trident_core::causal::TextGenerator> {
    #[derive(serde::Deserialize)]
    struct ModelType {
        #[serde(default)]
        model_type: String,
    }
    let config = files.get("config.json")?;
    match read_json::<ModelType>(&config)?.model_type.as_str() {
        "gpt2" => trident_gpt::generator(files, options),
        t if trident_llama::MODEL_TYPES.contains(&t) => trident_llama::generator(files, options),
        "bloom" => trident_bloom::generator(files, options),
        other => Err(Error::config(
            config,
            format!(
                "model_type '{other}' is not a decoder-only model Trident generates with (it loads {})",
                CAUSAL_MODEL_TYPES.join(", ")
            ),
        )),
    }
}
