//! Attention masks, additive and `[batch, 1, q, k]`, built once per forward pass.
//!
//! A mask value of 0 lets a query attend to a key; a large negative value blocks it, so
//! that after the softmax its weight is 0. We use a large finite value rather than -inf so
//! that a row with every key blocked (a left-padding position) stays finite instead of NaN.

use crate::Result;
use tch::{Device, Kind, Tensor};

/// The additive value that blocks attention, for a float kind.
pub fn blocked_value(kind: Kind) -> f64 {
    match kind {
        Kind::Half => -6.0e4,
        _ => -1.0e9,
    }
}

/// From a `[batch, k]` 1/0 attention mask to an additive `[batch, 1, 1, k]` mask.
pub fn padding_mask(attention_mask: &Tensor, kind: Kind) -> Result<Tensor> {
    let blocked = attention_mask.f_eq(0)?.f_unsqueeze(1)?.f_unsqueeze(1)?; // [batch, 1, 1, k]
    Ok(
        Tensor::f_zeros(blocked.size(), (kind, attention_mask.device()))?
            .f_masked_fill(&blocked, blocked_value(kind))?,
    )
}

/// The causal mask `[1, 1, q, k]`: query `i` (at absolute position `k - q + i`) sees keys
/// at positions `≤` its own.
pub fn causal_mask(q_len: i64, k_len: i64, kind: Kind, device: Device) -> Result<Tensor> {
    let offset = k_len - q_len;
    let q_pos = Tensor::f_arange_start(offset, k_len, (Kind::Int64, device))?.f_unsqueeze(1)?; // [q, 1]
    let k_pos = Tensor::f_arange(k_len, (Kind::Int64, device))?.f_unsqueeze(0)?; // [1, k]
    let future = k_pos.f_gt_tensor(&q_pos)?; // [q, k]
    Ok(Tensor::f_zeros([q_len, k_len], (kind, device))?
        .f_masked_fill(&future, blocked_value(kind))?
        .f_view([1, 1, q_len, k_len])?)
}

/// Padding and causal masks together, `[batch, 1, q, k]`.
pub fn causal_padding_mask(attention_mask: &Tensor, q_len: i64, kind: Kind) -> Result<Tensor> {
    let k_len = attention_mask.size()[1];
    let causal = causal_mask(q_len, k_len, kind, attention_mask.device())?;
    // Adding two blocked values stays far below any score and within f32 range.
    Ok(padding_mask(attention_mask, kind)?
        .f_add(&causal)?
        .f_clamp_min(blocked_value(kind))?)
}

/// The self-attention mask of `n` new decoder tokens after `past` cached ones: none for one
/// token (it may see every cached key), the causal `[1, 1, n, past + n]` mask for several.
pub fn decoder_self_mask(n: i64, past: i64, device: Device) -> Result<Option<Tensor>> {
    (n > 1)
        .then(|| causal_mask(n, past + n, Kind::Float, device))
        .transpose()
}
