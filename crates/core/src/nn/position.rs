//! Positional information: attention itself is blind to word order, so each model adds it.
//!
//! - sinusoidal: the fixed table of "Attention Is All You Need";
//! - learned absolute: an [`Embedding`](super::Embedding) indexed by position (BERT, GPT-2);
//! - relative: T5's learned bias per (bucketed) query–key distance, added to attention scores.

use super::linear::Embedding;
use crate::Result;
use tch::{Device, Kind, Tensor};

/// The sinusoidal table `[n_pos, dim]`: `PE[p, 2i] = sin(p / 10000^(2i/dim))`,
/// `PE[p, 2i+1] = cos(p / 10000^(2i/dim))`.
pub fn sinusoidal_table(n_pos: i64, dim: i64, device: Device) -> Tensor {
    let pos = Tensor::arange(n_pos, (Kind::Double, device)).unsqueeze(1); // [n_pos, 1]
    let i2 = Tensor::arange_start_step(0, dim, 2, (Kind::Double, device)); // [dim/2] = 2i
    let inv_freq = (i2 / dim as f64 * -(10000f64.ln())).exp(); // 10000^(-2i/dim)
    let angles = pos * inv_freq.unsqueeze(0); // [n_pos, dim/2]

    // Interleave: even columns sin, odd columns cos.
    let table = Tensor::stack(&[angles.sin(), angles.cos()], 2).view([n_pos, -1]);
    table.narrow(1, 0, dim).to_kind(Kind::Float)
}

/// T5's bucket of a relative position `key − query`.
///
/// Distances below `num_buckets/2` (half of that when bidirectional) get a bucket each;
/// larger ones share logarithmically wider buckets up to `max_distance`. Bidirectional
/// (encoder) buckets keep the sign: keys after the query use the upper half of the buckets.
/// Causal (decoder) buckets fold every future key into bucket 0.
pub fn relative_position_bucket(
    relative_position: &Tensor,
    bidirectional: bool,
    num_buckets: i64,
    max_distance: i64,
) -> Tensor {
    let (num_buckets, base, distance) = if bidirectional {
        let half = num_buckets / 2;
        let upper = relative_position.gt(0).to_kind(Kind::Int64) * half;
        (half, upper, relative_position.abs())
    } else {
        (
            num_buckets,
            relative_position.zeros_like(),
            (-relative_position).clamp_min(0),
        )
    };
    let max_exact = num_buckets / 2;
    let is_small = distance.lt(max_exact);
    // Float32 arithmetic, as the reference computes it, so that bucket edges agree exactly.
    let log_ratio = (distance.to_kind(Kind::Float) / max_exact as f64).log()
        / (max_distance as f64 / max_exact as f64).ln();
    let large = (log_ratio * (num_buckets - max_exact) as f64).to_kind(Kind::Int64) + max_exact;
    let large = large.clamp_max(num_buckets - 1);
    base + distance.where_self(&is_small, &large)
}

/// T5's learned relative position bias, one scalar per (bucket, head).
#[derive(Debug)]
pub struct RelativePositionBias {
    /// `relative_attention_bias.weight`, `[num_buckets, heads]`.
    pub embedding: Embedding,
    /// Whether keys after the query get their own buckets (encoder) or not (decoder).
    pub bidirectional: bool,
    /// Number of buckets.
    pub num_buckets: i64,
    /// Distance from which all positions share the last bucket.
    pub max_distance: i64,
}

impl RelativePositionBias {
    /// The bias `[1, heads, q_len, k_len]` for queries at positions `offset..offset+q_len`
    /// against keys at `0..k_len` (`offset` > 0 when decoding with a cache).
    pub fn forward(&self, q_len: i64, k_len: i64, offset: i64) -> Result<Tensor> {
        let device = self.embedding.weight.device();
        let query = Tensor::f_arange_start(offset, offset + q_len, (Kind::Int64, device))?
            .f_unsqueeze(1)?;
        let key = Tensor::f_arange(k_len, (Kind::Int64, device))?.f_unsqueeze(0)?;
        let relative = key - query; // [q, k]
        let buckets = relative_position_bucket(
            &relative,
            self.bidirectional,
            self.num_buckets,
            self.max_distance,
        );
        // [q, k, heads] → [1, heads, q, k]
        Ok(self
            .embedding
            .forward(&buckets)
            .f_permute([2, 0, 1])?
            .f_unsqueeze(0)?)
    }
}
