//! AdamW with decoupled weight decay, and gradient clipping by the global norm: PyTorch's
//! `torch.optim.AdamW` (the single-tensor CPU path) and `clip_grad_norm_`, step for step.

use crate::{Error, Result};
use tch::Tensor;

/// AdamW's hyper-parameters; the defaults are transformers' Trainer's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β₁, the decay of the gradient's running mean.
    pub beta1: f64,
    /// β₂, the decay of the squared gradient's running mean.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay of the parameters that decay ([`decays`]).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Whether the parameter `name` takes weight decay, by transformers' Trainer's rule: not
/// biases and not normalisation weights (names matching `bias`, `layernorm`, `rmsnorm`,
/// `norm` as a whole part, or `_norm` at a part's end, case-insensitively).
pub fn decays(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let part_is_norm = lower
        .split('.')
        .any(|p| p == "norm" || p.ends_with("_norm"));
    !(lower.contains("bias")
        || lower.contains("layernorm")
        || lower.contains("rmsnorm")
        || part_is_norm)
}

/// One trained parameter and its optimizer state.
#[derive(Debug)]
struct Slot {
    name: String,
    param: Tensor,
    decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW over named parameters (`torch.optim.AdamW` with two groups: weight decay on
/// [`decays`] parameters, none on the others). The parameters are updated in place, so the
/// model that owns them sees each step.
#[derive(Debug)]
pub struct AdamW {
    slots: Vec<Slot>,
    config: AdamWConfig,
    step: u64,
    /// Room for the largest parameter's temporaries, reused by every parameter and step:
    /// a fresh tensor per update would be fresh, kernel-zeroed memory each time (for a token
    /// table, tens of MB per step).
    scratch: Tensor,
}

impl AdamW {
    /// An optimizer over `parameters` (name, tensor that requires grad), with zero state.
    pub fn new(parameters: &[(String, Tensor)], config: AdamWConfig) -> Result<Self> {
        let slots = parameters
            .iter()
            .map(|(name, p)| {
                Ok(Slot {
                    name: name.clone(),
                    param: p.shallow_clone(),
                    decay: decays(name),
                    exp_avg: p.f_zeros_like()?.f_detach()?,
                    exp_avg_sq: p.f_zeros_like()?.f_detach()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let largest = parameters.iter().map(|(_, p)| p.numel()).max().unwrap_or(0);
        let (kind, device) = parameters
            .first()
            .map_or((tch::Kind::Float, tch::Device::Cpu), |(_, p)| {
                (p.kind(), p.device())
            });
        Ok(AdamW {
            slots,
            config,
            step: 0,
            scratch: Tensor::f_empty([largest as i64], (kind, device))?,
        })
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One step at learning rate `lr` over the parameters' current gradients (a parameter
    /// without a gradient is left alone, as PyTorch does):
    ///
    /// ```text
    /// p ← p·(1 − lr·λ);  m ← lerp(m, g, 1 − β₁);  v ← lerp(v, g², 1 − β₂)
    /// p ← p − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
    /// ```
    ///
    /// The last line is computed as PyTorch's capturable path writes it, with the step size
    /// folded into the denominator; every operation is in place, on the parameter, the
    /// moments and one reused scratch tensor.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as f64;
        let bias_correction1 = 1.0 - c.beta1.powf(t);
        let bias_correction2_sqrt = (1.0 - c.beta2.powf(t)).sqrt();
        let step_size = lr / bias_correction1;
        tch::no_grad(|| -> Result<()> {
            for slot in &mut self.slots {
                let grad = slot.param.grad();
                if !grad.defined() {
                    continue;
                }
                let mut p = slot.param.shallow_clone();
                let mut tmp = self
                    .scratch
                    .f_narrow(0, 0, p.numel() as i64)?
                    .f_view(p.size().as_slice())?;
                if slot.decay && c.weight_decay != 0.0 {
                    let _ = p.f_mul_scalar_(1.0 - lr * c.weight_decay)?;
                }
                let _ = slot.exp_avg.f_lerp_(&grad, 1.0 - c.beta1)?;
                let _ = grad.f_mul_out(&tmp, &grad)?; // g²
                let _ = slot.exp_avg_sq.f_lerp_(&tmp, 1.0 - c.beta2)?;
                if step_size == 0.0 {
                    continue; // warm-up's first step: the moments move, the weights do not
                }
                // denom = (√v / √(1 − β₂ᵗ) + ε) / (−step_size), so that p + m / denom is
                // p − step_size · m / (√v / √(1 − β₂ᵗ) + ε).
                let _ = slot.exp_avg_sq.f_sqrt_out(&tmp)?;
                let _ = tmp.f_div_scalar_(-bias_correction2_sqrt * step_size)?;
                let _ = tmp.f_add_scalar_(-c.eps / step_size)?;
                let _ = p.f_addcdiv_(&slot.exp_avg, &tmp)?;
            }
            Ok(())
        })
    }

    /// Clear every gradient (before the next backward pass).
    pub fn zero_grad(&mut self) {
        for slot in &mut self.slots {
            slot.param.zero_grad();
        }
    }

    /// Scale all gradients so that their global L2 norm is at most `max_norm`
    /// (`torch.nn.utils.clip_grad_norm_`: the norm of the per-parameter norms, then every
    /// gradient times `min(1, max_norm / (norm + 1e-6))`). Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64> {
        let grads: Vec<Tensor> = self
            .slots
            .iter()
            .map(|s| s.param.grad())
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return Ok(0.0);
        }
        tch::no_grad(|| -> Result<f64> {
            let norms = grads
                .iter()
                .map(|g| g.f_norm())
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
            let coef = total
                .f_add_scalar(1e-6)?
                .f_reciprocal()?
                .f_mul_scalar(max_norm)?
                .f_clamp_max(1.0)?;
            for g in &grads {
                let _ = g.shallow_clone().f_mul_(&coef)?;
            }
            Ok(total.f_double_value(&[])?)
        })
    }

    /// The state to save: `exp_avg.NAME` and `exp_avg_sq.NAME` for every parameter.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    (format!("exp_avg.{}", s.name), s.exp_avg.shallow_clone()),
                    (
                        format!("exp_avg_sq.{}", s.name),
                        s.exp_avg_sq.shallow_clone(),
                    ),
                ]
            })
            .collect()
    }

    /// Restore a saved state ([`AdamW::state`], read back through `get`) after `steps` steps.
    pub fn load_state(&mut self, steps: u64, get: impl Fn(&str) -> Result<Tensor>) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for slot in &mut self.slots {
                for (prefix, target) in [
                    ("exp_avg", &mut slot.exp_avg),
                    ("exp_avg_sq", &mut slot.exp_avg_sq),
                ] {
                    let saved = get(&format!("{prefix}.{}", slot.name))?;
                    if saved.size() != target.size() {
                        return Err(Error::Input(format!(
                            "optimizer state {prefix}.{} has shape {:?}, the model {:?}",
                            slot.name,
                            saved.size(),
                            target.size()
                        )));
                    }
                    target.f_copy_(&saved)?;
                }
            }
            Ok(())
        })?;
        self.step = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn decay_excludes_biases_and_norms() {
        for name in [
            "bert.encoder.layer.0.attention.self.query.weight",
            "classifier.weight",
            "distilbert.transformer.layer.0.ffn.lin1.weight",
            "bert.embeddings.word_embeddings.weight",
        ] {
            assert!(decays(name), "{name}");
        }
        for name in [
            "classifier.bias",
            "bert.embeddings.LayerNorm.weight",
            "distilbert.transformer.layer.0.sa_layer_norm.weight",
            "distilbert.transformer.layer.0.output_layer_norm.weight",
            "model.norm.weight",
            "model.layers.0.input_rmsnorm.weight",
        ] {
            assert!(!decays(name), "{name}");
        }
    }

    /// Two steps on `f(p) = Σ p²` against the formulas written out.
    #[test]
    fn two_steps_follow_the_formula() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut opt = AdamW::new(
            &[("w.weight".to_string(), p.shallow_clone())],
            AdamWConfig {
                weight_decay: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        let (b1, b2, eps, wd, lr) = (0.9f64, 0.999f64, 1e-8f64, 0.1f64, 0.01f64);
        let mut expected = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for t in 1..=2 {
            opt.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            opt.step(lr).unwrap();
            for i in 0..2 {
                let g = 2.0 * expected[i];
                expected[i] *= 1.0 - lr * wd;
                m[i] = m[i] + (g - m[i]) * (1.0 - b1);
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let denom = v[i].sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
                expected[i] -= lr / (1.0 - b1.powi(t)) * m[i] / denom;
            }
        }
        let got = Vec::<f32>::try_from(&p.detach()).unwrap();
        for i in 0..2 {
            assert!(
                (got[i] as f64 - expected[i]).abs() < 1e-6,
                "{got:?} {expected:?}"
            );
        }
        assert_eq!(opt.steps(), 2);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let p = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt =
            AdamW::new(&[("w".to_string(), p.shallow_clone())], Default::default()).unwrap();
        (&p * Tensor::from_slice(&[3.0f32, 4.0]))
            .sum(Kind::Float)
            .backward();
        let norm = opt.clip_grad_norm(1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let g = Vec::<f32>::try_from(&p.grad()).unwrap();
        assert!(
            (g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5,
            "{g:?}"
        );
    }
}
