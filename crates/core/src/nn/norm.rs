//! Normalisation: LayerNorm (BERT, GPT-2) and RMSNorm (T5's `T5LayerNorm`).

use crate::weights::WeightPath;
use crate::Result;
use tch::{Kind, Tensor};

/// A normalisation over the last dimension.
#[derive(Debug)]
pub enum Norm {
    /// `(x − mean) / √(var + eps) · weight + bias`.
    LayerNorm {
        /// Scale `[dim]`.
        weight: Tensor,
        /// Shift `[dim]`.
        bias: Tensor,
        /// Added to the variance.
        eps: f64,
    },
    /// `x / √(mean(x²) + eps) · weight`: no mean subtraction, no bias.
    RmsNorm {
        /// Scale `[dim]`.
        weight: Tensor,
        /// Added to the mean square.
        eps: f64,
    },
}

impl Norm {
    /// A LayerNorm named `p` (`p.weight`, `p.bias`).
    pub fn layer_norm(p: &WeightPath, dim: i64, eps: f64) -> Result<Self> {
        Ok(Norm::LayerNorm {
            weight: p.param("weight", &[dim])?,
            bias: p.param("bias", &[dim])?,
            eps,
        })
    }

    /// An RMSNorm named `p` (`p.weight`).
    pub fn rms_norm(p: &WeightPath, dim: i64, eps: f64) -> Result<Self> {
        Ok(Norm::RmsNorm {
            weight: p.param("weight", &[dim])?,
            eps,
        })
    }

    /// Normalise `[..., dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Norm::LayerNorm { weight, bias, eps } => {
                let dim = weight.size();
                x.f_layer_norm(dim.as_slice(), Some(weight), Some(bias), *eps, true)?
            }
            Norm::RmsNorm { weight, eps } => {
                if let Some(y) = super::fused::rms_norm(x, weight, *eps)? {
                    return Ok(y); // (f32 on the CPU: the same in one pass)
                }
                // Accumulate in f32 even for half-precision weights, as T5 and Llama do.
                let x32 = x.f_to_kind(Kind::Float)?;
                let variance = x32
                    .f_pow_tensor_scalar(2)?
                    .f_mean_dim(-1, true, Kind::Float)?;
                let normed = x32.f_mul(&(variance + *eps).f_rsqrt()?)?;
                weight.f_mul(&normed.f_to_kind(weight.kind())?)?
            }
        })
    }
}

// SAFETY: the weights are written only while the model is built; afterwards `forward` reads
// them with out-of-place ops only (see the contract at `Linear`'s `Sync` impl in linear.rs).
unsafe impl Sync for Norm {}
