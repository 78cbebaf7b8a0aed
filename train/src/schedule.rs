//! Learning-rate schedules (PAPER.md sections 3-6): linear warm-up over W
//! steps to the peak, then cosine decay to `min_lr_ratio x peak` at the last
//! step; or constant (PPO).
//!
//! Public items: [`LrSchedule`].

/// A learning-rate schedule over `total` steps (0-based step index).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LrSchedule {
    /// the same rate at every step
    Constant { lr: f64 },
    /// warm-up then cosine
    Cosine { peak: f64, warmup: u64, total: u64, min_ratio: f64 },
}

impl LrSchedule {
    /// The rate at step `s` (0-based):
    /// - `s < W`: `peak · (s + 1) / W` (llm.c's warm-up: the first step is not 0)
    /// - else: `min + (peak − min) · (1 + cos(π · p)) / 2` with
    ///   `p = (s − W) / (total − 1 − W)`, so the first step after warm-up is
    ///   at the peak and the last (`s = total − 1`) at `min = min_ratio · peak`
    ///   (with at most one step after warm-up there is no decay: the peak).
    pub fn lr(&self, s: u64) -> f64 {
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::Cosine { peak, warmup, total, min_ratio } => {
                let min = peak * min_ratio;
                if s < warmup {
                    return peak * (s + 1) as f64 / warmup as f64;
                }
                let span = total.saturating_sub(1).saturating_sub(warmup);
                if span == 0 {
                    // at most one step after warm-up: there is no decay phase
                    return peak;
                }
                let p = ((s - warmup) as f64 / span as f64).min(1.0);
                min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_hits_peak_and_floor() {
        let s = LrSchedule::Cosine { peak: 3e-4, warmup: 10, total: 110, min_ratio: 0.1 };
        // warm-up: linear, step 0 is peak/10, step 9 is the peak
        assert!((s.lr(0) - 3e-5).abs() < 1e-18);
        assert!((s.lr(4) - 1.5e-4).abs() < 1e-18);
        assert!((s.lr(9) - 3e-4).abs() < 1e-18);
        // first cosine step at the peak, midpoint halfway to the floor, last at the floor
        assert!((s.lr(10) - 3e-4).abs() < 1e-18);
        let mid = 10 + 50; // p = 50/99
        let p = 50.0 / 99.0;
        let want = 3e-5 + (3e-4 - 3e-5) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
        assert!((s.lr(mid) - want).abs() < 1e-18);
        assert!((s.lr(109) - 3e-5).abs() < 1e-18);
        // monotone after warm-up
        for i in 10..109 {
            assert!(s.lr(i + 1) <= s.lr(i));
        }
    }

    /// Every step of several schedules against the formula written out
    /// independently (as llm.c's `get_lr`, with the decay ending exactly at
    /// the last step).
    #[test]
    fn equals_the_formula_at_every_step() {
        for (peak, warmup, total, min_ratio) in [(3e-4, 2000u64, 10_000u64, 0.1), (2e-5, 0, 77, 0.1), (1e-3, 5, 6, 0.0), (5e-4, 3, 50, 0.5)] {
            let s = LrSchedule::Cosine { peak, warmup, total, min_ratio };
            for step in 0..total {
                let want = if step < warmup {
                    peak * (step as f64 + 1.0) / warmup as f64
                } else if total - 1 == warmup {
                    peak
                } else {
                    let ratio = (step - warmup) as f64 / (total - 1 - warmup) as f64;
                    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
                    peak * min_ratio + coeff * (peak - peak * min_ratio)
                };
                assert!((s.lr(step) - want).abs() <= 1e-15 * peak, "step {step} of {total}: {} vs {want}", s.lr(step));
            }
            assert!((s.lr(total - 1) - if total - 1 > warmup { peak * min_ratio } else { peak }).abs() < 1e-15);
        }
        assert_eq!(LrSchedule::Constant { lr: 1e-6 }.lr(123), 1e-6);
    }
}
