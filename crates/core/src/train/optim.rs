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

    /// The gradient of `loss` with respect to each parameter, in the optimizer's order
    /// (undefined for a parameter the loss does not use). They come back as fresh tensors,
    /// as PyTorch's `zero_grad(set_to_none=True)` then `backward()` leaves them: no pass
    /// zeroes last step's gradients and none adds the new ones into them.
    pub fn gradients(&self, loss: &Tensor) -> Result<Vec<Tensor>> {
        let params: Vec<&Tensor> = self.slots.iter().map(|s| &s.param).collect();
        Ok(Tensor::f_run_backward(&[loss], &params, false, false)?)
    }

    /// One step at learning rate `lr` over `grads` ([`AdamW::gradients`]; a parameter whose
    /// gradient is undefined is left alone, as PyTorch does), each gradient first scaled by
    /// `clip` ([`clip_coefficient`]):
    ///
    /// ```text
    /// g ← g·clip;  p ← p·(1 − lr·λ);  m ← lerp(m, g, 1 − β₁);  v ← lerp(v, g², 1 − β₂)
    /// p ← p − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
    /// ```
    ///
    /// The last line is computed as PyTorch's capturable path writes it, with the step size
    /// folded into the denominator. On the CPU the whole update is one pass over each
    /// parameter (`fused_update`) where PyTorch's single-tensor path makes eight, each
    /// reading and writing whole tensors (a token table is tens of MB); elsewhere it runs as
    /// those in-place tensor operations, on one reused scratch tensor.
    pub fn step(&mut self, lr: f64, grads: &[Tensor], clip: f32) -> Result<()> {
        if grads.len() != self.slots.len() {
            return Err(Error::Input(format!(
                "AdamW got {} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            )));
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as f64;
        let bias_correction1 = 1.0 - c.beta1.powf(t);
        let bias_correction2_sqrt = (1.0 - c.beta2.powf(t)).sqrt();
        let step_size = lr / bias_correction1;
        tch::no_grad(|| -> Result<()> {
            for (slot, grad) in self.slots.iter_mut().zip(grads) {
                if !grad.defined() {
                    continue;
                }
                let update = Update {
                    clip,
                    decay: (slot.decay && c.weight_decay != 0.0)
                        .then_some((1.0 - lr * c.weight_decay) as f32),
                    w1: (1.0 - c.beta1) as f32,
                    w2: (1.0 - c.beta2) as f32,
                    // denom = (√v / √(1 − β₂ᵗ) + ε) / (−step_size), so that p + m / denom is
                    // p − step_size · m / (√v / √(1 − β₂ᵗ) + ε); the division by a scalar
                    // is a product with its reciprocal, as PyTorch's CPU kernel makes it.
                    // None on warm-up's first step (lr 0): the moments move, the weights not.
                    denom: (step_size != 0.0).then(|| {
                        (
                            (1.0 / (-bias_correction2_sqrt * step_size) as f32),
                            (-c.eps / step_size) as f32,
                        )
                    }),
                };
                if fused_update(&slot.param, grad, &slot.exp_avg, &slot.exp_avg_sq, &update)? {
                    continue;
                }
                let mut p = slot.param.shallow_clone();
                let grad = if clip == 1.0 {
                    grad.shallow_clone()
                } else {
                    grad.f_mul_scalar(clip as f64)?
                };
                let mut tmp = self
                    .scratch
                    .f_narrow(0, 0, p.numel() as i64)?
                    .f_view(p.size().as_slice())?;
                if let Some(factor) = update.decay {
                    let _ = p.f_mul_scalar_(factor as f64)?;
                }
                let _ = slot.exp_avg.f_lerp_(&grad, update.w1 as f64)?;
                let _ = grad.f_mul_out(&tmp, &grad)?; // g²
                let _ = slot.exp_avg_sq.f_lerp_(&tmp, update.w2 as f64)?;
                let Some((scale, add)) = update.denom else {
                    continue;
                };
                let _ = slot.exp_avg_sq.f_sqrt_out(&tmp)?;
                let _ = tmp.f_mul_scalar_(scale as f64)?;
                let _ = tmp.f_add_scalar_(add as f64)?;
                let _ = p.f_addcdiv_(&slot.exp_avg, &tmp)?;
            }
            Ok(())
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

/// The global L2 norm of `grads` and the factor that clips it to `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` computes them: the norm of the per-gradient norms, and
/// `min(1, max_norm / (norm + 1e-6))`. [`AdamW::step`] applies the factor as it reads each
/// gradient rather than in a pass of its own.
pub fn clip_coefficient(grads: &[Tensor], max_norm: f64) -> Result<(f64, f32)> {
    let grads: Vec<&Tensor> = grads.iter().filter(|g| g.defined()).collect();
    if grads.is_empty() {
        return Ok((0.0, 1.0));
    }
    tch::no_grad(|| -> Result<(f64, f32)> {
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
        Ok((total.f_double_value(&[])?, coef.f_double_value(&[])? as f32))
    })
}

/// One parameter's AdamW update, in f32 as PyTorch's float kernels compute it.
#[derive(Clone, Copy, Debug)]
struct Update {
    /// The gradient's clipping factor.
    clip: f32,
    /// `1 − lr·λ` for a parameter that decays.
    decay: Option<f32>,
    /// The lerp weights of the two moments, `1 − β₁` and `1 − β₂`.
    w1: f32,
    w2: f32,
    /// `p ← p + m / (√v·scale + add)`; `None` when the step size is 0.
    denom: Option<(f32, f32)>,
}

impl Update {
    /// The update of one element: parameter, gradient and moments in, new values out.
    /// `lerp` is PyTorch's: `start + w·(end − start)` as one fused multiply-add for a
    /// weight below ½ (both weights here).
    #[inline(always)]
    fn apply(&self, p: &mut f32, g: f32, m: &mut f32, v: &mut f32) {
        let g = g * self.clip;
        if let Some(factor) = self.decay {
            *p *= factor;
        }
        *m = self.w1.mul_add(g - *m, *m);
        *v = self.w2.mul_add(g * g - *v, *v);
        if let Some((scale, add)) = self.denom {
            *p += *m / (v.sqrt() * scale + add);
        }
    }

    /// [`Update::apply`] over slices of equal length.
    #[inline(always)]
    fn run(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            self.apply(p, *g, m, v);
        }
    }

    /// [`Update::run`] compiled for FMA and AVX2, so that `mul_add` is one instruction and
    /// the loop is vectorised (without the target feature it is a call into libm).
    ///
    /// # Safety
    /// The CPU must have FMA and AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_fma(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.run(p, g, m, v)
    }
}

/// Elements per task of the parallel update: large enough that a task's cost dwarfs its
/// scheduling, small enough that both cores share a parameter of a few MB.
const UPDATE_CHUNK: usize = 1 << 16;

/// Runs `update` over a CPU f32 parameter, its gradient and its moments in one parallel
/// pass, when all four are contiguous CPU f32 tensors of one size; `Ok(false)` otherwise
/// (the caller then uses tensor operations).
fn fused_update(
    param: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    update: &Update,
) -> Result<bool> {
    use rayon::prelude::*;
    let tensors = [param, grad, exp_avg, exp_avg_sq];
    let n = param.numel();
    let fits = tensors.iter().all(|t| {
        t.device() == tch::Device::Cpu
            && t.kind() == tch::Kind::Float
            && t.is_contiguous()
            && t.numel() == n
    });
    if !fits || n == 0 {
        return Ok(false);
    }
    // The moments and the gradient are separate allocations from the parameter (made by
    // `zeros_like` and by autograd), so the four slices do not overlap.
    let (p, g, m, v) = unsafe {
        (
            std::slice::from_raw_parts_mut(param.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts(grad.data_ptr() as *const f32, n),
            std::slice::from_raw_parts_mut(exp_avg.data_ptr() as *mut f32, n),
            std::slice::from_raw_parts_mut(exp_avg_sq.data_ptr() as *mut f32, n),
        )
    };
    #[cfg(target_arch = "x86_64")]
    let fma =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    let run = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
        #[cfg(target_arch = "x86_64")]
        if fma {
            // SAFETY: the features were detected above.
            return unsafe { update.run_fma(p, g, m, v) };
        }
        update.run(p, g, m, v)
    };
    if n <= UPDATE_CHUNK {
        // A bias or a norm: on this thread, as handing it to the pool costs more than it.
        run(p, g, m, v);
    } else {
        p.par_chunks_mut(UPDATE_CHUNK)
            .zip(g.par_chunks(UPDATE_CHUNK))
            .zip(m.par_chunks_mut(UPDATE_CHUNK))
            .zip(v.par_chunks_mut(UPDATE_CHUNK))
            .for_each(|(((p, g), m), v)| run(p, g, m, v));
    }
    Ok(true)
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
            let grads = opt.gradients(&(&p * &p).sum(Kind::Float)).unwrap();
            opt.step(lr, &grads, 1.0).unwrap();
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
        let opt = AdamW::new(&[("w".to_string(), p.shallow_clone())], Default::default()).unwrap();
        let loss = (&p * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float);
        let grads = opt.gradients(&loss).unwrap();
        let (norm, clip) = clip_coefficient(&grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((clip - 0.2).abs() < 1e-6, "{clip}");
        let (_, none) = clip_coefficient(&grads, 10.0).unwrap();
        assert_eq!(none, 1.0);
        assert_eq!(clip_coefficient(&[], 1.0).unwrap(), (0.0, 1.0));
    }

    /// The one-pass CPU update equals PyTorch's in-place tensor operations (the path other
    /// devices take) on every element: random values, a clipped gradient, weight decay,
    /// several steps, a parameter the loss does not use, large and small parameters.
    #[test]
    fn the_fused_update_equals_the_tensor_operations() {
        // Many chunks over rayon's threads, and one small parameter on the calling thread.
        for cols in [70_001i64, 7] {
            let init = Tensor::randn([3, cols], (Kind::Float, Device::Cpu));
            let target = Tensor::randn([3, cols], (Kind::Float, Device::Cpu));
            let unused = Tensor::randn([5], (Kind::Float, Device::Cpu));
            let make = || {
                let w = init.copy().set_requires_grad(true);
                let u = unused.copy().set_requires_grad(true);
                let opt = AdamW::new(
                    &[
                        ("w.weight".to_string(), w.shallow_clone()),
                        ("u.bias".to_string(), u.shallow_clone()),
                    ],
                    AdamWConfig {
                        weight_decay: 0.01,
                        ..Default::default()
                    },
                )
                .unwrap();
                (w, u, opt)
            };
            let (w1, u1, mut fused) = make();
            let (w2, u2, mut ops) = make();
            for (step, lr) in [0.0, 1e-3, 2e-3, 5e-4].into_iter().enumerate() {
                for (w, opt, fuse) in [(&w1, &mut fused, true), (&w2, &mut ops, false)] {
                    let loss = (w - &target).square().sum(Kind::Float);
                    let grads = opt.gradients(&loss).unwrap();
                    assert!(grads[0].defined() && !grads[1].defined());
                    let (_, clip) = clip_coefficient(&grads, 1.0).unwrap();
                    assert!(clip < 1.0, "step {step}: the test means to clip");
                    if fuse {
                        opt.step(lr, &grads, clip).unwrap();
                    } else {
                        // A non-contiguous gradient takes the tensor operations.
                        let strided = grads[0].tr().contiguous().tr();
                        assert!(!strided.is_contiguous());
                        let grads = [strided, grads[1].shallow_clone()];
                        opt.step(lr, &grads, clip).unwrap();
                    }
                }
                let diff = (&w1 - &w2).abs().max().double_value(&[]);
                // A few ulps: PyTorch's scalar tail of a small tensor skips the fused
                // multiply-add that its vector loop and this update use.
                assert!(diff <= 1e-6, "step {step}: {diff}");
            }
            assert!(u1.equal(&unused) && u2.equal(&unused));
            assert!(!w1.equal(&init));
        }
        // Which path each took: contiguous CPU f32 is fused, a strided gradient is not.
        let z = || Tensor::zeros([3, 70_001], (Kind::Float, Device::Cpu));
        let update = Update {
            clip: 1.0,
            decay: None,
            w1: 0.1,
            w2: 0.001,
            denom: None,
        };
        assert!(fused_update(&z(), &z(), &z(), &z(), &update).unwrap());
        assert!(!fused_update(&z(), &z().tr().contiguous().tr(), &z(), &z(), &update).unwrap());
    }
}
