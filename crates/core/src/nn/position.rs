//! Positional information: attention itself is blind to word order, so each model adds it.
//!
//! - sinusoidal: the fixed table of "Attention Is All You Need";
//! - learned absolute: an [`Embedding`] indexed by position (BERT, GPT-2);
//! - relative: T5's learned bias per (bucketed) query–key distance, added to attention scores;
//! - rotary: queries and keys turned by position-dependent angles ([`Rotary`], Llama family),
//!   so that their dot product depends on the distance between them;
//! - ALiBi: a per-head linear penalty on distance, added to the scores ([`alibi_bias`], BLOOM).

use super::linear::Embedding;
use crate::Result;
use tch::{Device, Kind, Tensor};

/// The sinusoidal table `[n_pos, dim]`: `PE[p, 2i] = sin(p / 10000^(2i/dim))`,
/// `PE[p, 2i+1] = cos(p / 10000^(2i/dim))`.
pub fn sinusoidal_table(n_pos: i64, dim: i64, device: Device) -> Result<Tensor> {
    let pos = Tensor::f_arange(n_pos, (Kind::Double, device))?.f_unsqueeze(1)?; // [n_pos, 1]
    let i2 = Tensor::f_arange_start_step(0, dim, 2, (Kind::Double, device))?; // [dim/2] = 2i
    let inv_freq = (i2 / dim as f64 * -(10000f64.ln())).f_exp()?; // 10000^(-2i/dim)
    let angles = pos.f_mul(&inv_freq.f_unsqueeze(0)?)?; // [n_pos, dim/2]

    // Interleave: even columns sin, odd columns cos.
    let table = Tensor::f_stack(&[angles.f_sin()?, angles.f_cos()?], 2)?.f_view([n_pos, -1])?;
    Ok(table.f_narrow(1, 0, dim)?.f_to_kind(Kind::Float)?)
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
) -> Result<Tensor> {
    let (num_buckets, base, distance) = if bidirectional {
        let half = num_buckets / 2;
        let upper = relative_position.f_gt(0)?.f_to_kind(Kind::Int64)? * half;
        (half, upper, relative_position.f_abs()?)
    } else {
        (
            num_buckets,
            relative_position.f_zeros_like()?,
            relative_position.f_neg()?.f_clamp_min(0)?,
        )
    };
    let max_exact = num_buckets / 2;
    let is_small = distance.f_lt(max_exact)?;
    // Float32 arithmetic, as the reference computes it, so that bucket edges agree exactly.
    let log_ratio = (distance.f_to_kind(Kind::Float)? / max_exact as f64).f_log()?
        / (max_distance as f64 / max_exact as f64).ln();
    let large = (log_ratio * (num_buckets - max_exact) as f64).f_to_kind(Kind::Int64)? + max_exact;
    let large = large.f_clamp_max(num_buckets - 1)?;
    Ok(base.f_add(&distance.f_where_self(&is_small, &large)?)?)
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
        )?;
        // [q, k, heads] → [1, heads, q, k]
        Ok(self
            .embedding
            .forward(&buckets)?
            .f_permute([2, 0, 1])?
            .f_unsqueeze(0)?)
    }
}

/// How a checkpoint stretches rotary positions beyond its training context
/// (`rope_scaling` / `rope_parameters` in config.json).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain rotary positions.
    None,
    /// Positions divided by `factor` (`"linear"`).
    Linear {
        /// Stretch factor.
        factor: f64,
    },
    /// NTK-aware: the base grows once a sequence is longer than the original context
    /// (`"dynamic"`).
    Dynamic {
        /// Stretch factor.
        factor: f64,
        /// The context the model was trained on.
        original_max_position_embeddings: i64,
    },
    /// Llama 3.1's per-frequency rule (`"llama3"`): high frequencies unchanged, low ones
    /// divided by `factor`, a smooth blend between.
    Llama3 {
        /// Stretch of the low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are divided by `factor`.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are unchanged.
        high_freq_factor: f64,
        /// The context the model was trained on.
        original_max_position_embeddings: i64,
    },
}

/// Rotary position embeddings (RoFormer, the Llama family): each pair of dimensions `(i,
/// i + head_dim/2)` of a query or key at position `p` is rotated by the angle
/// `p · inv_freq[i]`, with `inv_freq[i] = θ^(−2i/head_dim)` (then scaled, see
/// [`RopeScaling`]). Half-split pairs, as transformers' `rotate_half`, not interleaved ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotary {
    /// Width of a head (the rotated dimensions).
    pub head_dim: i64,
    /// The base θ (`rope_theta`, 10000 in Llama 2).
    pub theta: f64,
    /// The scaling variant.
    pub scaling: RopeScaling,
    /// The model's context (`max_position_embeddings`).
    pub max_position_embeddings: i64,
}

/// cos and sin of the rotary angles of some positions, `[batch, 1, seq, head_dim]`, computed
/// once per forward pass and used by every layer.
#[derive(Debug)]
pub struct RotaryAngles {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    /// Read the rotary settings of a config.json: `rope_theta` with `rope_scaling` (the
    /// layout of published checkpoints) or `rope_parameters` (the layout transformers 5
    /// writes). Missing values take Llama's defaults (θ = 10000, no scaling).
    pub fn from_config(config: &serde_json::Value, head_dim: i64) -> crate::Result<Self> {
        let params = config
            .get("rope_parameters")
            .filter(|v| v.is_object())
            .or_else(|| config.get("rope_scaling").filter(|v| v.is_object()));
        let number = |key: &str| {
            params
                .and_then(|p| p.get(key))
                .and_then(serde_json::Value::as_f64)
        };
        let theta = number("rope_theta")
            .or_else(|| config.get("rope_theta").and_then(serde_json::Value::as_f64))
            .unwrap_or(10000.0);
        let max_position_embeddings = config
            .get("max_position_embeddings")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(2048);
        let kind = params
            .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("default");
        let factor = || {
            number("factor").ok_or_else(|| {
                crate::Error::Unsupported(format!("rope scaling '{kind}' needs a factor"))
            })
        };
        let original = number("original_max_position_embeddings")
            .map(|v| v as i64)
            .unwrap_or(max_position_embeddings);
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: factor()? },
            "dynamic" => RopeScaling::Dynamic {
                factor: factor()?,
                original_max_position_embeddings: original,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: number("low_freq_factor").unwrap_or(1.0),
                high_freq_factor: number("high_freq_factor").unwrap_or(4.0),
                original_max_position_embeddings: original,
            },
            other => {
                return Err(crate::Error::Unsupported(format!(
                    "rope scaling '{other}' (supported: default, linear, dynamic, llama3)"
                )))
            }
        };
        Ok(Rotary {
            head_dim,
            theta,
            scaling,
            max_position_embeddings,
        })
    }

    /// `inv_freq` `[head_dim/2]` f32 for sequences of `seq_len` positions (only the dynamic
    /// variant depends on it), computed in f32 as transformers does.
    pub fn inv_freq(&self, seq_len: i64, device: Device) -> crate::Result<Tensor> {
        let d = self.head_dim;
        let base = match &self.scaling {
            RopeScaling::Dynamic {
                factor,
                original_max_position_embeddings: original,
            } if seq_len > *original => {
                let stretch = factor * seq_len as f64 / *original as f64 - (factor - 1.0);
                self.theta * stretch.powf(d as f64 / (d as f64 - 2.0))
            }
            _ => self.theta,
        };
        // 1 / base^(2i/d), exponents in f32.
        let exponents = Tensor::f_arange_start_step(0, d, 2, (Kind::Int64, device))?
            .f_to_kind(Kind::Float)?
            / d as f64;
        let inv_freq = Tensor::f_full([d / 2], base, (Kind::Float, device))?
            .f_pow(&exponents)?
            .f_reciprocal()?;
        Ok(match &self.scaling {
            RopeScaling::Linear { factor } => inv_freq / *factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: original,
            } => {
                let original = *original as f64;
                let low_freq_wavelen = original / low_freq_factor;
                let high_freq_wavelen = original / high_freq_factor;
                let wavelen = inv_freq.f_reciprocal()? * (2.0 * std::f64::consts::PI);
                // Long wavelengths (low frequencies) are stretched by the factor.
                let stretched = (&inv_freq / *factor)
                    .f_where_self(&wavelen.f_gt(low_freq_wavelen)?, &inv_freq)?;
                // Between the two limits, a blend of stretched and unchanged.
                let smooth = (wavelen.f_reciprocal()? * original - *low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                let smoothed =
                    (smooth.f_neg()? + 1.0) * (&stretched / *factor) + &smooth * &stretched;
                let medium = wavelen
                    .f_ge(high_freq_wavelen)?
                    .f_logical_and(&wavelen.f_le(low_freq_wavelen)?)?;
                smoothed.f_where_self(&medium, &stretched)?
            }
            RopeScaling::None | RopeScaling::Dynamic { .. } => inv_freq,
        })
    }

    /// The angles of `positions` `[batch, seq]` (int64), as cos/sin in `kind`.
    pub fn angles(&self, positions: &Tensor, kind: Kind) -> crate::Result<RotaryAngles> {
        let seq_len = positions.f_max()?.int64_value(&[]) + 1;
        let inv_freq = self.inv_freq(seq_len, positions.device())?; // [d/2]
                                                                    // [batch, seq, 1] · [d/2] → [batch, seq, d/2], in f32
        let freqs = positions
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(-1)?
            .f_mul(&inv_freq)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?.f_unsqueeze(1)?; // [batch, 1, seq, d]
        Ok(RotaryAngles {
            cos: emb.f_cos()?.f_to_kind(kind)?,
            sin: emb.f_sin()?.f_to_kind(kind)?,
        })
    }
}

impl RotaryAngles {
    /// Turn `x` `[batch, heads, seq, head_dim]`: `x·cos + rotate_half(x)·sin`, where
    /// `rotate_half([x₁, x₂]) = [−x₂, x₁]` on the two halves of the head.
    pub fn apply(&self, x: &Tensor) -> crate::Result<Tensor> {
        if let Some(y) = super::fused::rotary(x, &self.cos, &self.sin)? {
            return Ok(y); // (f32 on the CPU: the same in one pass)
        }
        let half = x.size()[3] / 2;
        let (x1, x2) = (x.f_narrow(3, 0, half)?, x.f_narrow(3, half, half)?);
        let rotated = Tensor::f_cat(&[&x2.f_neg()?, &x1], 3)?;
        Ok(x.f_mul(&self.cos)?.f_add(&rotated.f_mul(&self.sin)?)?)
    }

    /// The cos table `[batch, 1, seq, head_dim]` (for inspection and tests).
    pub fn cos(&self) -> &Tensor {
        &self.cos
    }

    /// The sin table `[batch, 1, seq, head_dim]`.
    pub fn sin(&self) -> &Tensor {
        &self.sin
    }
}

/// ALiBi's slope of each head (BLOOM, MPT): a geometric sequence `2^(-8/n)`, `2^(-16/n)`, …
/// for `n` heads a power of two; otherwise the sequence of the power of two below, followed
/// by every other slope of the sequence for twice that many heads, as the paper (and
/// transformers' `build_alibi_tensor`) extend it.
///
/// Computed as transformers' `_get_alibi_slopes` does, in f32: the base rounded to f32 and
/// each power rounded to f32 (so the bias is transformers' to the bit, not only to 1e-7).
pub fn alibi_slopes(num_heads: i64) -> Vec<f64> {
    let below = 1i64 << (63 - num_heads.max(1).leading_zeros()); // largest power of 2 ≤ n
    let geometric = |n: i64| -> Vec<f64> {
        let base = f64::from(2f64.powf(-8.0 / n as f64) as f32);
        (1..=n)
            .map(|i| f64::from(base.powi(i as i32) as f32))
            .collect()
    };
    let mut slopes = geometric(below);
    if below < num_heads {
        let extra = geometric(2 * below);
        slopes.extend(
            extra
                .into_iter()
                .step_by(2)
                .take((num_heads - below) as usize),
        );
    }
    slopes
}

/// ALiBi's additive attention bias `[batch, heads, 1, k]`: each head's slope times the key's
/// position among the real tokens of its row (`cumsum(mask) − 1`, 0 for padding), added to
/// the scores (attention's `position_bias`) in place of position embeddings. Computed in f32
/// and then cast to `kind`, as transformers' `build_alibi_tensor` (so the bias is its own to
/// the bit; no f64, which MPS lacks). Adding `slope · k` rather than `−slope · (q − k)`
/// changes each query's scores by a constant, which the softmax ignores.
pub fn alibi_bias(attention_mask: &Tensor, num_heads: i64, kind: Kind) -> Result<Tensor> {
    let mask = attention_mask.f_to_kind(Kind::Int64)?;
    let positions = (mask.f_cumsum(1, Kind::Int64)? - 1).f_mul(&mask)?; // [batch, k]
    let slopes: Vec<f32> = alibi_slopes(num_heads)
        .into_iter()
        .map(|s| s as f32) // exact: the slopes are f32 values
        .collect();
    let slopes = Tensor::f_from_slice(&slopes)?
        .f_to_device(attention_mask.device())?
        .f_view([1, num_heads, 1, 1])?;
    let positions = positions
        .f_to_kind(Kind::Float)?
        .f_unsqueeze(1)?
        .f_unsqueeze(1)?; // [batch, 1, 1, k]
    Ok(slopes.f_mul(&positions)?.f_to_kind(kind)?)
}

#[cfg(test)]
mod alibi_tests {
    use super::*;

    #[test]
    fn slopes_follow_the_paper() {
        // 8 heads: 1/2, 1/4, …, 1/256 (Press et al., section 3).
        let expected: Vec<f64> = (1..=8).map(|i| 0.5f64.powi(i)).collect();
        assert_eq!(alibi_slopes(8), expected);
        // 12 heads: the 8-head sequence, then the odd terms of the 16-head one, 2^-0.5, 2^-1.5, …
        let twelve = alibi_slopes(12);
        assert_eq!(twelve.len(), 12);
        assert_eq!(&twelve[..8], &expected[..]);
        for (i, s) in twelve[8..].iter().enumerate() {
            // Powers of an f32 base, rounded to f32 as transformers computes them: within an
            // f32 rounding of the exact value.
            let exact = 2f64.powf(-0.5 - i as f64);
            assert!(
                (s - exact).abs() <= exact * f64::from(f32::EPSILON),
                "{i}: {s}"
            );
            assert_eq!(*s, f64::from(*s as f32), "{i}: {s} is an f32 value");
        }
    }

    #[test]
    fn the_bias_grows_with_the_key_position_among_real_tokens() {
        let mask = Tensor::from_slice(&[0i64, 1, 1, 1, 1, 1, 1, 1]).view([2, 4]);
        let bias = alibi_bias(&mask, 2, Kind::Float).unwrap(); // [2, 2, 1, 4]
        assert_eq!(bias.size(), [2, 2, 1, 4]);
        let row = |b: i64, h: i64| Vec::<f32>::try_from(bias.get(b).get(h).view([-1])).unwrap();
        // Two heads: slopes 2^-4 and 2^-8; the first row's padding counts as position 0.
        assert_eq!(row(0, 0), [0.0, 0.0, 0.0625, 0.125]);
        assert_eq!(row(1, 0), [0.0, 0.0625, 0.125, 0.1875]);
        assert_eq!(row(1, 1), [0.0, 1.0 / 256.0, 2.0 / 256.0, 3.0 / 256.0]);
    }
}
