//! Dropout, for models being trained. Inference never calls it with a probability above zero,
//! so a loaded model computes exactly what it did before training existed.

use crate::Result;
use tch::Tensor;

/// `x` with each element zeroed with probability `p` and the rest scaled by `1 / (1 − p)`
/// (PyTorch's `nn.Dropout` in training mode), drawn from libtorch's global generator. With
/// `p = 0` it is `x` itself: no operation, no random numbers drawn.
pub fn dropout(x: &Tensor, p: f64) -> Result<Tensor> {
    if p > 0.0 {
        Ok(x.f_dropout(p, true)?)
    } else {
        Ok(x.shallow_clone())
    }
}

/// Dropout inside a transformer layer: on the attention probabilities, and on each
/// sublayer's output before it joins the residual connection (BERT's `hidden_dropout_prob`
/// after `attention.output.dense` and `output.dense`; DistilBERT's `dropout` after
/// `ffn.lin2` only). All zero, the default, at inference.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SublayerDropout {
    /// On the attention probabilities, before they weight the values (BERT's
    /// `attention_probs_dropout_prob`, DistilBERT's `attention_dropout`).
    pub attention_probs: f64,
    /// After the attention output projection (self- and cross-attention).
    pub attention: f64,
    /// After the feed-forward network's down-projection.
    pub feed_forward: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn zero_is_the_identity_and_p_scales_the_survivors() {
        let x = Tensor::ones([1000], (Kind::Float, Device::Cpu));
        assert!(dropout(&x, 0.0).unwrap().equal(&x));
        tch::manual_seed(3);
        let y = dropout(&x, 0.25).unwrap();
        let kept = y.ne(0.0).sum(Kind::Float).double_value(&[]);
        assert!((650.0..850.0).contains(&kept), "{kept} kept");
        let max = y.max().double_value(&[]);
        assert!((max - 1.0 / 0.75).abs() < 1e-6, "{max}");
    }
}
