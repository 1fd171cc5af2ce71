//! The learning-rate schedule: linear warm-up from 0, then linear decay to 0
//! (transformers' `get_linear_schedule_with_warmup`).

/// Linear warm-up over `warmup` steps, then linear decay to zero at `total` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearSchedule {
    /// The peak learning rate.
    pub base_lr: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// All optimizer steps of the run.
    pub total: u64,
}

impl LinearSchedule {
    /// The schedule of a run of `total` steps warming up over `ceil(total · warmup_ratio)`
    /// of them (transformers' Trainer with `warmup_ratio`).
    pub fn with_ratio(base_lr: f64, total: u64, warmup_ratio: f64) -> Self {
        LinearSchedule {
            base_lr,
            warmup: (total as f64 * warmup_ratio).ceil() as u64,
            total,
        }
    }

    /// The learning rate of optimizer step `step` (0-based: the first step uses `lr(0)`,
    /// which is 0 during warm-up, as `LambdaLR` gives it).
    pub fn lr(&self, step: u64) -> f64 {
        let factor = if step < self.warmup {
            step as f64 / self.warmup.max(1) as f64
        } else {
            (self.total.saturating_sub(step) as f64
                / self.total.saturating_sub(self.warmup).max(1) as f64)
                .max(0.0)
        };
        self.base_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays() {
        let s = LinearSchedule::with_ratio(1e-3, 10, 0.2);
        assert_eq!(s.warmup, 2);
        let lrs: Vec<f64> = (0..11).map(|t| s.lr(t)).collect();
        let expected = [
            0.0, 5e-4, 1e-3, 8.75e-4, 7.5e-4, 6.25e-4, 5e-4, 3.75e-4, 2.5e-4, 1.25e-4, 0.0,
        ];
        for (a, b) in lrs.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{lrs:?}");
        }
        let flat = LinearSchedule::with_ratio(1e-3, 4, 0.0);
        assert_eq!(flat.lr(0), 1e-3);
        assert!((flat.lr(3) - 2.5e-4).abs() < 1e-12);
    }
}
