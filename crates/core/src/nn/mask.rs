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

/// Padding, causal and sliding-window masks together, `[batch, 1, q, k]` (Mistral, and Qwen2's
/// windowed layers). `attention_mask` `[batch, k]` (1/0) covers the cached keys and the
/// `q_len` new ones, which are its last `q_len` slots. The query in slot `i` sees the keys in
/// slots `i - window + 1 ..= i` the mask allows: itself and the `window - 1` before it, as
/// transformers' `kv_idx > q_idx - sliding_window`.
///
/// Slots are counted, not positions. Under left padding a real token's slot is its position
/// plus the row's padding, so the window spans the same real tokens; during cached decoding
/// (`q_len` 1, `k` = past + 1) the new token at position `p` sees positions `p - window + 1 ..= p`.
/// A `window` of at least `k` changes nothing: that is [`causal_padding_mask`].
pub fn sliding_window_mask(
    attention_mask: &Tensor,
    q_len: i64,
    window: i64,
    kind: Kind,
) -> Result<Tensor> {
    if window < 1 {
        return Err(crate::Error::Input(format!(
            "sliding_window = {window}: a query must see at least itself"
        )));
    }
    let mask = causal_padding_mask(attention_mask, q_len, kind)?; // [batch, 1, q, k]
    let k_len = attention_mask.size()[1];
    if window >= k_len {
        return Ok(mask);
    }
    let device = attention_mask.device();
    let q_slot =
        Tensor::f_arange_start(k_len - q_len, k_len, (Kind::Int64, device))?.f_unsqueeze(1)?; // [q, 1]
    let k_slot = Tensor::f_arange(k_len, (Kind::Int64, device))?.f_unsqueeze(0)?; // [1, k]
    let too_old = k_slot.f_le_tensor(&q_slot.f_sub_scalar(window)?)?; // [q, k]
    Ok(mask.f_masked_fill(&too_old, blocked_value(kind))?)
}

/// The self-attention mask of `n` new decoder tokens after `past` cached ones: none for one
/// token (it may see every cached key), the causal `[1, 1, n, past + n]` mask for several.
pub fn decoder_self_mask(n: i64, past: i64, device: Device) -> Result<Option<Tensor>> {
    (n > 1)
        .then(|| causal_mask(n, past + n, Kind::Float, device))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a query may see, from an additive mask row: 1 for visible, 0 for blocked.
    fn visible(mask: &Tensor) -> Vec<Vec<Vec<i64>>> {
        let seen = mask.squeeze_dim(1).eq(0).to_kind(Kind::Int64); // [batch, q, k]
        let (q, k) = (seen.size()[1] as usize, seen.size()[2] as usize);
        let flat = Vec::<i64>::try_from(seen.flatten(0, -1)).unwrap();
        flat.chunks(q * k)
            .map(|b| b.chunks(k).map(<[i64]>::to_vec).collect())
            .collect()
    }

    #[test]
    fn sliding_window_sees_the_last_window_keys_under_left_padding_and_in_cached_steps() {
        // Row 0 has two padding slots, row 1 none; six slots in all, window 3.
        let attention = Tensor::from_slice2(&[[0i64, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]);
        let full = sliding_window_mask(&attention, 6, 3, Kind::Float).unwrap();
        assert_eq!(full.size(), [2, 1, 6, 6]);
        let rows = visible(&full);
        // Row 1, query 4 sees slots 2, 3, 4; query 0 only itself.
        assert_eq!(rows[1][4], [0, 0, 1, 1, 1, 0]);
        assert_eq!(rows[1][0], [1, 0, 0, 0, 0, 0]);
        // Row 0: the first real token (slot 2) sees itself only; the last (position 3) sees
        // positions 1..=3, i.e. slots 3..=5 — the same window as without padding.
        assert_eq!(rows[0][2], [0, 0, 1, 0, 0, 0]);
        assert_eq!(rows[0][5], [0, 0, 0, 1, 1, 1]);
        // Cached decoding: one new query after five cached keys equals the last query row of
        // the whole mask; so do two new queries.
        for q in [1, 2] {
            let step = visible(&sliding_window_mask(&attention, q, 3, Kind::Float).unwrap());
            for (b, row) in rows.iter().enumerate() {
                assert_eq!(step[b], row[(6 - q) as usize..], "q = {q}, row {b}");
            }
        }
        // A window as long as the keys is the causal padding mask; a window of 0 is refused.
        let long = sliding_window_mask(&attention, 6, 6, Kind::Float).unwrap();
        let causal = causal_padding_mask(&attention, 6, Kind::Float).unwrap();
        assert!(long.equal(&causal));
        assert!(sliding_window_mask(&attention, 6, 0, Kind::Float).is_err());
    }
}
