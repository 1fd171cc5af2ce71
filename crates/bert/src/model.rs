//! The BERT-family encoder: embeddings, then a stack of post-LN transformer layers.
//!
//! ```text
//! ids ─► word + position (+ token type) embeddings ─► LayerNorm
//!     ─► N × [ x = LN(x + SelfAttention(x)); x = LN(x + FFN(x)) ] ─► hidden states
//! ```

use crate::config::{EncoderConfig, Family};
use tch::{Kind, Tensor};
use trident_core::nn::mask::padding_mask;
use trident_core::nn::probe;
use trident_core::nn::{
    AttentionContext, Embedding, FeedForward, LayerContext, Linear, MultiHeadAttention, Norm,
    NormPosition, Packing, Projections, SublayerDropout, TransformerLayer,
};
use trident_core::{Result, WeightPath};

/// Token, position and token-type embeddings, summed and normalised.
#[derive(Debug)]
pub struct Embeddings {
    /// `word_embeddings`, `[vocab, hidden]`.
    pub word_embeddings: Embedding,
    /// `position_embeddings`, `[max_positions, hidden]`.
    pub position_embeddings: Embedding,
    /// `token_type_embeddings`, absent in DistilBERT.
    pub token_type_embeddings: Option<Embedding>,
    /// `LayerNorm`.
    pub layer_norm: Norm,
    /// RoBERTa counts positions from `pad_token_id + 1`, skipping padding.
    roberta_padding_idx: Option<i64>,
}

impl Embeddings {
    fn new(p: &WeightPath, c: &EncoderConfig) -> Result<Self> {
        Ok(Embeddings {
            word_embeddings: Embedding::vocabulary(
                &(p / "word_embeddings"),
                c.vocab_size,
                c.hidden_size,
            )?
            .indexed_by("token id", "vocab_size"),
            position_embeddings: Embedding::new(
                &(p / "position_embeddings"),
                c.max_position_embeddings,
                c.hidden_size,
            )?
            .indexed_by("position", "max_position_embeddings"),
            token_type_embeddings: if c.type_vocab_size > 0 {
                Some(
                    Embedding::new(
                        &(p / "token_type_embeddings"),
                        c.type_vocab_size,
                        c.hidden_size,
                    )?
                    .indexed_by("token type id", "type_vocab_size"),
                )
            } else {
                None
            },
            layer_norm: Norm::layer_norm(&(p / "LayerNorm"), c.hidden_size, c.layer_norm_eps)?,
            roberta_padding_idx: (c.family == Family::Roberta).then_some(c.pad_token_id),
        })
    }

    /// Position ids `[batch, seq]`: 0, 1, 2, … (BERT), or for RoBERTa `pad+1, pad+2, …` over
    /// real tokens with padding kept at `pad`.
    fn position_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (batch, seq) = (input_ids.size()[0], input_ids.size()[1]);
        Ok(match self.roberta_padding_idx {
            None => Tensor::f_arange(seq, (Kind::Int64, input_ids.device()))?
                .f_unsqueeze(0)?
                .f_expand([batch, seq], false)?,
            Some(pad) => {
                let real = input_ids.f_ne(pad)?.f_to_kind(Kind::Int64)?;
                real.f_cumsum(1, Kind::Int64)?.f_mul(&real)? + pad
            }
        })
    }

    /// `[batch, seq]` ids → `[batch, seq, hidden]`.
    pub fn forward(&self, input_ids: &Tensor, token_type_ids: Option<&Tensor>) -> Result<Tensor> {
        let positions = self.position_ids(input_ids)?;
        let tokens = self.word_embeddings.forward(input_ids)?; // [batch, seq, hidden]
        let positions = self.position_embeddings.forward(&positions)?; // [batch, seq, hidden]
        probe::embeddings(&tokens, Some(&positions));
        let mut x = tokens.f_add(&positions)?;
        if let Some(types) = &self.token_type_embeddings {
            x = match token_type_ids {
                Some(t) => x.f_add(&types.forward(t)?)?,
                None => x.f_add(&types.forward(&input_ids.f_zeros_like()?)?)?,
            };
        }
        self.layer_norm.forward(&x)
    }
}

/// One encoder layer with BERT's weight names (`attention.self.query`, …).
fn bert_layer(p: &WeightPath, c: &EncoderConfig) -> Result<TransformerLayer> {
    let h = c.hidden_size;
    let attention = p / "attention";
    let projections = Projections::Separate {
        q: Linear::new(&(&attention / "self" / "query"), h, h, true)?,
        k: Linear::new(&(&attention / "self" / "key"), h, h, true)?,
        v: Linear::new(&(&attention / "self" / "value"), h, h, true)?,
    };
    Ok(TransformerLayer {
        self_attention: MultiHeadAttention::new(
            projections,
            Linear::new(&(&attention / "output" / "dense"), h, h, true)?,
            c.num_heads,
            c.head_dim(),
        ),
        self_attention_norm: Norm::layer_norm(
            &(&attention / "output" / "LayerNorm"),
            h,
            c.layer_norm_eps,
        )?,
        cross_attention: None,
        feed_forward: FeedForward::new(
            Linear::new(
                &(p / "intermediate" / "dense"),
                h,
                c.intermediate_size,
                true,
            )?,
            Linear::new(&(p / "output" / "dense"), c.intermediate_size, h, true)?,
            c.activation,
        ),
        feed_forward_norm: Norm::layer_norm(&(p / "output" / "LayerNorm"), h, c.layer_norm_eps)?,
        norm_position: NormPosition::Post,
    })
}

/// One encoder layer with DistilBERT's weight names (`attention.q_lin`, `ffn.lin1`, …).
fn distilbert_layer(p: &WeightPath, c: &EncoderConfig) -> Result<TransformerLayer> {
    let h = c.hidden_size;
    let attention = p / "attention";
    let projections = Projections::Separate {
        q: Linear::new(&(&attention / "q_lin"), h, h, true)?,
        k: Linear::new(&(&attention / "k_lin"), h, h, true)?,
        v: Linear::new(&(&attention / "v_lin"), h, h, true)?,
    };
    Ok(TransformerLayer {
        self_attention: MultiHeadAttention::new(
            projections,
            Linear::new(&(&attention / "out_lin"), h, h, true)?,
            c.num_heads,
            c.head_dim(),
        ),
        self_attention_norm: Norm::layer_norm(&(p / "sa_layer_norm"), h, c.layer_norm_eps)?,
        cross_attention: None,
        feed_forward: FeedForward::new(
            Linear::new(&(p / "ffn" / "lin1"), h, c.intermediate_size, true)?,
            Linear::new(&(p / "ffn" / "lin2"), c.intermediate_size, h, true)?,
            c.activation,
        ),
        feed_forward_norm: Norm::layer_norm(&(p / "output_layer_norm"), h, c.layer_norm_eps)?,
        norm_position: NormPosition::Post,
    })
}

/// The base encoder (BertModel, DistilBertModel, RobertaModel without pooler).
#[derive(Debug)]
pub struct Encoder {
    /// Its configuration.
    pub config: EncoderConfig,
    /// `embeddings`.
    pub embeddings: Embeddings,
    /// `encoder.layer.{i}` (DistilBERT: `transformer.layer.{i}`).
    pub layers: Vec<TransformerLayer>,
}

impl Encoder {
    /// Declare the encoder's weights under `p` (e.g. `bert`).
    pub fn new(p: &WeightPath, config: &EncoderConfig) -> Result<Self> {
        let layers = (0..config.num_layers)
            .map(|i| match config.family {
                Family::DistilBert => distilbert_layer(&(p / "transformer" / "layer" / i), config),
                _ => bert_layer(&(p / "encoder" / "layer" / i), config),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder {
            config: config.clone(),
            embeddings: Embeddings::new(&(p / "embeddings"), config)?,
            layers,
        })
    }

    /// The device the weights are on.
    pub fn device(&self) -> tch::Device {
        self.embeddings.word_embeddings.weight.device()
    }

    /// A padded batch → `[batch, seq, hidden]` last hidden state.
    pub fn forward_batch(&self, batch: &trident_core::Batch) -> Result<Tensor> {
        self.forward(
            &batch.input_ids,
            &batch.attention_mask,
            Some(&batch.token_type_ids),
        )
    }

    /// `[batch, seq]` ids and 1/0 mask → `[batch, seq, hidden]` last hidden state.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward_with_dropout(
            input_ids,
            attention_mask,
            token_type_ids,
            &EncoderDropout::default(),
        )
    }

    /// A padded batch → `[batch, seq, hidden]`, computed on its real tokens only: every
    /// projection and feed-forward network skips the padding ([`Packing`]), so a batch of
    /// uneven sentences costs what its tokens cost. Real tokens get [`forward`](Self::forward)'s
    /// values; padded positions are not computed and hold zeros. For pipelines, which never
    /// read padded positions. A batch with less padding than pays for the packing's copies
    /// ([`WORTH_PACKING`](trident_core::nn::packing::WORTH_PACKING)), or one the [`probe`]
    /// records, runs [`forward`](Self::forward).
    pub fn forward_unpadded(&self, batch: &trident_core::Batch) -> Result<Tensor> {
        let x = self
            .embeddings
            .forward(&batch.input_ids, Some(&batch.token_type_ids))?; // [batch, seq, hidden]
        self.layers_unpadded(&self.layers, x, &batch.attention_mask)
    }

    /// A padded batch → `[batch, 1, hidden]`: the last hidden state at the first token only
    /// (`[CLS]`, `<s>`), what a sequence-classification head reads. The layers before the
    /// last run as in [`forward_unpadded`](Self::forward_unpadded); the last computes only
    /// the first token's row, attending over every key and value
    /// ([`TransformerLayer::forward_at`]): of a 6-layer encoder that is about a seventh of
    /// the work. Equal to `forward`'s first token.
    pub fn forward_first_token(&self, batch: &trident_core::Batch) -> Result<Tensor> {
        let (last, before) = match self.layers.split_last() {
            // No layers, or the probe, which shows every layer at every position.
            Some(split) if !probe::is_recording() => split,
            _ => return Ok(self.forward_batch(batch)?.f_narrow(1, 0, 1)?),
        };
        let x = self
            .embeddings
            .forward(&batch.input_ids, Some(&batch.token_type_ids))?; // [batch, seq, hidden]
        let x = self.layers_unpadded(before, x, &batch.attention_mask)?;
        let mask = padding_mask(&batch.attention_mask, x.kind())?; // [batch, 1, 1, seq]
        let ctx = LayerContext {
            self_attention: AttentionContext {
                mask: Some(&mask),
                ..Default::default()
            },
            ..Default::default()
        };
        last.forward_at(&x, &x.f_narrow(1, 0, 1)?, &ctx) // [batch, 1, hidden]
    }

    /// [`forward`](Self::forward) of a model being trained, with `dropout` after the
    /// embeddings and on each sublayer's output (the same modules).
    pub fn forward_with_dropout(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        dropout: &EncoderDropout,
    ) -> Result<Tensor> {
        let x = self.embeddings.forward(input_ids, token_type_ids)?; // [batch, seq, hidden]
        let x = trident_core::nn::dropout(&x, dropout.embeddings)?;
        self.layers_forward(&self.layers, x, attention_mask, None, Some(dropout))
    }

    /// `layers` over embedded tokens `x` `[batch, seq, hidden]` at inference, on the real
    /// tokens only where that pays ([`Packing::unpadded`]): zeros at padded positions.
    fn layers_unpadded(
        &self,
        layers: &[TransformerLayer],
        x: Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        Packing::unpadded(attention_mask, |packing| {
            let x = match packing {
                Some(p) => p.pack(&x)?, // [tokens, hidden]
                None => x,
            };
            self.layers_forward(layers, x, attention_mask, packing, None)
        })
    }

    /// `layers` over embedded tokens `x`: `[batch, seq, hidden]`, or `[tokens, hidden]` with
    /// their `packing`.
    fn layers_forward(
        &self,
        layers: &[TransformerLayer],
        mut x: Tensor,
        attention_mask: &Tensor,
        packing: Option<&Packing>,
        dropout: Option<&EncoderDropout>,
    ) -> Result<Tensor> {
        let mask = padding_mask(attention_mask, x.kind())?; // [batch, 1, 1, seq], built once for all layers
        let ctx = LayerContext {
            self_attention: AttentionContext {
                mask: Some(&mask),
                packing,
                ..Default::default()
            },
            ..Default::default()
        };
        let dropout = dropout.map(|d| d.layers).unwrap_or_default();
        for layer in layers {
            x = layer.forward_with_dropout(&x, &ctx, None, dropout)?;
        }
        Ok(x)
    }
}

/// The dropout of a training forward pass, from config.json (all zero, the default, at
/// inference), where transformers applies it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EncoderDropout {
    /// After the embeddings' LayerNorm (`hidden_dropout_prob`; DistilBERT `dropout`).
    pub embeddings: f64,
    /// On the attention probabilities (BERT, RoBERTa: `attention_probs_dropout_prob`;
    /// DistilBERT: `attention_dropout`) and on the attention and feed-forward outputs (BERT,
    /// RoBERTa: `hidden_dropout_prob` on both; DistilBERT: `dropout` on the feed-forward
    /// output only).
    pub layers: SublayerDropout,
    /// Before the classifier (`classifier_dropout`, else `hidden_dropout_prob`; DistilBERT
    /// `seq_classif_dropout` for sequences and `dropout` for tokens).
    pub classifier: f64,
}
