//! Normalisation: LayerNorm (BERT, GPT-2) and RMSNorm (T5's `T5LayerNorm`).

use crate::Result;
use tch::nn::Path;
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
    pub fn layer_norm(p: &Path, dim: i64, eps: f64) -> Result<Self> {
        Ok(Norm::LayerNorm {
            weight: p.f_zeros_no_train("weight", &[dim])?,
            bias: p.f_zeros_no_train("bias", &[dim])?,
            eps,
        })
    }

    /// An RMSNorm named `p` (`p.weight`).
    pub fn rms_norm(p: &Path, dim: i64, eps: f64) -> Result<Self> {
        Ok(Norm::RmsNorm {
            weight: p.f_zeros_no_train("weight", &[dim])?,
            eps,
        })
    }

    /// Normalise `[..., dim]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Norm::LayerNorm { weight, bias, eps } => {
                let dim = weight.size();
                x.layer_norm(dim.as_slice(), Some(weight), Some(bias), *eps, true)
            }
            Norm::RmsNorm { weight, eps } => {
                // Accumulate in f32 even for half-precision weights, as T5 does.
                let variance =
                    x.to_kind(Kind::Float)
                        .pow_tensor_scalar(2)
                        .mean_dim(-1, true, Kind::Float);
                let normed = x.to_kind(Kind::Float) * (variance + *eps).rsqrt();
                weight * normed.to_kind(weight.kind())
            }
        }
    }
}
