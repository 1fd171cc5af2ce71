//! trident-marian: Marian / OPUS-MT translation models ([`MarianMTModel`],
//! `Helsinki-NLP/opus-mt-{src}-{tgt}`).
//!
//! Marian is BART's encoder-decoder (transformers copies its classes from BART) with its own
//! quirks, listed in [`LAYOUT`] and [`MarianMTModel`]'s doc; this crate holds them and builds
//! `trident-bart`'s model with them. Its tokenizer (separate source and target SentencePiece
//! models with one `vocab.json`) is read by core's `TextEncoder`.

use tch::{Device, Tensor};
use trident_bart::{BartForConditionalGeneration, Layout, PositionStyle};
use trident_core::generation::Seq2SeqLm;
use trident_core::nn::{LayerCache, NormPosition};
use trident_core::{Dtype, ModelFiles, Result};

/// Marian's differences from BART: sinusoidal positions with sines in the first half of the
/// vector and cosines in the second, not learned; no `layernorm_embedding`; post-LN like BART.
/// (Embeddings are scaled by √d_model through config.json's `scale_embedding`, and
/// `final_logits_bias` is added to the logits, as in BART.)
pub const LAYOUT: Layout = Layout {
    norm_position: NormPosition::Post,
    positions: PositionStyle::SinusoidalHalves,
    layernorm_embedding: false,
    final_layer_norm: false,
};

/// `MarianMTModel`: an OPUS-MT translation model. Decoding starts with the pad token
/// (`decoder_start_token_id`), and the published generation_config.json forbids generating
/// it (`bad_words_ids: [[pad]]`); both come from the checkpoint.
#[derive(Debug)]
pub struct MarianMTModel {
    /// The encoder-decoder, with Marian's [`LAYOUT`].
    pub model: BartForConditionalGeneration,
}

impl MarianMTModel {
    /// Load an OPUS-MT checkpoint onto `device`, computing in `dtype`.
    pub fn from_pretrained(files: &ModelFiles, device: Device, dtype: Dtype) -> Result<Self> {
        Ok(MarianMTModel {
            model: BartForConditionalGeneration::from_pretrained_with(
                files, device, dtype, LAYOUT,
            )?,
        })
    }
}

impl Seq2SeqLm for MarianMTModel {
    fn device(&self) -> Device {
        self.model.device()
    }

    fn num_decoder_layers(&self) -> usize {
        self.model.num_decoder_layers()
    }

    fn decoder_start_token_id(&self) -> i64 {
        self.model
            .config
            .decoder_start_token_id
            .unwrap_or(self.model.config.pad_token_id)
    }

    fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.model.encode(input_ids, attention_mask)
    }

    fn max_input_positions(&self) -> Option<usize> {
        self.model.max_input_positions()
    }

    fn next_logits(
        &self,
        ids: &Tensor,
        encoder_hidden: &Tensor,
        encoder_mask: &Tensor,
        groups: i64,
        caches: &mut [LayerCache],
    ) -> Result<Tensor> {
        self.model
            .next_logits(ids, encoder_hidden, encoder_mask, groups, caches)
    }
}
