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

    /// The layer's output at some positions only: `x` `[batch, seq, hidden]` is the whole
    /// input and `at` `[batch, q, hidden]` its rows at the positions wanted (an encoder's
    /// first token, which a classification head reads). Those queries attend over every
    /// key and value of `x`, as in [`forward`](Self::forward), and only their rows go on
    /// through the output projection and the feed-forward network: for one position of
    /// `seq`, the last layer costs the keys' and values' projections instead of a whole
    /// layer. The result equals `forward`'s at those positions.
    ///
    /// Self-attention of an encoder only: no cache, no cross-attention, no rotary angles or
    /// position bias (theirs would have to be cut to the positions), and a mask that
    /// broadcasts over the queries (`[batch, 1, 1, seq]`, a padding mask).
    pub fn forward_at(&self, x: &Tensor, at: &Tensor, ctx: &LayerContext) -> Result<Tensor> {
        let attention = &ctx.self_attention;
        if self.cross_attention.is_some()
            || attention.rotary.is_some()
            || attention.position_bias.is_some()
            || attention.packing.is_some()
            || attention.mask.is_some_and(|m| m.size().get(2) != Some(&1))
        {
            return Err(crate::Error::Unsupported(
                "a layer's output at some positions is for encoder layers with a padding mask"
                    .into(),
            ));
        }
        // Queries from `at`, keys and values from all of `x`, each normalised as `forward`
        // normalises its input.
        let attend = |queries: &Tensor, all: &Tensor| {
            self.self_attention
                .forward(queries, Some(all), attention, None)
        };
        let x = match self.norm_position {
            NormPosition::Post => self
                .self_attention_norm
                .forward(&add_residual(attend(at, x)?, at)?)?,
            NormPosition::Pre => {
                let norm = &self.self_attention_norm;
                add_residual(attend(&norm.forward(at)?, &norm.forward(x)?)?, at)?
            }
            NormPosition::PreNormedResidual => {
                let norm = &self.self_attention_norm;
                let normed = norm.forward(at)?;
                add_residual(attend(&normed, &norm.forward(x)?)?, &normed)?
            }
        };
        // [batch, q, hidden]: the feed-forward network works row by row.
        self.residual(&x, &self.feed_forward_norm, 0.0, |h| {
            self.feed_forward.forward(h)
        })
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

    fn random_layer(hidden: i64, heads: i64, norm_position: NormPosition) -> TransformerLayer {
        use super::super::attention::Projections;
        use super::super::linear::Linear;
        let linear = |o: i64, i: i64| {
            Linear::from_tensors(
                Tensor::randn([o, i], (Kind::Float, Device::Cpu)) * 0.2,
                Some(Tensor::randn([o], (Kind::Float, Device::Cpu)) * 0.1),
            )
        };
        let norm = || Norm::LayerNorm {
            weight: Tensor::randn([hidden], (Kind::Float, Device::Cpu)) * 0.1 + 1.0,
            bias: Tensor::randn([hidden], (Kind::Float, Device::Cpu)) * 0.1,
            eps: 1e-5,
        };
        TransformerLayer {
            self_attention: MultiHeadAttention::new(
                Projections::Separate {
                    q: linear(hidden, hidden),
                    k: linear(hidden, hidden),
                    v: linear(hidden, hidden),
                },
                linear(hidden, hidden),
                heads,
                hidden / heads,
            ),
            self_attention_norm: norm(),
            cross_attention: None,
            feed_forward: FeedForward::new(
                linear(4 * hidden, hidden),
                linear(hidden, 4 * hidden),
                crate::config::Activation::Gelu,
            ),
            feed_forward_norm: norm(),
            norm_position,
        }
    }

    /// A layer's output at the first position, computed alone, equals its whole output
    /// there, for every norm position and a padded batch; what it cannot do is an error.
    #[test]
    fn the_output_at_some_positions_equals_the_whole_outputs_rows() {
        tch::manual_seed(5);
        let (batch, seq, hidden) = (3i64, 7i64, 16i64);
        let keep = Tensor::from_slice(&[7i64, 4, 1]).view([batch, 1]);
        let keep = Tensor::arange(seq, (Kind::Int64, Device::Cpu))
            .view([1, seq])
            .lt_tensor(&keep)
            .to_kind(Kind::Int64);
        let mask = crate::nn::mask::padding_mask(&keep, Kind::Float).unwrap();
        let ctx = LayerContext {
            self_attention: crate::nn::AttentionContext {
                mask: Some(&mask),
                ..Default::default()
            },
            ..Default::default()
        };
        let x = Tensor::randn([batch, seq, hidden], (Kind::Float, Device::Cpu));
        for position in [
            NormPosition::Post,
            NormPosition::Pre,
            NormPosition::PreNormedResidual,
        ] {
            let layer = random_layer(hidden, 4, position);
            let whole = layer.forward(&x, &ctx, None).unwrap();
            let first = layer.forward_at(&x, &x.narrow(1, 0, 1), &ctx).unwrap();
            assert_eq!(first.size(), [batch, 1, hidden]);
            let d = (&first - whole.narrow(1, 0, 1))
                .abs()
                .max()
                .double_value(&[]);
            assert!(d < 1e-5, "{position:?}: {d}");
        }
        let layer = random_layer(hidden, 4, NormPosition::Post);
        let causal = crate::nn::mask::causal_mask(seq, seq, Kind::Float, Device::Cpu).unwrap();
        let per_query = LayerContext {
            self_attention: crate::nn::AttentionContext {
                mask: Some(&causal),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(layer
            .forward_at(&x, &x.narrow(1, 0, 1), &per_query)
            .is_err());
    }

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
