//! Dense projections and embedding tables, with the weight layouts checkpoints use.

use crate::Result;
use tch::nn::Path;
use tch::Tensor;

/// How a checkpoint stores a projection's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[out, in]`, PyTorch's `nn.Linear` (BERT, T5).
    OutIn,
    /// `[in, out]`, GPT-2's `Conv1D`; used as stored (no transpose), since `x·W` on an
    /// `[in, out]` matrix streams the weight in order.
    InOut,
}

/// A dense projection `y = x·Wᵀ + b` (or `x·W + b` for [`Layout::InOut`]).
#[derive(Debug)]
pub struct Linear {
    /// The weight, as the checkpoint stores it.
    pub weight: Tensor,
    /// The optional bias `[out]`.
    pub bias: Option<Tensor>,
    layout: Layout,
}

impl Linear {
    /// An `nn.Linear` named `p` (`p.weight` `[out, in]`, `p.bias` `[out]` when `bias`).
    pub fn new(p: &Path, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self> {
        Ok(Linear {
            weight: p.f_zeros_no_train("weight", &[out_dim, in_dim])?,
            bias: if bias {
                Some(p.f_zeros_no_train("bias", &[out_dim])?)
            } else {
                None
            },
            layout: Layout::OutIn,
        })
    }

    /// A GPT-2 `Conv1D` named `p` (`p.weight` `[in, out]`, `p.bias` `[out]`).
    pub fn conv1d(p: &Path, in_dim: i64, out_dim: i64) -> Result<Self> {
        Ok(Linear {
            weight: p.f_zeros_no_train("weight", &[in_dim, out_dim])?,
            bias: Some(p.f_zeros_no_train("bias", &[out_dim])?),
            layout: Layout::InOut,
        })
    }

    /// A projection that reuses another module's weight `[out, in]` (tied embeddings).
    pub fn tied(weight: &Tensor) -> Self {
        Linear {
            weight: weight.shallow_clone(),
            bias: None,
            layout: Layout::OutIn,
        }
    }

    /// `[..., in] → [..., out]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self.layout {
            Layout::OutIn => x.linear(&self.weight, self.bias.as_ref()),
            Layout::InOut => {
                let y = x.matmul(&self.weight);
                match &self.bias {
                    Some(b) => y + b,
                    None => y,
                }
            }
        }
    }
}

/// A lookup table from ids to vectors (`p.weight` `[num, dim]`).
#[derive(Debug)]
pub struct Embedding {
    /// `[num, dim]`.
    pub weight: Tensor,
}

impl Embedding {
    /// An `nn.Embedding` named `p`.
    pub fn new(p: &Path, num: i64, dim: i64) -> Result<Self> {
        Ok(Embedding {
            weight: p.f_zeros_no_train("weight", &[num, dim])?,
        })
    }

    /// `[...] ids → [..., dim]`.
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.weight, ids, -1, false, false)
    }
}
