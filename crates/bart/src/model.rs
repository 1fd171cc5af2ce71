//! BartForConditionalGeneration: an encoder and a decoder of post-LN transformer layers over one
//! shared token embedding, with learned absolute positions, and a head tied to the embedding
//! plus a fixed bias.
//!
//! ```text
//! ids ─► shared(ids)·embed_scale + embed_positions(p + 2) ─► layernorm_embedding
//!     ─► N × layers.{i}: [ x = LN(x + self_attn(x)); (x = LN(x + encoder_attn(x, enc));)
//!                          x = LN(x + fc2(act(fc1(x)))) ]
//!     ─► (decoder) lm_head (= sharedᵀ) + final_logits_bias ─► next-token logits
//! ```
//!
//! Marian and M2M100/NLLB are BART's code with other quirks (transformers copies its classes
//! from BART's): sinusoidal positions of two kinds, pre-LN with a final norm per stack, no
//! embedding norm. [`Layout`] names those differences, and the `trident-marian` and
//! `trident-m2m100` crates build this model with theirs. Names are Hugging Face's
//! (`model.encoder.layers.0.self_attn.q_proj`, `fc1`, `final_layer_norm`, …).

use crate::config::{BartConfig, LAYER_NORM_EPS};
use tch::{Device, Kind, Tensor};
use trident_core::generation::Seq2SeqLm;
use trident_core::nn::probe;
use trident_core::nn::{
    mask, AttentionContext, Embedding, FeedForward, LayerCache, LayerContext, Linear,
    MultiHeadAttention, Norm, NormPosition, Packing, Projections, TransformerLayer,
};
use trident_core::{Dtype, Error, ModelFiles, Result, WeightPath, Weights};

/// How a family places tokens in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionStyle {
    /// BART: a learned table; position `p` reads row `p + 2` (fairseq kept two rows for
    /// padding and start).
    Learned,
    /// Marian: the fixed sinusoid table with every sine in the first half of the vector and
    /// every cosine in the second (not interleaved), positions from 0.
    SinusoidalHalves,
    /// M2M100 / NLLB (fairseq): sines then cosines with frequencies `10000^(-i/(half-1))`;
    /// a token's position counts the non-padding tokens up to it, from `pad + 1`, and a
    /// padding token gets the zero vector.
    SinusoidalFairseq,
}

/// What differs between BART and the families built on its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Post-LN (BART, Marian) or pre-LN (M2M100, NLLB, mBART).
    pub norm_position: NormPosition,
    /// How positions are added.
    pub positions: PositionStyle,
    /// A LayerNorm right after the embeddings (`layernorm_embedding`, BART).
    pub layernorm_embedding: bool,
    /// A LayerNorm at the end of each stack (`layer_norm`, the pre-LN families).
    pub final_layer_norm: bool,
}

impl Layout {
    /// BART and distilbart.
    pub const BART: Layout = Layout {
        norm_position: NormPosition::Post,
        positions: PositionStyle::Learned,
        layernorm_embedding: true,
        final_layer_norm: false,
    };
}

/// The position vectors of one stack.
#[derive(Debug)]
enum Positions {
    /// `embed_positions`, `[max_position_embeddings + 2, d_model]`.
    Learned(Embedding),
    /// A fixed table `[max_position_embeddings, d_model]`.
    Table(Embedding),
    /// Computed for the positions at hand (the table grows without limit in transformers).
    Fairseq { padding_idx: i64, dim: i64 },
}

impl Positions {
    fn new(p: &WeightPath, c: &BartConfig, style: PositionStyle) -> Result<Self> {
        Ok(match style {
            PositionStyle::Learned => Positions::Learned(
                Embedding::new(
                    &(p / "embed_positions"),
                    c.max_position_embeddings + 2,
                    c.d_model,
                )?
                .indexed_by("position + 2", "max_position_embeddings + 2"),
            ),
            PositionStyle::SinusoidalHalves => {
                let table = sinusoid_halves(c.max_position_embeddings, c.d_model)?
                    .f_to_kind(p.weights().float_kind())?
                    .f_to(p.weights().device())?;
                Positions::Table(
                    Embedding::from_weight(table).indexed_by("position", "max_position_embeddings"),
                )
            }
            PositionStyle::SinusoidalFairseq => Positions::Fairseq {
                padding_idx: c.pad_token_id,
                dim: c.d_model,
            },
        })
    }

    /// Position vectors `[batch or 1, n, d_model]` of `ids` `[batch, n]` following `past`
    /// cached positions.
    fn forward(&self, ids: &Tensor, past: i64, kind: Kind) -> Result<Tensor> {
        let n = ids.size()[1];
        let device = ids.device();
        let arange = || Tensor::f_arange_start(past, past + n, (Kind::Int64, device));
        Ok(match self {
            Positions::Learned(table) => {
                table.forward(&arange()?.f_add_scalar(2)?)?.f_unsqueeze(0)?
            }
            Positions::Table(table) => table.forward(&arange()?)?.f_unsqueeze(0)?,
            Positions::Fairseq { padding_idx, dim } => {
                // [batch, n]: pad + 1 + (non-padding tokens so far), padding tokens at pad.
                let real = ids.f_ne(*padding_idx)?.f_to_kind(Kind::Int64)?;
                let positions = real
                    .f_cumsum(1, Kind::Int64)?
                    .f_add_scalar(past)?
                    .f_mul(&real)?
                    .f_add_scalar(*padding_idx)?;
                fairseq_sinusoids(&positions, *padding_idx, *dim)?.f_to_kind(kind)?
            }
        })
    }
}

/// Marian's table `[n_pos, dim]`: column `j < dim/2` is `sin(p / 10000^(2j/dim))`, column
/// `dim/2 + j` is `cos(p / 10000^(2j/dim))` (computed in f64, as transformers does with numpy).
pub fn sinusoid_halves(n_pos: i64, dim: i64) -> Result<Tensor> {
    let options = (Kind::Double, Device::Cpu);
    let pos = Tensor::f_arange(n_pos, options)?.f_unsqueeze(1)?; // [n_pos, 1]
                                                                 // p / 10000^(2k/dim) for the k-th sine (and the k-th cosine).
    let angles = |count: i64| -> Result<Tensor> {
        let exponent = Tensor::f_arange(count, options)?.f_mul_scalar(2.0 / dim as f64)?;
        Ok(pos.f_div(&Tensor::f_pow_scalar(10000.0, &exponent)?.f_unsqueeze(0)?)?)
    };
    let sin = angles((dim + 1) / 2)?.f_sin()?; // [n_pos, ⌈dim/2⌉]
    let cos = angles(dim / 2)?.f_cos()?; // [n_pos, ⌊dim/2⌋]
    Ok(Tensor::f_cat(&[sin, cos], 1)?.f_to_kind(Kind::Float)?)
}

/// fairseq's sinusoids for `positions` (any shape) → `[..., dim]`, float32 throughout as in
/// transformers' M2M100 (`sin` in the first half, `cos` in the second, a zero column for an
/// odd width, the zero vector at `padding_idx`).
pub fn fairseq_sinusoids(positions: &Tensor, padding_idx: i64, dim: i64) -> Result<Tensor> {
    let half = dim / 2;
    let step = 10000f64.ln() / (half - 1).max(1) as f64;
    let freq = Tensor::f_arange(half, (Kind::Float, positions.device()))?
        .f_mul_scalar(-step)?
        .f_exp()?; // [half]
    let angles = positions
        .f_to_kind(Kind::Float)?
        .f_unsqueeze(-1)?
        .f_mul(&freq)?; // [..., half]
    let mut parts = vec![angles.f_sin()?, angles.f_cos()?];
    if dim % 2 == 1 {
        parts.push(angles.f_narrow(-1, 0, 1)?.f_zeros_like()?);
    }
    let table = Tensor::f_cat(&parts, -1)?;
    let real = positions.f_ne(padding_idx)?.f_unsqueeze(-1)?;
    Ok(table.f_mul(&real.f_to_kind(Kind::Float)?)?)
}

/// `p.{q,k,v,out}_proj`: attention with biases and the usual `1/√head_dim` scaling.
fn attention(p: &WeightPath, d_model: i64, heads: i64) -> Result<MultiHeadAttention> {
    let projections = Projections::Separate {
        q: Linear::new(&(p / "q_proj"), d_model, d_model, true)?,
        k: Linear::new(&(p / "k_proj"), d_model, d_model, true)?,
        v: Linear::new(&(p / "v_proj"), d_model, d_model, true)?,
    };
    let out = Linear::new(&(p / "out_proj"), d_model, d_model, true)?;
    Ok(MultiHeadAttention::new(
        projections,
        out,
        heads,
        d_model / heads,
    ))
}

fn layer_norm(p: &WeightPath, c: &BartConfig) -> Result<Norm> {
    Norm::layer_norm(p, c.d_model, LAYER_NORM_EPS)
}

/// One stack, `model.encoder` or `model.decoder`.
#[derive(Debug)]
pub struct BartStack {
    /// `embed_tokens` (the shared table unless Marian keeps separate vocabularies).
    pub embed_tokens: Embedding,
    /// √d_model or 1.
    pub embed_scale: f64,
    embed_positions: Positions,
    /// `layernorm_embedding` (BART).
    pub layernorm_embedding: Option<Norm>,
    /// `layers.{i}`.
    pub layers: Vec<TransformerLayer>,
    /// `layer_norm` at the end (pre-LN families).
    pub layer_norm: Option<Norm>,
}

impl BartStack {
    fn new(
        p: &WeightPath,
        c: &BartConfig,
        layout: Layout,
        embed_tokens: Embedding,
        is_decoder: bool,
    ) -> Result<Self> {
        let (count, heads, ffn) = if is_decoder {
            (
                c.decoder_layers,
                c.decoder_attention_heads,
                c.decoder_ffn_dim,
            )
        } else {
            (
                c.encoder_layers,
                c.encoder_attention_heads,
                c.encoder_ffn_dim,
            )
        };
        let activation = c.activation()?;
        let layers = (0..count)
            .map(|i| {
                let l = p / "layers" / i;
                let cross_attention = if is_decoder {
                    Some((
                        attention(&(&l / "encoder_attn"), c.d_model, heads)?,
                        layer_norm(&(&l / "encoder_attn_layer_norm"), c)?,
                    ))
                } else {
                    None
                };
                Ok(TransformerLayer {
                    self_attention: attention(&(&l / "self_attn"), c.d_model, heads)?,
                    self_attention_norm: layer_norm(&(&l / "self_attn_layer_norm"), c)?,
                    cross_attention,
                    feed_forward: FeedForward::new(
                        Linear::new(&(&l / "fc1"), c.d_model, ffn, true)?,
                        Linear::new(&(&l / "fc2"), ffn, c.d_model, true)?,
                        activation,
                    ),
                    feed_forward_norm: layer_norm(&(&l / "final_layer_norm"), c)?,
                    norm_position: layout.norm_position,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BartStack {
            embed_tokens,
            embed_scale: c.embed_scale(),
            embed_positions: Positions::new(p, c, layout.positions)?,
            layernorm_embedding: layout
                .layernorm_embedding
                .then(|| layer_norm(&(p / "layernorm_embedding"), c))
                .transpose()?,
            layers,
            layer_norm: layout
                .final_layer_norm
                .then(|| layer_norm(&(p / "layer_norm"), c))
                .transpose()?,
        })
    }

    /// `[batch, n]` ids → `[batch, n, d_model]`; see [`BartForConditionalGeneration::decode_hidden`]
    /// for the arguments. With a `packing` (an encoder's), the layers run on the real tokens
    /// only and the result is `[tokens, d_model]`.
    fn forward(
        &self,
        ids: &Tensor,
        self_mask: Option<&Tensor>,
        encoder: Option<(&Tensor, &Tensor, i64)>,
        mut caches: Option<&mut [LayerCache]>,
        packing: Option<&Packing>,
    ) -> Result<Tensor> {
        let past = LayerCache::cached_len(caches.as_deref());
        // [batch, n, d_model]: token meaning (scaled) plus position.
        let tokens = self.embed_tokens.forward(ids)?;
        let tokens = if self.embed_scale != 1.0 {
            tokens.f_mul_scalar(self.embed_scale)?
        } else {
            tokens
        };
        let positions = self.embed_positions.forward(ids, past, tokens.kind())?;
        probe::embeddings(&tokens, Some(&positions));
        let mut x = tokens.f_add(&positions)?;
        if let Some(norm) = &self.layernorm_embedding {
            x = norm.forward(&x)?;
        }
        if let Some(packing) = packing {
            x = packing.pack(&x)?; // [tokens, d_model]
        }
        let ctx = LayerContext {
            self_attention: AttentionContext {
                mask: self_mask,
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
        for (i, layer) in self.layers.iter().enumerate() {
            let cache = caches.as_deref_mut().and_then(|c| c.get_mut(i));
            x = layer.forward(&x, &ctx, cache)?;
        }
        match &self.layer_norm {
            Some(norm) => norm.forward(&x),
            None => Ok(x),
        }
    }
}

pub use trident_core::seq2seq::Seq2SeqOutput;

/// BART (and, with their [`Layout`], Marian and M2M100) with its language-model head.
#[derive(Debug)]
pub struct BartForConditionalGeneration {
    /// `model.encoder`.
    pub encoder: BartStack,
    /// `model.decoder`.
    pub decoder: BartStack,
    /// `lm_head`: the decoder's token table itself.
    pub lm_head: Linear,
    /// `final_logits_bias` `[vocab]`, when the checkpoint has one.
    pub final_logits_bias: Option<Tensor>,
    /// The configuration.
    pub config: BartConfig,
    /// The family's quirks.
    pub layout: Layout,
    device: Device,
}

// SAFETY: as for core's `Linear` (docs/ARCHITECTURE.md, "Loaded model and request"): the
// bias tensor is written only while the model is built and read out of place afterwards.
unsafe impl Sync for BartForConditionalGeneration {}

impl BartForConditionalGeneration {
    /// Load a BART checkpoint (config.json, safetensors) onto `device`, computing in `dtype`.
    pub fn from_pretrained(files: &ModelFiles, device: Device, dtype: Dtype) -> Result<Self> {
        Self::from_pretrained_with(files, device, dtype, Layout::BART)
    }

    /// Load a checkpoint of BART's code with a family's `layout` (Marian, M2M100).
    pub fn from_pretrained_with(
        files: &ModelFiles,
        device: Device,
        dtype: Dtype,
        layout: Layout,
    ) -> Result<Self> {
        let config = BartConfig::from_file(&files.get("config.json")?)?;
        let weights = Weights::open(files, device, dtype)?;
        let model = Self::load(config, layout, &weights)?;
        weights.finish()?;
        Ok(model)
    }

    /// Build the model from `config` and `layout`, reading its weights from `weights`.
    pub fn load(config: BartConfig, layout: Layout, weights: &Weights) -> Result<Self> {
        let root = weights.root();
        let m = &root / "model";
        let c = &config;
        let shared = Embedding::vocabulary(&(&m / "shared"), c.vocab_size, c.d_model)?
            .indexed_by("token id", "vocab_size");
        // Marian with separate vocabularies keeps the decoder's own table.
        let decoder_tokens = if c.share_encoder_decoder_embeddings {
            shared.shared()
        } else {
            Embedding::vocabulary(
                &(&m / "decoder" / "embed_tokens"),
                c.target_vocab_size(),
                c.d_model,
            )?
            .indexed_by("token id", "decoder_vocab_size")
        };
        let lm_head = if c.tie_word_embeddings {
            Linear::tied(&decoder_tokens, weights.dtype())?
        } else {
            Linear::new(
                &(&root / "lm_head"),
                c.d_model,
                c.target_vocab_size(),
                false,
            )?
        };
        let final_logits_bias = if root.contains("final_logits_bias") {
            let bias = root.param("final_logits_bias", &[1, c.target_vocab_size()])?;
            Some(bias.f_view([-1])?.f_to_kind(Kind::Float)?)
        } else {
            None
        };
        Ok(BartForConditionalGeneration {
            encoder: BartStack::new(&(&m / "encoder"), c, layout, shared, false)?,
            decoder: BartStack::new(&(&m / "decoder"), c, layout, decoder_tokens, true)?,
            lm_head,
            final_logits_bias,
            layout,
            device: weights.device(),
            config,
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

    /// The head: `[…, d_model]` → `[…, vocab]` f32 logits, `final_logits_bias` added.
    pub fn lm_logits(&self, decoder_hidden: &Tensor) -> Result<Tensor> {
        let logits = self
            .lm_head
            .forward(decoder_hidden)?
            .f_to_kind(Kind::Float)?;
        Ok(match &self.final_logits_bias {
            // In place where nothing needs the head's own output (no gradient flows): a beam
            // step's logits are `[batch·beams, vocab]`, 60 MB at 256 rows of OPUS-MT's
            // 58k, and a second tensor of that size per step is fresh memory to fault in.
            Some(bias) if !logits.requires_grad() => {
                let mut logits = logits;
                let _ = logits.f_add_(bias)?;
                logits
            }
            Some(bias) => logits.f_add(bias)?,
            None => logits,
        })
    }

    /// A full forward pass without caches (teacher forcing on `decoder_input_ids`).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        decoder_input_ids: &Tensor,
    ) -> Result<Seq2SeqOutput> {
        let (input_ids, attention_mask, decoder_input_ids) = (
            input_ids.f_to(self.device)?,
            attention_mask.f_to(self.device)?,
            decoder_input_ids.f_to(self.device)?,
        );
        let encoder_last_hidden_state = self.encode(&input_ids, &attention_mask)?;
        let decoder_last_hidden_state = self.decode_hidden(
            &decoder_input_ids,
            &encoder_last_hidden_state,
            &Self::encoder_mask(&attention_mask)?,
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
}

impl Seq2SeqLm for BartForConditionalGeneration {
    fn device(&self) -> Device {
        self.device
    }

    fn num_decoder_layers(&self) -> usize {
        self.decoder.layers.len()
    }

    fn decoder_start_token_id(&self) -> i64 {
        self.config.decoder_start()
    }

    fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.encode_unpadded(input_ids, attention_mask)
    }

    fn max_input_positions(&self) -> Option<usize> {
        match self.layout.positions {
            PositionStyle::Learned | PositionStyle::SinusoidalHalves => {
                Some(self.config.max_position_embeddings as usize)
            }
            PositionStyle::SinusoidalFairseq => None,
        }
    }

    fn next_logits(
        &self,
        ids: &Tensor,
        encoder_hidden: &Tensor,
        encoder_mask: &Tensor,
        groups: i64,
        caches: &mut [LayerCache],
    ) -> Result<Tensor> {
        if caches.len() != self.decoder.layers.len() {
            return Err(Error::Input(format!(
                "{} caches for {} decoder layers",
                caches.len(),
                self.decoder.layers.len()
            )));
        }
        let hidden = self.decode_hidden(ids, encoder_hidden, encoder_mask, groups, Some(caches))?;
        let last = hidden.f_select(1, hidden.size()[1] - 1)?; // [rows, d_model]
        self.lm_logits(&last)
    }
}
