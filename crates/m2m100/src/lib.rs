//! trident-m2m100: M2M100 and NLLB-200 translation models ([`M2M100ForConditionalGeneration`],
//! `facebook/m2m100_418M`, `facebook/nllb-200-distilled-600M`).
//!
//! M2M100 is BART's encoder-decoder (transformers copies its classes from BART) with fairseq's
//! quirks, listed in [`LAYOUT`]; this crate holds them and builds `trident-bart`'s model with
//! them. The languages are tokens of the vocabulary: the source language's token starts the
//! input, and the target language's is forced as the first generated token
//! (`forced_bos_token_id`); core's translation pipeline does both.

use tch::{Device, Tensor};
use trident_bart::{BartForConditionalGeneration, Layout, PositionStyle};
use trident_core::generation::Seq2SeqLm;
use trident_core::nn::{LayerCache, NormPosition};
use trident_core::{Dtype, ModelFiles, Result};

/// M2M100's differences from BART: pre-LN blocks with a final `layer_norm` per stack;
/// fairseq's sinusoidal positions counted from `pad_token_id + 1` over the non-padding
/// tokens; no `layernorm_embedding`. (Embeddings are scaled by √d_model through
/// `scale_embedding`; there is no `final_logits_bias`.)
pub const LAYOUT: Layout = Layout {
    norm_position: NormPosition::Pre,
    positions: PositionStyle::SinusoidalFairseq,
    layernorm_embedding: false,
    final_layer_norm: true,
};

/// `M2M100ForConditionalGeneration` (also NLLB-200's class).
#[derive(Debug)]
pub struct M2M100ForConditionalGeneration {
    /// The encoder-decoder, with M2M100's [`LAYOUT`].
    pub model: BartForConditionalGeneration,
}

impl M2M100ForConditionalGeneration {
    /// Load an M2M100 or NLLB checkpoint onto `device`, computing in `dtype`.
    pub fn from_pretrained(files: &ModelFiles, device: Device, dtype: Dtype) -> Result<Self> {
        Ok(M2M100ForConditionalGeneration {
            model: BartForConditionalGeneration::from_pretrained_with(
                files, device, dtype, LAYOUT,
            )?,
        })
    }
}

impl Seq2SeqLm for M2M100ForConditionalGeneration {
    fn device(&self) -> Device {
        self.model.device()
    }

    fn num_decoder_layers(&self) -> usize {
        self.model.num_decoder_layers()
    }

    fn decoder_start_token_id(&self) -> i64 {
        self.model.decoder_start_token_id()
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
