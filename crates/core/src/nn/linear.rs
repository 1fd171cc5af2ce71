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
    /// `[num, dim]`, or `[dim, num]` once tied to an output head by [`Embedding::tie_head`].
    pub weight: Tensor,
    transposed: bool,
}

impl Embedding {
    /// An `nn.Embedding` named `p`.
    pub fn new(p: &Path, num: i64, dim: i64) -> Result<Self> {
        Ok(Embedding::from_weight(
            p.f_zeros_no_train("weight", &[num, dim])?,
        ))
    }

    /// A table over an existing `[num, dim]` weight (shared embeddings, as in T5).
    pub fn from_weight(weight: Tensor) -> Self {
        Embedding {
            weight,
            transposed: false,
        }
    }

    /// Tie an output head to this table (`logits = x·tableᵀ`), in the layout a matrix-vector
    /// product streams fastest: the loaded table is re-stored `[dim, num]` in place (no second
    /// copy is kept), lookups then read its columns, and the returned head is an `[in, out]`
    /// projection over the same memory. Call it after the weights are loaded, and only on a
    /// table no other `Embedding` shares (T5's `shared` table, used by both stacks, is not one:
    /// the other handles would keep reading it as `[num, dim]`).
    pub fn tie_head(&mut self) -> Result<Linear> {
        if !self.transposed {
            let transposed = self.weight.f_t_copy()?.f_contiguous()?; // [dim, num]
            let mut shared = self.weight.shallow_clone();
            tch::no_grad(|| shared.f_set_data(&transposed))?;
            self.transposed = true;
        }
        Ok(Linear {
            weight: self.weight.shallow_clone(),
            bias: None,
            layout: Layout::InOut,
        })
    }

    /// `[...] ids → [..., dim]`.
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        if self.transposed {
            let mut shape = ids.size();
            shape.push(self.weight.size()[0]);
            // Columns of the [dim, num] table, gathered then laid out [n, dim].
            self.weight
                .index_select(1, &ids.reshape([-1]))
                .t_()
                .reshape(shape.as_slice())
        } else {
            Tensor::embedding(&self.weight, ids, -1, false, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// A tied head in the `[in, out]` layout computes `x·Wᵀ`, and lookups still return rows.
    #[test]
    fn tied_head_keeps_lookups_and_computes_x_times_table_transposed() {
        let table = Tensor::randn([7, 4], (Kind::Float, Device::Cpu));
        let mut emb = Embedding::from_weight(table.copy());
        let ids = Tensor::from_slice(&[3i64, 0, 6, 3]).view([2, 2]);
        let before = emb.forward(&ids);
        let head = emb.tie_head().unwrap();
        assert_eq!(emb.weight.size(), vec![4, 7]);
        assert!(emb.forward(&ids).allclose(&before, 0.0, 0.0, false));
        let x = Tensor::randn([2, 4], (Kind::Float, Device::Cpu));
        assert!(head
            .forward(&x)
            .allclose(&x.matmul(&table.t_copy()), 1e-6, 1e-6, false));
    }
}
