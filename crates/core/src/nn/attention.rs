//! Multi-head attention, the one implementation every model uses.
//!
//! `Attention(Q, K, V) = softmax(Q·Kᵀ·scale + bias)·V`, computed per head: the hidden
//! vector is projected to queries, keys and values, split into `heads` slices of
//! `head_dim`, attended independently, then concatenated and projected back.

use super::cache::KvCache;
use super::linear::Linear;
use super::packing::Packing;
use super::position::RotaryAngles;
use super::probe;
use crate::Result;
use tch::{Kind, Tensor};

/// How queries, keys and values are projected from the hidden states.
#[derive(Debug)]
pub enum Projections {
    /// Three projections (BERT `query`/`key`/`value`, T5 `q`/`k`/`v`, Llama `q_proj`/…).
    Separate {
        /// Query projection.
        q: Linear,
        /// Key projection.
        k: Linear,
        /// Value projection.
        v: Linear,
    },
    /// One projection to `[q | k | v]` (GPT-2 `c_attn`), split by the widths of the query
    /// heads and of the key/value heads. Self-attention only.
    Fused(Linear),
}

/// What every attention call of one forward pass shares, built once by the model.
#[derive(Default, Clone, Copy)]
pub struct AttentionContext<'a> {
    /// Additive mask `[batch, 1, q_len, k_len]` (or broadcastable), see [`super::mask`].
    pub mask: Option<&'a Tensor>,
    /// Additive position bias `[1 or batch, heads, q_len, k_len]` (T5 buckets, ALiBi).
    pub position_bias: Option<&'a Tensor>,
    /// Rotary angles of the new positions, applied to queries and keys before the keys are
    /// cached (Llama family). Self-attention only.
    pub rotary: Option<&'a RotaryAngles>,
    /// Query rows per key/value row in cross-attention: an input's beams share its encoder
    /// output on consecutive rows. 0 or 1: one query row per key/value row.
    pub groups: i64,
    /// Self-attention over packed real tokens (an encoder skipping padding): the input is
    /// `[tokens, hidden]`, unpacked to the padded layout for attention only, and the output
    /// is `[tokens, hidden]` again. No cache, no cross-attention.
    pub packing: Option<&'a Packing>,
}

/// Multi-head attention: self-attention when no key/value input is given, cross-attention
/// otherwise. With fewer key/value heads than query heads (grouped-query attention) each
/// key/value head serves `num_heads / num_kv_heads` consecutive query heads, and caches keep
/// only the key/value heads.
#[derive(Debug)]
pub struct MultiHeadAttention {
    /// The input projections.
    pub projections: Projections,
    /// The output projection (BERT `output.dense`, T5 `o`, GPT-2 `c_proj`).
    pub out: Linear,
    /// Number of query heads.
    pub num_heads: i64,
    /// Number of key/value heads (= `num_heads` except in grouped-query attention).
    pub num_kv_heads: i64,
    /// Width of each head.
    pub head_dim: i64,
    /// Multiplier on `Q·Kᵀ`: `1/√head_dim` usually, 1 for T5 (folded into its init).
    pub scale: f64,
}

impl MultiHeadAttention {
    /// Attention with as many key/value heads as query heads and the standard `1/√head_dim`
    /// scaling.
    pub fn new(projections: Projections, out: Linear, num_heads: i64, head_dim: i64) -> Self {
        MultiHeadAttention {
            projections,
            out,
            num_heads,
            num_kv_heads: num_heads,
            head_dim,
            scale: 1.0 / (head_dim as f64).sqrt(),
        }
    }

    /// Use `scale` instead of `1/√head_dim` (T5 uses 1).
    pub fn with_scale(mut self, scale: f64) -> Self {
        self.scale = scale;
        self
    }

    /// Grouped-query attention with `num_kv_heads` key/value heads (a divisor of the query
    /// heads).
    pub fn with_kv_heads(mut self, num_kv_heads: i64) -> Result<Self> {
        if num_kv_heads <= 0 || self.num_heads % num_kv_heads != 0 {
            return Err(crate::Error::Unsupported(format!(
                "{} attention heads cannot be shared by {num_kv_heads} key/value heads: \
                 num_key_value_heads must divide num_attention_heads",
                self.num_heads
            )));
        }
        self.num_kv_heads = num_kv_heads;
        Ok(self)
    }

    /// `[batch, seq, heads·head_dim] → [batch, heads, seq, head_dim]`.
    fn split_heads(&self, x: &Tensor, heads: i64) -> Result<Tensor> {
        let (b, s) = (x.size()[0], x.size()[1]);
        Ok(x.f_view([b, s, heads, self.head_dim])?.f_transpose(1, 2)?)
    }

    /// Project `x` (queries) and `kv` (keys/values source, `None` for self-attention).
    fn project(&self, x: &Tensor, kv: Option<&Tensor>) -> Result<(Tensor, Tensor, Tensor)> {
        match (&self.projections, kv) {
            (Projections::Separate { q, k, v }, None) => {
                // One input for all three: one pass where the kernels allow it.
                let [q, k, v]: [Tensor; 3] = Linear::forward_each(&[q, k, v], x)?
                    .try_into()
                    .map_err(|_| {
                        crate::Error::Unsupported("three projections, three results".into())
                    })?;
                Ok((q, k, v))
            }
            (Projections::Separate { q, k, v }, Some(source)) => {
                let [k, v]: [Tensor; 2] = Linear::forward_each(&[k, v], source)?
                    .try_into()
                    .map_err(|_| {
                        crate::Error::Unsupported("two projections, two results".into())
                    })?;
                Ok((q.forward(x)?, k, v))
            }
            (Projections::Fused(qkv), None) => {
                let (q_width, kv_width) = (
                    self.num_heads * self.head_dim,
                    self.num_kv_heads * self.head_dim,
                );
                let parts = qkv
                    .forward(x)?
                    .f_split_with_sizes([q_width, kv_width, kv_width], -1)?;
                let [q, k, v]: [Tensor; 3] = parts.try_into().map_err(|_| {
                    crate::Error::Unsupported("a fused qkv projection splits in three".into())
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
    ///   `ctx.groups` consecutive rows of `x` (an input's beams).
    /// - `ctx`: masks, position bias, rotary angles and groups (see [`AttentionContext`]).
    /// - `cache`: for self-attention the new keys/values are appended and all are used; for
    ///   cross-attention they are computed on the first call and reused afterwards.
    pub fn forward(
        &self,
        x: &Tensor,
        kv: Option<&Tensor>,
        ctx: &AttentionContext,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.forward_with_dropout(x, kv, ctx, cache, 0.0)
    }

    /// [`forward`](Self::forward) of a model being trained: dropout with probability
    /// `probs_dropout` on the attention probabilities (BERT's `attention_probs_dropout_prob`),
    /// drawn from libtorch's global generator inside the fused kernel. 0 at inference.
    pub fn forward_with_dropout(
        &self,
        x: &Tensor,
        kv: Option<&Tensor>,
        ctx: &AttentionContext,
        cache: Option<&mut KvCache>,
        probs_dropout: f64,
    ) -> Result<Tensor> {
        if let Some(packing) = ctx.packing {
            return self.forward_packed(x, kv, ctx, cache, packing, probs_dropout);
        }
        let (b, q_len) = (x.size()[0], x.size()[1]);
        let (q, k, v) = match (kv.is_some(), cache) {
            // Cross-attention with keys/values already cached: only the query is new.
            (true, Some(c)) if !c.is_empty() => {
                let (k, v) = c
                    .get()?
                    .ok_or_else(|| crate::Error::Input("empty cross-attention cache".into()))?;
                (
                    self.split_heads(&self.query_only(x)?, self.num_heads)?,
                    k,
                    v,
                )
            }
            (_, cache) => {
                let (q, k, v) = self.project(x, kv)?;
                // q: [batch, heads, q_len, head_dim]; k, v: [rows, kv_heads, new, head_dim]
                let mut q = self.split_heads(&q, self.num_heads)?;
                let mut k = self.split_heads(&k, self.num_kv_heads)?;
                let v = self.split_heads(&v, self.num_kv_heads)?;
                if let (None, Some(rotary)) = (kv, ctx.rotary) {
                    // Rotary positions turn queries and keys before the keys are cached, so
                    // a cached key keeps the angle of its own position.
                    q = rotary.apply(&q)?;
                    k = rotary.apply(&k)?;
                }
                match cache {
                    Some(c) => {
                        let (k, v) = c.append(&k, &v)?;
                        (q, k, v)
                    }
                    None => (q, k, v),
                }
            }
        };
        let context = self.attention_of(&q, &k, &v, ctx, kv.is_some(), probs_dropout)?;
        // [batch, heads, q_len, head_dim] → [batch, q_len, heads·head_dim]
        let context = context.f_transpose(1, 2)?.f_contiguous()?.f_view([
            b,
            q_len,
            self.num_heads * self.head_dim,
        ])?;
        self.out.forward(&context)
    }

    /// Self-attention of packed real tokens `x` `[tokens, hidden]`: the projections run on
    /// the tokens' rows; queries, keys and values are unpacked to `[batch, seq, ·]` (zeros at
    /// padding, which the context's mask blocks) for the attention itself, and its output is
    /// packed back before the output projection.
    fn forward_packed(
        &self,
        x: &Tensor,
        kv: Option<&Tensor>,
        ctx: &AttentionContext,
        cache: Option<&mut KvCache>,
        packing: &Packing,
        probs_dropout: f64,
    ) -> Result<Tensor> {
        if kv.is_some() || cache.is_some() || ctx.groups > 1 {
            return Err(crate::Error::Unsupported(
                "packed tokens are for uncached self-attention (an encoder's)".into(),
            ));
        }
        let (q, k, v) = self.project(x, None)?; // [tokens, ·] each
        let (b, seq) = packing.padded_shape();
        // [batch, heads, seq, head_dim]
        let q = self.split_heads(&packing.unpack(&q)?, self.num_heads)?;
        let k = self.split_heads(&packing.unpack(&k)?, self.num_kv_heads)?;
        let v = self.split_heads(&packing.unpack(&v)?, self.num_kv_heads)?;
        let (q, k) = match ctx.rotary {
            Some(rotary) => (rotary.apply(&q)?, rotary.apply(&k)?),
            None => (q, k),
        };
        let context = self.attention_of(&q, &k, &v, ctx, false, probs_dropout)?;
        // [batch, heads, seq, head_dim] → [batch, seq, heads·head_dim] → [tokens, ·]
        let context = context.f_transpose(1, 2)?.f_contiguous()?.f_view([
            b,
            seq,
            self.num_heads * self.head_dim,
        ])?;
        self.out.forward(&packing.pack(&context)?)
    }

    /// The attention of projected heads, `[batch, heads, q_len, head_dim]`, by the path the
    /// context calls for: grouped (beams on one encoder row), row by row (a large position
    /// bias with a per-row mask), or batched. `cross`: for the probe's record.
    fn attention_of(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        ctx: &AttentionContext,
        cross: bool,
        probs_dropout: f64,
    ) -> Result<Tensor> {
        let (b, q_len) = (q.size()[0], q.size()[2]);
        let groups = ctx.groups.max(1);
        // Grouped-query attention: each key/value head serves `repeat` query heads. `attend`
        // lets the fused kernel do that itself; the grouped path gets the heads repeated.
        let repeat = self.num_heads / self.num_kv_heads;
        let (k, v) = if repeat > 1 && groups > 1 {
            repeat_heads(k, v, repeat)?
        } else {
            (k.shallow_clone(), v.shallow_clone())
        };
        let (context, weights) = if groups > 1 {
            let bias = combined_bias(ctx.mask, ctx.position_bias, q.kind())?;
            self.grouped_attention(q, &k, &v, bias, groups, probs_dropout)?
        } else {
            if k.size()[0] != b {
                return Err(crate::Error::Input(format!(
                    "{b} query rows against {} key/value rows: pass the groups explicitly",
                    k.size()[0]
                )));
            }
            match (ctx.mask, ctx.position_bias) {
                (Some(mask), Some(position))
                    if probs_dropout == 0.0
                        && b > 1
                        && (b * self.num_heads * q_len * k.size()[2]) as usize
                            * std::mem::size_of::<f32>()
                            > ROW_BY_ROW_BIAS_BYTES =>
                {
                    self.attend_row_by_row(q, &k, &v, mask, position)?
                }
                (mask, position) => {
                    let bias = combined_bias(mask, position, q.kind())?;
                    self.attend(q, &k, &v, bias, probs_dropout)?
                }
            }
        };
        if let Some(weights) = weights {
            probe::attention(cross, &weights); // [batch, heads, q_len, k_len]
        }
        Ok(context)
    }

    /// `softmax(q·kᵀ·scale + bias)·v` for `q` `[batch, heads, q_len, head_dim]` and `k`, `v`
    /// `[batch, heads, k_len, head_dim]`: libtorch's fused kernel, or, while the
    /// [`probe`] records, the same product in steps, returning the weights
    /// `[batch, heads, q_len, k_len]` the output was made from. `dropout` (training only)
    /// applies to the probabilities.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<Tensor>,
        dropout: f64,
    ) -> Result<(Tensor, Option<Tensor>)> {
        // Fewer key/value heads than query heads (grouped-query attention): `repeat` query
        // heads share each.
        let repeat = q.size()[1] / k.size()[1].max(1);
        if !probe::is_recording() && dropout == 0.0 {
            // Decoding (a few queries, f32 on the CPU): one pass in Rust per query row.
            if let Some(context) = super::fused::attention(q, k, v, bias.as_ref(), self.scale)? {
                return Ok((context, None));
            }
        }
        // libtorch's kernels below split their work by its thread count, and the sums with it:
        // a decoding step that runs them must keep all the threads (`parallel::decoding_step`).
        super::parallel::note_library_product();
        if !probe::is_recording() {
            // libtorch's fused kernel: dropout(softmax(q·kᵀ·scale + bias))·v. With grouped
            // heads (`enable_gqa`) it reads each cached K/V head once rather than a copy per
            // query head, which repeating them would make at every decoding step (same
            // result; 10–36 µs less per layer and step on SmolLM2/TinyLlama shapes).
            let context = Tensor::f_scaled_dot_product_attention(
                q,
                k,
                v,
                bias,
                dropout,
                false,
                self.scale,
                repeat > 1,
            )?;
            return Ok((context, None));
        }
        let (k, v) = &if repeat > 1 {
            repeat_heads(k, v, repeat)?
        } else {
            (k.shallow_clone(), v.shallow_clone())
        };
        // [batch, heads, q_len, k_len]
        let mut scores = q
            .f_matmul(&k.f_transpose(-2, -1)?)?
            .f_mul_scalar(self.scale)?;
        if let Some(bias) = &bias {
            scores = scores.f_add(bias)?;
        }
        let weights = scores.f_softmax(-1, Kind::Float)?;
        let context = super::dropout::dropout(&weights, dropout)?
            .f_to_kind(v.kind())?
            .f_matmul(v)?; // [batch, heads, q_len, head_dim]
        Ok((context, Some(weights)))
    }

    /// [`attend`](Self::attend) one batch row at a time, each with its own sum of the
    /// position bias and the mask (`[1, heads, q_len, k_len]`): the whole batch's sum is never
    /// made. With T5's bucketed bias shared by every row and a padding mask that differs per
    /// row, that sum is `[batch, heads, q_len, k_len]`: 41 MB for T5-small over 8 × 400
    /// tokens, 134 MB over 16 × 512, held for a whole encoder pass. Each row's attention is
    /// the batched kernel's on that row: the same values.
    fn attend_row_by_row(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        position: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>)> {
        // Row r of a tensor whose batch axis is r's own or broadcast (size 1).
        let row = |t: &Tensor, r: i64| -> Result<Tensor> {
            Ok(if t.size()[0] == 1 {
                t.shallow_clone()
            } else {
                t.f_narrow(0, r, 1)?
            })
        };
        let (mut contexts, mut weights) = (Vec::new(), Vec::new());
        for r in 0..q.size()[0] {
            let bias = combined_bias(Some(&row(mask, r)?), Some(&row(position, r)?), q.kind())?;
            let (context, w) = self.attend(&row(q, r)?, &row(k, r)?, &row(v, r)?, bias, 0.0)?;
            contexts.push(context);
            weights.extend(w);
        }
        let weights = if weights.is_empty() {
            None
        } else {
            Some(Tensor::f_cat(&weights, 0)?)
        };
        Ok((Tensor::f_cat(&contexts, 0)?, weights))
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
        dropout: f64,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (rows, q_len) = (k.size()[0], q.size()[2]);
        let (h, d) = (self.num_heads, self.head_dim);
        if q.size()[0] != rows * groups {
            return Err(crate::Error::Input(format!(
                "{} query rows are not {groups} per each of {rows} key/value rows",
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
        let (context, weights) = self.attend(&q, k, v, bias, dropout)?;
        // [rows, h, groups·q_len, d] → [rows·groups, h, q_len, d]
        let context = context
            .f_view([rows, h, groups, q_len, d])?
            .f_permute([0, 2, 1, 3, 4])?
            .f_reshape([rows * groups, h, q_len, d])?;
        // The same for the weights, with k_len in place of d.
        let weights = weights
            .map(|w| -> Result<Tensor> {
                let k_len = w.size()[3];
                Ok(w.f_view([rows, h, groups, q_len, k_len])?
                    .f_permute([0, 2, 1, 3, 4])?
                    .f_reshape([rows * groups, h, q_len, k_len])?)
            })
            .transpose()?;
        Ok((context, weights))
    }

    fn query_only(&self, x: &Tensor) -> Result<Tensor> {
        match &self.projections {
            Projections::Separate { q, .. } => q.forward(x),
            Projections::Fused(_) => Err(crate::Error::Unsupported(
                "cross-attention needs separate q/k/v projections".into(),
            )),
        }
    }
}

/// Above this size (bytes of the `[batch, heads, q_len, k_len]` sum of a position bias and a
/// mask), attention runs one batch row at a time rather than make the sum
/// ([`MultiHeadAttention::attend_row_by_row`]). Decoding steps and short inputs stay batched.
const ROW_BY_ROW_BIAS_BYTES: usize = 4 << 20;

/// The additive bias of one attention call: mask and position bias summed (broadcast), in
/// the queries' kind (f32 masks meet bf16 models).
fn combined_bias(
    mask: Option<&Tensor>,
    position: Option<&Tensor>,
    kind: Kind,
) -> Result<Option<Tensor>> {
    let bias = match (mask, position) {
        (Some(m), Some(p)) => Some(p.f_add(m)?),
        (Some(m), None) => Some(m.shallow_clone()),
        (None, Some(p)) => Some(p.shallow_clone()),
        (None, None) => None,
    };
    Ok(bias.map(|b| b.f_to_kind(kind)).transpose()?)
}

/// Each key/value head repeated for the `repeat` query heads it serves:
/// `[batch, kv_heads, len, head_dim]` → `[batch, kv_heads·repeat, len, head_dim]`.
fn repeat_heads(k: &Tensor, v: &Tensor, repeat: i64) -> Result<(Tensor, Tensor)> {
    Ok((
        k.f_repeat_interleave_self_int(repeat, 1, None::<i64>)?,
        v.f_repeat_interleave_self_int(repeat, 1, None::<i64>)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// A shared position bias with a per-row padding mask, large enough to run row by row,
    /// gives what the batched kernel gives on the summed bias.
    #[test]
    fn row_by_row_attention_equals_the_batched_sum() {
        tch::manual_seed(11);
        let (batch, n, heads, head_dim) = (3i64, 600i64, 2i64, 8i64);
        let hidden = heads * head_dim;
        let linear = || {
            Linear::from_tensors(
                Tensor::randn([hidden, hidden], (Kind::Float, Device::Cpu)) * 0.3,
                Some(Tensor::randn([hidden], (Kind::Float, Device::Cpu)) * 0.1),
            )
        };
        let attention = MultiHeadAttention::new(
            Projections::Separate {
                q: linear(),
                k: linear(),
                v: linear(),
            },
            linear(),
            heads,
            head_dim,
        );
        assert!((batch * heads * n * n) as usize * 4 > ROW_BY_ROW_BIAS_BYTES);
        let x = Tensor::randn([batch, n, hidden], (Kind::Float, Device::Cpu));
        let position = Tensor::randn([1, heads, n, n], (Kind::Float, Device::Cpu));
        // Rows padded after 600, 450 and 17 tokens.
        let lengths = Tensor::from_slice(&[600i64, 450, 17]).view([batch, 1]);
        let keep = Tensor::arange(n, (Kind::Int64, Device::Cpu))
            .view([1, n])
            .lt_tensor(&lengths);
        let mask = crate::nn::mask::padding_mask(&keep.to_kind(Kind::Int64), Kind::Float).unwrap();
        let by_rows = AttentionContext {
            mask: Some(&mask),
            position_bias: Some(&position),
            ..Default::default()
        };
        let summed = position.f_add(&mask).unwrap();
        let batched = AttentionContext {
            position_bias: Some(&summed),
            ..Default::default()
        };
        let a = attention.forward(&x, None, &by_rows, None).unwrap();
        let b = attention.forward(&x, None, &batched, None).unwrap();
        let diff = (&a - &b).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "row by row differs from batched by {diff}");
    }
}
