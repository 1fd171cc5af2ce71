//! Multi-head attention, the one implementation every model uses.
//!
//! `Attention(Q, K, V) = softmax(Q·Kᵀ·scale + bias)·V`, computed per head: the hidden
//! vector is projected to queries, keys and values, split into `heads` slices of
//! `head_dim`, attended independently, then concatenated and projected back.

use super::cache::KvCache;
use super::linear::Linear;
use crate::Result;
use tch::Tensor;

/// How queries, keys and values are projected from the hidden states.
#[derive(Debug)]
pub enum Projections {
    /// Three projections (BERT `query`/`key`/`value`, T5 `q`/`k`/`v`).
    Separate {
        /// Query projection.
        q: Linear,
        /// Key projection.
        k: Linear,
        /// Value projection.
        v: Linear,
    },
    /// One projection to `[q | k | v]` (GPT-2 `c_attn`). Self-attention only.
    Fused(Linear),
}

/// Multi-head attention: self-attention when no key/value input is given, cross-attention
/// otherwise.
#[derive(Debug)]
pub struct MultiHeadAttention {
    /// The input projections.
    pub projections: Projections,
    /// The output projection (BERT `output.dense`, T5 `o`, GPT-2 `c_proj`).
    pub out: Linear,
    /// Number of heads.
    pub num_heads: i64,
    /// Width of each head.
    pub head_dim: i64,
    /// Multiplier on `Q·Kᵀ`: `1/√head_dim` usually, 1 for T5 (folded into its init).
    pub scale: f64,
}

impl MultiHeadAttention {
    /// Attention with the standard `1/√head_dim` scaling.
    pub fn new(projections: Projections, out: Linear, num_heads: i64, head_dim: i64) -> Self {
        MultiHeadAttention {
            projections,
            out,
            num_heads,
            head_dim,
            scale: 1.0 / (head_dim as f64).sqrt(),
        }
    }

    /// Use `scale` instead of `1/√head_dim` (T5 uses 1).
    pub fn with_scale(mut self, scale: f64) -> Self {
        self.scale = scale;
        self
    }

    /// `[batch, seq, heads·head_dim] → [batch, heads, seq, head_dim]`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s) = (x.size()[0], x.size()[1]);
        Ok(x.f_view([b, s, self.num_heads, self.head_dim])?
            .f_transpose(1, 2)?)
    }

    /// Project `x` (queries) and `kv` (keys/values source, `None` for self-attention).
    fn project(&self, x: &Tensor, kv: Option<&Tensor>) -> Result<(Tensor, Tensor, Tensor)> {
        match (&self.projections, kv) {
            (Projections::Separate { q, k, v }, source) => {
                let source = source.unwrap_or(x);
                Ok((q.forward(x), k.forward(source), v.forward(source)))
            }
            (Projections::Fused(qkv), None) => {
                let parts = qkv.forward(x).f_split(self.num_heads * self.head_dim, -1)?;
                let [q, k, v]: [Tensor; 3] = parts.try_into().map_err(|_| {
                    crate::Error::Unsupported(
                        "fused qkv projection must have 3·hidden outputs".into(),
                    )
                })?;
                Ok((q, k, v))
            }
            (Projections::Fused(_), Some(_)) => Err(crate::Error::Unsupported(
                "cross-attention needs separate q/k/v projections".into(),
            )),
        }
    }

    /// Attend.
    ///
    /// - `x`: `[batch, q_len, hidden]` queries' hidden states.
    /// - `kv`: `None` for self-attention; the encoder output `[batch, k_len, hidden]` for
    ///   cross-attention, or `[batch / groups, k_len, hidden]` when each of its rows serves
    ///   `groups` consecutive rows of `x` (an input's beams).
    /// - `mask`: additive `[batch, 1, q_len, k_len]` (or broadcastable), see [`super::mask`].
    /// - `position_bias`: additive `[1 or batch, heads, q_len, k_len]` (T5).
    /// - `cache`: for self-attention the new keys/values are appended and all are used; for
    ///   cross-attention they are computed on the first call and reused afterwards.
    pub fn forward(
        &self,
        x: &Tensor,
        kv: Option<&Tensor>,
        mask: Option<&Tensor>,
        position_bias: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, q_len) = (x.size()[0], x.size()[1]);
        let (q, k, v) = match (kv.is_some(), cache) {
            // Cross-attention with keys/values already cached: only the query is new.
            (true, Some(c)) if !c.is_empty() => {
                let (k, v) = c
                    .get()?
                    .ok_or_else(|| crate::Error::Input("empty cross-attention cache".into()))?;
                (self.split_heads(&self.query_only(x)?)?, k, v)
            }
            (_, cache) => {
                let (q, k, v) = self.project(x, kv)?;
                let (q, k, v) = (
                    self.split_heads(&q)?,
                    self.split_heads(&k)?,
                    self.split_heads(&v)?,
                );
                match cache {
                    Some(c) => {
                        let (k, v) = c.append(&k, &v)?;
                        (q, k, v)
                    }
                    None => (q, k, v),
                }
            }
        };
        // q: [batch, heads, q_len, head_dim]; k, v: [batch, heads, k_len, head_dim]
        let bias = match (mask, position_bias) {
            (Some(m), Some(p)) => Some(p + m),
            (Some(m), None) => Some(m.shallow_clone()),
            (None, Some(p)) => Some(p.shallow_clone()),
            (None, None) => None,
        };
        // The kernel wants the bias in the queries' dtype (f32 masks meet bf16 models).
        let bias = bias.map(|b| b.f_to_kind(q.kind())).transpose()?;
        let groups = b / k.size()[0].max(1);
        let context = if groups > 1 {
            self.grouped_attention(&q, &k, &v, bias, groups)?
        } else {
            // libtorch's fused kernel: softmax(q·kᵀ·scale + bias)·v.
            Tensor::f_scaled_dot_product_attention(&q, &k, &v, bias, 0.0, false, self.scale, false)?
        };
        // [batch, heads, q_len, head_dim] → [batch, q_len, heads·head_dim]
        let context = context.f_transpose(1, 2)?.f_contiguous()?.f_view([
            b,
            q_len,
            self.num_heads * self.head_dim,
        ])?;
        Ok(self.out.forward(&context))
    }

    /// Cross-attention of `groups` consecutive query rows on each key/value row (the beams of
    /// one input on its encoder output): the groups' queries are attended together, as one
    /// longer query sequence, so each input's keys and values are read once rather than once
    /// per beam, and in one matrix product rather than several matrix-vector ones.
    /// `q`: `[rows·groups, heads, q_len, head_dim]`; `k`, `v`: `[rows, heads, k_len, head_dim]`;
    /// `bias`: broadcastable to `[rows, heads, 1, k_len]` (a padding mask).
    fn grouped_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<Tensor>,
        groups: i64,
    ) -> Result<Tensor> {
        let (rows, q_len) = (k.size()[0], q.size()[2]);
        let (h, d) = (self.num_heads, self.head_dim);
        if q.size()[0] != rows * groups {
            return Err(crate::Error::Input(format!(
                "{} query rows do not divide into groups over {rows} key/value rows",
                q.size()[0]
            )));
        }
        if let Some(bias) = &bias {
            let s = bias.size();
            if s.len() != 4 || s[2] != 1 || !(s[0] == 1 || s[0] == rows) {
                return Err(crate::Error::Input(format!(
                    "grouped attention takes a padding mask per key/value row, not {s:?}"
                )));
            }
        }
        // [rows·groups, h, q_len, d] → [rows, h, groups·q_len, d]
        let q = q
            .f_view([rows, groups, h, q_len, d])?
            .f_permute([0, 2, 1, 3, 4])?
            .f_reshape([rows, h, groups * q_len, d])?;
        let context =
            Tensor::f_scaled_dot_product_attention(&q, k, v, bias, 0.0, false, self.scale, false)?;
        // [rows, h, groups·q_len, d] → [rows·groups, h, q_len, d]
        Ok(context
            .f_view([rows, h, groups, q_len, d])?
            .f_permute([0, 2, 1, 3, 4])?
            .f_reshape([rows * groups, h, q_len, d])?)
    }

    /// Every projection, for [`super::prepare`].
    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut all = match &mut self.projections {
            Projections::Separate { q, k, v } => vec![q, k, v],
            Projections::Fused(qkv) => vec![qkv],
        };
        all.push(&mut self.out);
        all
    }

    fn query_only(&self, x: &Tensor) -> Result<Tensor> {
        match &self.projections {
            Projections::Separate { q, .. } => Ok(q.forward(x)),
            Projections::Fused(_) => Err(crate::Error::Unsupported(
                "cross-attention needs separate q/k/v projections".into(),
            )),
        }
    }
}

/// Plain attention without the fused kernel, for checking it: `softmax(q·kᵀ·scale + bias)·v`
/// on `[batch, heads, seq, head_dim]` tensors.
pub fn naive_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
) -> Tensor {
    let scores = q.matmul(&k.transpose(-2, -1)) * scale; // [batch, heads, q, k]
    let scores = match bias {
        Some(b) => scores + b,
        None => scores,
    };
    scores.softmax(-1, scores.kind()).matmul(v)
}
