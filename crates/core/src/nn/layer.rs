//! One transformer layer: self-attention, optional cross-attention, feed-forward, each with a
//! residual connection and a normalisation placed before (pre-LN: GPT-2, T5) or after
//! (post-LN: BERT, the original Transformer) the sublayer, or before it with the normalised
//! input as the residual (BLOOM's `apply_residual_connection_post_layernorm`).

use super::attention::{AttentionContext, MultiHeadAttention};
use super::cache::LayerCache;
use super::dropout::{dropout, SublayerDropout};
use super::feed_forward::FeedForward;
use super::norm::Norm;
use super::probe;
use crate::Result;
use tch::Tensor;

/// Where the normalisation sits relative to the residual connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPosition {
    /// `x + f(norm(x))`.
    Pre,
    /// `norm(x + f(x))`.
    Post,
    /// `norm(x) + f(norm(x))`: pre-LN whose residual is the normalised input, not the input
    /// (BLOOM with `apply_residual_connection_post_layernorm: true`).
    PreNormedResidual,
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
#[derive(Default, Clone, Copy)]
pub struct LayerContext<'a> {
    /// Self-attention: its mask, position bias and rotary angles.
    pub self_attention: AttentionContext<'a>,
    /// Encoder output `[inputs, src, hidden]` for cross-attention.
    pub encoder_hidden: Option<&'a Tensor>,
    /// Cross-attention: the additive encoder mask `[inputs, 1, 1, src]` and the decoder rows
    /// per encoder row (`groups`).
    pub cross_attention: AttentionContext<'a>,
}

impl TransformerLayer {
    /// The sublayer `f` with its residual connection and norm; `p`: dropout on `f`'s output
    /// (0 at inference: no operation).
    fn residual(
        &self,
        x: &Tensor,
        norm: &Norm,
        p: f64,
        f: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let f = move |h: &Tensor| dropout(&f(h)?, p);
        Ok(match self.norm_position {
            NormPosition::Pre => add_residual(f(&norm.forward(x)?)?, x)?,
            NormPosition::Post => norm.forward(&add_residual(f(x)?, x)?)?,
            NormPosition::PreNormedResidual => {
                let normed = norm.forward(x)?;
                add_residual(f(&normed)?, &normed)?
            }
        })
    }

    /// `[batch, seq, hidden] → [batch, seq, hidden]`.
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &LayerContext,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        self.forward_with_dropout(x, ctx, cache, SublayerDropout::default())
    }

    /// [`forward`](Self::forward) of a model being trained: `dropout` on each sublayer's
    /// output before its residual connection (the same modules, the same wiring).
    pub fn forward_with_dropout(
        &self,
        x: &Tensor,
        ctx: &LayerContext,
        cache: Option<&mut LayerCache>,
        dropout: SublayerDropout,
    ) -> Result<Tensor> {
        let input = x;
        let (self_cache, cross_cache) = match cache {
            Some(c) => (Some(&mut c.self_attn), Some(&mut c.cross_attn)),
            None => (None, None),
        };
        let x = self.residual(x, &self.self_attention_norm, dropout.attention, |h| {
            self.self_attention.forward_with_dropout(
                h,
                None,
                &ctx.self_attention,
                self_cache,
                dropout.attention_probs,
            )
        })?;
        let x = match (&self.cross_attention, ctx.encoder_hidden) {
            (Some((attention, norm)), Some(encoder)) => {
                self.residual(&x, norm, dropout.attention, |h| {
                    attention.forward_with_dropout(
                        h,
                        Some(encoder),
                        &ctx.cross_attention,
                        cross_cache,
                        dropout.attention_probs,
                    )
                })?
            }
            (Some(_), None) => {
                return Err(crate::Error::Input(
                    "a decoder layer with cross-attention needs the encoder output".into(),
                ))
            }
            (None, _) => x,
        };
        let output = self.residual(&x, &self.feed_forward_norm, dropout.feed_forward, |h| {
            self.feed_forward.forward(h)
        })?;
        probe::layer(input, &output);
        Ok(output)
    }
}

/// `sublayer + residual`, written over the sublayer's output (this call's own tensor) outside
/// autograd: the same sum (float addition commutes), without a fresh `[batch, seq, hidden]`
/// block per residual connection (two per layer, 20 MB each in a BART-large-size encoder over
/// 8 × 600 tokens).
fn add_residual(mut sublayer: Tensor, residual: &Tensor) -> Result<Tensor> {
    if sublayer.requires_grad()
        || residual.requires_grad()
        || sublayer.size() != residual.size()
        || sublayer.kind() != residual.kind()
        || sublayer.data_ptr() == residual.data_ptr()
    // a sublayer that returned its input
    {
        return Ok(residual.f_add(&sublayer)?);
    }
    let _ = sublayer.f_add_(residual)?;
    Ok(sublayer)
}

/// Run `layers` in order on `x` (`[batch, seq, hidden]`), each with its own cache when
/// `caches` are given (one per layer: a decoder-only model's stack).
pub fn forward_stack(
    layers: &[TransformerLayer],
    x: Tensor,
    ctx: &LayerContext,
    caches: Option<&mut [LayerCache]>,
) -> Result<Tensor> {
    let mut x = x;
    match caches {
        Some(caches) => {
            if caches.len() != layers.len() {
                return Err(crate::Error::Input(format!(
                    "{} KV caches for {} layers",
                    caches.len(),
                    layers.len()
                )));
            }
            for (layer, cache) in layers.iter().zip(caches.iter_mut()) {
                x = layer.forward(&x, ctx, Some(cache))?;
            }
        }
        None => {
            for layer in layers {
                x = layer.forward(&x, ctx, None)?;
            }
        }
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The residual sum over the sublayer's output equals the plain sum and leaves the
    /// residual alone, also when a sublayer hands back its input or autograd is on.
    #[test]
    fn the_residual_sum_is_written_over_the_sublayer_only() {
        let x = Tensor::randn([2, 3, 4], (Kind::Float, Device::Cpu));
        let before = x.copy();
        let out = Tensor::randn([2, 3, 4], (Kind::Float, Device::Cpu));
        let expected = &x + &out;
        let ptr = out.data_ptr();
        let sum = add_residual(out, &x).unwrap();
        assert!(sum.equal(&expected));
        assert_eq!(sum.data_ptr(), ptr); // written in place
        assert!(x.equal(&before));
        // A sublayer that returned its input: a new tensor, the input unchanged.
        let doubled = add_residual(x.shallow_clone(), &x).unwrap();
        assert!(doubled.equal(&(&before + &before)));
        assert!(x.equal(&before));
        // Under autograd: out of place.
        let grad = Tensor::randn([2, 3, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let g = grad.data_ptr();
        assert_ne!(add_residual(grad, &x).unwrap().data_ptr(), g);
    }
}
