//! One transformer layer: self-attention, optional cross-attention, feed-forward, each with a
//! residual connection and a normalisation placed before (pre-LN: GPT-2, T5) or after
//! (post-LN: BERT, the original Transformer) the sublayer.

use super::attention::MultiHeadAttention;
use super::cache::LayerCache;
use super::feed_forward::FeedForward;
use super::norm::Norm;
use crate::Result;
use tch::Tensor;

/// Where the normalisation sits relative to the residual connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPosition {
    /// `x + f(norm(x))`.
    Pre,
    /// `norm(x + f(x))`.
    Post,
}

/// A transformer layer built from core's blocks.
#[derive(Debug)]
pub struct TransformerLayer {
    /// Self-attention.
    pub self_attention: MultiHeadAttention,
    /// Its normalisation.
    pub self_attention_norm: Norm,
    /// Cross-attention over the encoder output (encoder-decoder decoders only).
    pub cross_attention: Option<(MultiHeadAttention, Norm)>,
    /// Feed-forward network.
    pub feed_forward: FeedForward,
    /// Its normalisation.
    pub feed_forward_norm: Norm,
    /// Pre-LN or post-LN.
    pub norm_position: NormPosition,
}

/// What a layer needs besides its input; built once per forward pass and shared by all layers.
#[derive(Default)]
pub struct LayerContext<'a> {
    /// Additive self-attention mask `[batch, 1, q, k]`.
    pub mask: Option<&'a Tensor>,
    /// Additive self-attention position bias `[1, heads, q, k]` (T5).
    pub position_bias: Option<&'a Tensor>,
    /// Encoder output `[batch, src, hidden]` for cross-attention.
    pub encoder_hidden: Option<&'a Tensor>,
    /// Additive cross-attention mask `[batch, 1, 1, src]`.
    pub encoder_mask: Option<&'a Tensor>,
}

impl TransformerLayer {
    fn residual(
        &self,
        x: &Tensor,
        norm: &Norm,
        f: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        Ok(match self.norm_position {
            NormPosition::Pre => x + f(&norm.forward(x))?,
            NormPosition::Post => norm.forward(&(x + f(x)?)),
        })
    }

    /// Every projection of the layer, for [`super::prepare`].
    pub fn linears_mut(&mut self) -> Vec<&mut super::Linear> {
        let mut all = self.self_attention.linears_mut();
        if let Some((attention, _)) = &mut self.cross_attention {
            all.extend(attention.linears_mut());
        }
        all.extend(self.feed_forward.linears_mut());
        all
    }

    /// `[batch, seq, hidden] → [batch, seq, hidden]`.
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &LayerContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let (self_cache, cross_cache) = match cache {
            Some(c) => (Some(&mut c.self_attn), Some(&mut c.cross_attn)),
            None => (None, None),
        };
        let x = self.residual(x, &self.self_attention_norm, |h| {
            self.self_attention
                .forward(h, None, ctx.mask, ctx.position_bias, self_cache)
        })?;
        let x = match (&self.cross_attention, ctx.encoder_hidden) {
            (Some((attention, norm)), Some(encoder)) => self.residual(&x, norm, |h| {
                attention.forward(h, Some(encoder), ctx.encoder_mask, None, cross_cache)
            })?,
            (Some(_), None) => {
                return Err(crate::Error::Input(
                    "a decoder layer with cross-attention needs the encoder output".into(),
                ))
            }
            (None, _) => x,
        };
        self.residual(&x, &self.feed_forward_norm, |h| {
            Ok(self.feed_forward.forward(h))
        })
    }
}
