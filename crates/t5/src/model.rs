//! T5ForConditionalGeneration: an encoder stack and a decoder stack of pre-norm transformer
//! layers sharing one embedding, with T5's relative position bias instead of absolute
//! positions, and a language-model head.
//!
//! What sets T5 apart (its quirks, in the sense of docs/ARCHITECTURE.md's checklist): RMSNorm without bias; attention without the
//! 1/√d scaling (folded into the initialisation); the position bias is computed by the first
//! block of each stack and added in every block, from bidirectional buckets in the encoder
//! and causal ones in the decoder; v1.0 ties `lm_head` to `shared` and rescales the decoder
//! output by `d_model^-0.5` first, v1.1/flan-t5 has its own `lm_head` and a gated-GELU FFN.

use crate::config::T5Config;
use std::path::Path;
use tch::{Device, Kind, Tensor};
use trident_core::generation::Seq2SeqLm;
use trident_core::nn::probe;
use trident_core::nn::{
    mask, AttentionContext, Embedding, FeedForward, LayerCache, LayerContext, Linear,
    MultiHeadAttention, Norm, NormPosition, Packing, Projections, RelativePositionBias,
    TransformerLayer,
};
use trident_core::{Dtype, ModelFiles, Result, WeightPath, Weights};

/// `p.{q,k,v,o}`: T5Attention, unscaled, without biases.
fn attention(p: &WeightPath, c: &T5Config) -> Result<MultiHeadAttention> {
    let inner = c.num_heads * c.d_kv;
    let projections = Projections::Separate {
        q: Linear::new(&(p / "q"), c.d_model, inner, false)?,
        k: Linear::new(&(p / "k"), c.d_model, inner, false)?,
        v: Linear::new(&(p / "v"), c.d_model, inner, false)?,
    };
    let out = Linear::new(&(p / "o"), inner, c.d_model, false)?;
    Ok(MultiHeadAttention::new(projections, out, c.num_heads, c.d_kv).with_scale(1.0))
}

/// `p.DenseReluDense`: `wo(act(wi(x)))`, or gated `wo(act(wi_0(x)) · wi_1(x))`.
fn feed_forward(p: &WeightPath, c: &T5Config, config_path: &Path) -> Result<FeedForward> {
    let p = p / "DenseReluDense";
    let (activation, gated) = c.feed_forward(config_path)?;
    let wo = Linear::new(&(&p / "wo"), c.d_ff, c.d_model, false)?;
    Ok(if gated {
        FeedForward::gated(
            Linear::new(&(&p / "wi_0"), c.d_model, c.d_ff, false)?,
            Linear::new(&(&p / "wi_1"), c.d_model, c.d_ff, false)?,
            wo,
            activation,
        )
    } else {
        FeedForward::new(
            Linear::new(&(&p / "wi"), c.d_model, c.d_ff, false)?,
            wo,
            activation,
        )
    })
}

fn rms_norm(p: &WeightPath, c: &T5Config) -> Result<Norm> {
    Norm::rms_norm(p, c.d_model, c.layer_norm_epsilon)
}

/// One stack (`encoder` or `decoder`): blocks, the shared position bias, a final norm.
#[derive(Debug)]
pub struct T5Stack {
    /// `shared`, the token embedding both stacks use.
    pub embed_tokens: Embedding,
    /// `block.{i}`: self-attention (+ cross-attention in the decoder) and feed-forward.
    pub block: Vec<TransformerLayer>,
    /// `block.0.layer.0.SelfAttention.relative_attention_bias`, used by every block.
    pub relative_attention_bias: RelativePositionBias,
    /// `final_layer_norm`.
    pub final_layer_norm: Norm,
}

impl T5Stack {
    fn new(
        p: &WeightPath,
        c: &T5Config,
        shared: &Embedding,
        is_decoder: bool,
        config_path: &Path,
    ) -> Result<Self> {
        let layers = if is_decoder {
            c.decoder_layers()
        } else {
            c.num_layers
        };
        let mut block = Vec::with_capacity(layers as usize);
        for i in 0..layers {
            let b = p / "block" / i;
            // Sublayers are numbered: 0 self-attention, (1 cross-attention,) then the FFN.
            let cross_attention = if is_decoder {
                let l = &b / "layer" / 1;
                Some((
                    attention(&(&l / "EncDecAttention"), c)?,
                    rms_norm(&(&l / "layer_norm"), c)?,
                ))
            } else {
                None
            };
            let ff = &b / "layer" / if is_decoder { 2 } else { 1 };
            let sa = &b / "layer" / 0;
            block.push(TransformerLayer {
                self_attention: attention(&(&sa / "SelfAttention"), c)?,
                self_attention_norm: rms_norm(&(&sa / "layer_norm"), c)?,
                cross_attention,
                feed_forward: feed_forward(&ff, c, config_path)?,
                feed_forward_norm: rms_norm(&(&ff / "layer_norm"), c)?,
                norm_position: NormPosition::Pre,
            });
        }
        let bias_path = p / "block" / 0 / "layer" / 0 / "SelfAttention" / "relative_attention_bias";
        Ok(T5Stack {
            embed_tokens: shared.shared(),
            block,
            relative_attention_bias: RelativePositionBias {
                embedding: Embedding::new(
                    &bias_path,
                    c.relative_attention_num_buckets,
                    c.num_heads,
                )?,
                bidirectional: !is_decoder,
                num_buckets: c.relative_attention_num_buckets,
                max_distance: c.relative_attention_max_distance,
            },
            final_layer_norm: rms_norm(&(p / "final_layer_norm"), c)?,
        })
    }

    /// `[batch, n]` ids → `[batch, n, d_model]`.
    ///
    /// - `self_mask`: additive `[batch or 1, 1, n, k]` (padding for the encoder, causal for
    ///   the decoder; None when every key may be seen);
    /// - `encoder`: the encoder output, its additive `[inputs, 1, 1, src]` mask and the decoder
    ///   rows per input (decoder);
    /// - `caches`: one per block, for incremental decoding; positions continue from their
    ///   length;
    /// - `packing`: the encoder's blocks run on the real tokens only, and the result is
    ///   `[tokens, d_model]`.
    fn forward(
        &self,
        ids: &Tensor,
        self_mask: Option<&Tensor>,
        encoder: Option<(&Tensor, &Tensor, i64)>,
        mut caches: Option<&mut [LayerCache]>,
        packing: Option<&Packing>,
    ) -> Result<Tensor> {
        let n = ids.size()[1];
        let offset = LayerCache::cached_len(caches.as_deref());
        // [1, heads, n, offset+n], shared by every block and every row; the attention adds
        // each row's mask to it (row by row where the whole batch's sum would be large).
        let bias = self
            .relative_attention_bias
            .forward(n, offset + n, offset)?;
        let ctx = LayerContext {
            self_attention: AttentionContext {
                mask: self_mask,
                position_bias: Some(&bias),
                packing,
                ..Default::default()
            },
            encoder_hidden: encoder.map(|(h, _, _)| h),
            cross_attention: AttentionContext {
                mask: encoder.map(|(_, m, _)| m),
                groups: encoder.map_or(1, |(_, _, g)| g),
                ..Default::default()
            },
        };
        let mut x = self.embed_tokens.forward(ids)?; // [batch, n, d_model]
        probe::embeddings(&x, None); // positions act in attention, as the bias above
        if let Some(packing) = packing {
            x = packing.pack(&x)?; // [tokens, d_model]
        }
        for (i, layer) in self.block.iter().enumerate() {
            let cache = caches.as_deref_mut().and_then(|c| c.get_mut(i));
            x = layer.forward(&x, &ctx, cache)?;
        }
        self.final_layer_norm.forward(&x)
    }
}

pub use trident_core::seq2seq::Seq2SeqOutput;

/// T5 with its language-model head, as transformers' `T5ForConditionalGeneration`.
#[derive(Debug)]
pub struct T5ForConditionalGeneration {
    /// `shared`: the token embedding of both stacks.
    pub shared: Embedding,
    /// `encoder.*`.
    pub encoder: T5Stack,
    /// `decoder.*`.
    pub decoder: T5Stack,
    /// `lm_head`, or `shared` itself when tied.
    pub lm_head: Linear,
    /// The configuration.
    pub config: T5Config,
    device: Device,
}

impl T5ForConditionalGeneration {
    /// Load config.json and the weights of `files` onto `device`.
    pub fn from_pretrained(files: &ModelFiles, device: Device, dtype: Dtype) -> Result<Self> {
        let config_path = files.get("config.json")?;
        let config = T5Config::from_file(&config_path)?;
        let weights = Weights::open(files, device, dtype)?;
        let model = Self::load(config, &config_path, &weights)?;
        weights.finish()?;
        Ok(model)
    }

    /// Build the model from `config`, reading its weights from `weights` (`config_path` is
    /// named in errors). Call [`Weights::finish`] afterwards to hear of missing tensors.
    pub fn load(config: T5Config, config_path: &Path, weights: &Weights) -> Result<Self> {
        let root = weights.root();
        let c = &config;
        let shared = Embedding::vocabulary(&(&root / "shared"), c.vocab_size, c.d_model)?
            .indexed_by("token id", "vocab_size");
        let encoder = T5Stack::new(&(&root / "encoder"), c, &shared, false, config_path)?;
        let decoder = T5Stack::new(&(&root / "decoder"), c, &shared, true, config_path)?;
        let lm_head = if c.tie_word_embeddings {
            Linear::tied(&shared, weights.dtype())?
        } else {
            Linear::new(&(&root / "lm_head"), c.d_model, c.vocab_size, false)?
        };
        Ok(T5ForConditionalGeneration {
            shared,
            encoder,
            decoder,
            lm_head,
            config,
            device: weights.device(),
        })
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The additive cross-attention mask `[batch, 1, 1, src]` of a 1/0 attention mask.
    pub fn encoder_mask(attention_mask: &Tensor) -> Result<Tensor> {
        mask::padding_mask(attention_mask, Kind::Float)
    }

    /// Encoder: `[batch, src]` ids and 1/0 mask → `[batch, src, d_model]`.
    pub fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let self_mask = Self::encoder_mask(attention_mask)?;
        self.encoder
            .forward(input_ids, Some(&self_mask), None, None, None)
    }

    /// [`encode`](Self::encode) on the real tokens only: every projection and feed-forward
    /// network skips the batch's padding ([`Packing`]). Real tokens get `encode`'s values;
    /// padded positions are not computed and hold zeros, which every cross-attention masks.
    /// What generation runs. A batch with little padding runs [`encode`](Self::encode)
    /// ([`Packing::unpadded`]).
    pub fn encode_unpadded(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let self_mask = Self::encoder_mask(attention_mask)?;
        Packing::unpadded(attention_mask, |packing| {
            self.encoder
                .forward(input_ids, Some(&self_mask), None, None, packing)
        })
    }

    /// Decoder hidden states `[batch, n, d_model]` for `decoder_ids` `[batch, n]`, given the
    /// encoder output and its additive mask (one row per `groups` decoder rows). With
    /// `caches`, `decoder_ids` continue the cached positions and their keys/values are
    /// appended.
    pub fn decode_hidden(
        &self,
        decoder_ids: &Tensor,
        encoder_hidden: &Tensor,
        encoder_mask: &Tensor,
        groups: i64,
        caches: Option<&mut [LayerCache]>,
    ) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let past = LayerCache::cached_len(caches.as_deref());
        let causal = mask::decoder_self_mask(decoder_ids.size()[1], past, self.device)?;
        self.decoder.forward(
            decoder_ids,
            causal.as_ref(),
            Some((encoder_hidden, encoder_mask, groups)),
            caches,
            None,
        )
    }

    /// The language-model head: `[…, d_model]` → `[…, vocab]`.
    /// Logits are f32 whatever the model computes in.
    pub fn lm_logits(&self, decoder_hidden: &Tensor) -> Result<Tensor> {
        let logits = if self.config.rescales_decoder_output() {
            // Tied weights: rescale as Mesh TensorFlow did before the shared projection.
            self.lm_head
                .forward(&decoder_hidden.f_mul_scalar((self.config.d_model as f64).powf(-0.5))?)?
        } else {
            self.lm_head.forward(decoder_hidden)?
        };
        Ok(logits.f_to_kind(Kind::Float)?)
    }

    /// A full forward pass without caches (teacher forcing on `decoder_input_ids`).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        decoder_input_ids: &Tensor,
    ) -> Result<Seq2SeqOutput> {
        let encoder_last_hidden_state = self.encode(input_ids, attention_mask)?;
        let decoder_last_hidden_state = self.decode_hidden(
            decoder_input_ids,
            &encoder_last_hidden_state,
            &Self::encoder_mask(attention_mask)?,
            1,
            None,
        )?;
        let logits = self.lm_logits(&decoder_last_hidden_state)?;
        Ok(Seq2SeqOutput {
            encoder_last_hidden_state,
            decoder_last_hidden_state,
            logits,
        })
    }

    /// Empty caches, one per decoder block.
    pub fn new_caches(&self) -> Vec<LayerCache> {
        self.decoder
            .block
            .iter()
            .map(|_| LayerCache::default())
            .collect()
    }
}

impl Seq2SeqLm for T5ForConditionalGeneration {
    fn device(&self) -> Device {
        self.device
    }

    fn num_decoder_layers(&self) -> usize {
        self.decoder.block.len()
    }

    fn decoder_start_token_id(&self) -> i64 {
        self.config.decoder_start()
    }

    fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.encode_unpadded(input_ids, attention_mask)
    }

    fn next_logits(
        &self,
        ids: &Tensor,
        encoder_hidden: &Tensor,
        encoder_mask: &Tensor,
        groups: i64,
        caches: &mut [LayerCache],
    ) -> Result<Tensor> {
        let hidden = self.decode_hidden(ids, encoder_hidden, encoder_mask, groups, Some(caches))?;
        let last = hidden.f_select(1, hidden.size()[1] - 1)?; // [rows, d_model]
        self.lm_logits(&last)
    }
}
