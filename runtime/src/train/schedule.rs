//! Learning-rate schedules: a linear warm-up, then constant, cosine or linear decay, or
//! warm-up-stable-decay (WSD).
//!
//! Conventions, the same for every schedule (`step` counts from 0, `total_steps` steps are run):
//! - warm-up: step `s < warmup_steps` gets `lr × (s + 1) / warmup_steps`, so the last warm-up
//!   step already reaches `lr` and the first step is not wasted at zero;
//! - decay runs from its start, where the rate is `lr`, to the last step `total_steps − 1`, where
//!   it is exactly `min_lr`; later steps stay at `min_lr`.
//!
//! Rates are computed in `f64` and rounded to `f32` once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::TrainError;

/// A learning-rate schedule and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    /// Warm-up, then `lr` for ever.
    Constant {
        /// Peak rate.
        lr: f32,
        /// Warm-up steps.
        warmup_steps: u64,
    },
    /// Warm-up, then a half cosine from `lr` down to `min_lr` at the last step.
    Cosine {
        /// Peak rate.
        lr: f32,
        /// Final rate.
        min_lr: f32,
        /// Warm-up steps.
        warmup_steps: u64,
    },
    /// Warm-up, then a straight line from `lr` down to `min_lr` at the last step.
    Linear {
        /// Peak rate.
        lr: f32,
        /// Final rate.
        min_lr: f32,
        /// Warm-up steps.
        warmup_steps: u64,
    },
    /// Warm-up, `lr` held constant, then the last `decay_fraction` of all steps decays linearly
    /// to `min_lr`.
    Wsd {
        /// Peak rate.
        lr: f32,
        /// Final rate.
        min_lr: f32,
        /// Warm-up steps.
        warmup_steps: u64,
        /// Share of `total_steps`, at the end, spent decaying (0..=1).
        decay_fraction: f32,
    },
}

/// The name of a schedule, as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// `constant`.
    Constant,
    /// `cosine`.
    Cosine,
    /// `linear`.
    Linear,
    /// `wsd`.
    Wsd,
}

impl ScheduleKind {
    /// Every kind, in the order they are listed to users.
    pub const ALL: [ScheduleKind; 4] = [Self::Cosine, Self::Linear, Self::Wsd, Self::Constant];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Cosine => "cosine",
            Self::Linear => "linear",
            Self::Wsd => "wsd",
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ScheduleKind {
    type Err = TrainError;

    /// Parses a name case-insensitively; an unknown name lists the valid ones.
    fn from_str(s: &str) -> Result<Self, TrainError> {
        let wanted = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|k| k.name() == wanted)
            .ok_or_else(|| TrainError::UnknownSchedule {
                name: s.to_string(),
                expected: Self::ALL.map(Self::name).join(", "),
            })
    }
}

/// The numbers a schedule is built from; each kind uses those it needs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScheduleParams {
    /// Peak rate.
    pub lr: f32,
    /// Final rate of the decaying schedules.
    pub min_lr: f32,
    /// Warm-up steps.
    pub warmup_steps: u64,
    /// WSD only: share of all steps, at the end, spent decaying.
    pub decay_fraction: f32,
}

impl Schedule {
    /// The schedule of `kind` with `params`, checked by [`Schedule::validate`].
    pub fn new(kind: ScheduleKind, p: ScheduleParams) -> Result<Self, TrainError> {
        let s = match kind {
            ScheduleKind::Constant => Schedule::Constant {
                lr: p.lr,
                warmup_steps: p.warmup_steps,
            },
            ScheduleKind::Cosine => Schedule::Cosine {
                lr: p.lr,
                min_lr: p.min_lr,
                warmup_steps: p.warmup_steps,
            },
            ScheduleKind::Linear => Schedule::Linear {
                lr: p.lr,
                min_lr: p.min_lr,
                warmup_steps: p.warmup_steps,
            },
            ScheduleKind::Wsd => Schedule::Wsd {
                lr: p.lr,
                min_lr: p.min_lr,
                warmup_steps: p.warmup_steps,
                decay_fraction: p.decay_fraction,
            },
        };
        s.validate()?;
        Ok(s)
    }

    /// Parses a command-line name (`cosine`, `linear`, `wsd`, `constant`) and builds the schedule.
    pub fn parse(name: &str, params: ScheduleParams) -> Result<Self, TrainError> {
        Self::new(name.parse()?, params)
    }

    /// The schedule's name.
    pub fn kind(&self) -> ScheduleKind {
        match self {
            Schedule::Constant { .. } => ScheduleKind::Constant,
            Schedule::Cosine { .. } => ScheduleKind::Cosine,
            Schedule::Linear { .. } => ScheduleKind::Linear,
            Schedule::Wsd { .. } => ScheduleKind::Wsd,
        }
    }

    fn peak_min_warmup(&self) -> (f32, f32, u64) {
        match *self {
            Schedule::Constant { lr, warmup_steps } => (lr, lr, warmup_steps),
            Schedule::Cosine {
                lr,
                min_lr,
                warmup_steps,
            }
            | Schedule::Linear {
                lr,
                min_lr,
                warmup_steps,
            }
            | Schedule::Wsd {
                lr,
                min_lr,
                warmup_steps,
                ..
            } => (lr, min_lr, warmup_steps),
        }
    }

    /// Checks that `lr` is finite and positive, `0 ≤ min_lr ≤ lr`, and for WSD that
    /// `decay_fraction` lies in `0..=1`.
    pub fn validate(&self) -> Result<(), TrainError> {
        let (lr, min_lr, _) = self.peak_min_warmup();
        let bad = |message: String| Err(TrainError::BadSchedule { message });
        if !(lr.is_finite() && lr > 0.0) {
            return bad(format!(
                "the learning rate must be finite and > 0, got {lr}"
            ));
        }
        if !(min_lr.is_finite() && (0.0..=lr).contains(&min_lr)) {
            return bad(format!(
                "min_lr must lie between 0 and the learning rate {lr}, got {min_lr}"
            ));
        }
        if let Schedule::Wsd { decay_fraction, .. } = *self
            && !(0.0..=1.0).contains(&decay_fraction)
        {
            return bad(format!(
                "the WSD decay fraction must lie between 0 and 1, got {decay_fraction}"
            ));
        }
        Ok(())
    }

    /// The learning rate of step `step` (from 0) in a run of `total_steps` steps.
    pub fn lr(&self, step: u64, total_steps: u64) -> f32 {
        let (peak, min, warmup) = self.peak_min_warmup();
        let (peak, min) = (peak as f64, min as f64);
        if step < warmup {
            return (peak * (step + 1) as f64 / warmup as f64) as f32;
        }
        let last = total_steps.saturating_sub(1);
        let rate = match *self {
            Schedule::Constant { .. } => peak,
            Schedule::Cosine { .. } => {
                let t = progress(step, warmup, last);
                min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Schedule::Linear { .. } => min + (peak - min) * (1.0 - progress(step, warmup, last)),
            Schedule::Wsd { decay_fraction, .. } => {
                let decay_steps = (decay_fraction as f64 * total_steps as f64).round() as u64;
                let start = total_steps.saturating_sub(decay_steps).max(warmup);
                if step < start {
                    peak
                } else {
                    min + (peak - min) * (1.0 - progress(step, start, last))
                }
            }
        };
        rate as f32
    }
}

/// How far `step` is from `start` (0) to `end` (1), clamped; 1 when the interval is empty.
fn progress(step: u64, start: u64, end: u64) -> f64 {
    if end <= start {
        return 1.0;
    }
    ((step.saturating_sub(start)) as f64 / (end - start) as f64).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ScheduleParams = ScheduleParams {
        lr: 3e-4,
        min_lr: 3e-5,
        warmup_steps: 10,
        decay_fraction: 0.2,
    };
    const TOTAL: u64 = 100;

    fn all() -> Vec<Schedule> {
        ScheduleKind::ALL
            .iter()
            .map(|&k| Schedule::new(k, P).unwrap())
            .collect()
    }

    fn curve(s: &Schedule) -> Vec<f32> {
        (0..TOTAL).map(|t| s.lr(t, TOTAL)).collect()
    }

    #[test]
    fn warmup_rises_linearly_and_meets_the_peak() {
        for s in all() {
            let c = curve(&s);
            assert!(
                (c[0] - P.lr / 10.0).abs() < 1e-9,
                "{s:?}: first step {}",
                c[0]
            );
            for t in 1..10 {
                assert!(c[t] > c[t - 1], "{s:?}: warm-up not rising at {t}");
            }
            // Continuity: the last warm-up step and the first step after are both at the peak.
            assert_eq!(c[9], P.lr, "{s:?}");
            assert!((c[10] - P.lr).abs() <= 1e-7 * P.lr, "{s:?}: jump {}", c[10]);
        }
    }

    #[test]
    fn decays_are_monotonic_and_end_at_min_lr() {
        for s in all() {
            let c = curve(&s);
            for t in 11..TOTAL as usize {
                assert!(c[t] <= c[t - 1], "{s:?}: rises at step {t}");
            }
            let end = if s.kind() == ScheduleKind::Constant {
                P.lr
            } else {
                P.min_lr
            };
            assert!((c[TOTAL as usize - 1] - end).abs() < 1e-9, "{s:?}");
            // Beyond the planned end the rate stays put.
            assert!((s.lr(TOTAL + 50, TOTAL) - end).abs() < 1e-9, "{s:?}");
        }
    }

    #[test]
    fn cosine_is_half_way_at_mid_decay_and_linear_is_straight() {
        // With 101 steps the decay runs over steps 10..=100, so step 55 is its middle.
        let cos = Schedule::new(ScheduleKind::Cosine, P).unwrap();
        let mid = (P.lr + P.min_lr) / 2.0;
        assert!((cos.lr(55, 101) - mid).abs() < 1e-9);
        let lin = Schedule::new(ScheduleKind::Linear, P).unwrap();
        let (a, b, c) = (lin.lr(20, 101), lin.lr(30, 101), lin.lr(40, 101));
        assert!(((a - b) - (b - c)).abs() < 1e-9);
        // Cosine stays above the line during the first half of the decay.
        assert!(cos.lr(30, 101) > lin.lr(30, 101));
    }

    #[test]
    fn wsd_holds_then_decays_over_the_final_fraction() {
        let s = Schedule::new(ScheduleKind::Wsd, P).unwrap();
        let c = curve(&s);
        // Decay fraction 0.2 of 100 steps: steps 80..=99 decay.
        assert!(c[10..=80].iter().all(|&x| x == P.lr));
        assert!(c[81] < P.lr);
        let (a, b, d) = (c[85], c[90], c[95]);
        assert!(((a - b) - (b - d)).abs() < 1e-9, "decay is not linear");
    }

    #[test]
    fn names_parse_and_unknown_names_list_the_valid_ones() {
        for k in ScheduleKind::ALL {
            assert_eq!(k.name().parse::<ScheduleKind>().unwrap(), k);
        }
        assert_eq!(
            "Cosine".parse::<ScheduleKind>().unwrap(),
            ScheduleKind::Cosine
        );
        let err = Schedule::parse("exponential", P).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exponential"), "{msg}");
        for k in ScheduleKind::ALL {
            assert!(msg.contains(k.name()), "{msg}");
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        let bad_min = ScheduleParams { min_lr: 1.0, ..P };
        assert!(Schedule::parse("cosine", bad_min).is_err());
        let bad_frac = ScheduleParams {
            decay_fraction: 1.5,
            ..P
        };
        assert!(Schedule::parse("wsd", bad_frac).is_err());
        assert!(Schedule::parse("linear", bad_frac).is_ok());
        let zero = ScheduleParams { lr: 0.0, ..P };
        assert!(Schedule::parse("constant", zero).is_err());
    }

    #[test]
    fn degenerate_runs_do_not_divide_by_zero() {
        for s in all() {
            for total in [0, 1, 5, 11] {
                for step in 0..total + 2 {
                    let x = s.lr(step, total);
                    assert!(x.is_finite() && x > 0.0, "{s:?} step {step}/{total}: {x}");
                }
            }
        }
    }

    #[test]
    fn serde_round_trip() {
        for s in all() {
            let json = serde_json::to_string(&s).unwrap();
            assert!(
                json.contains(&format!("\"kind\":\"{}\"", s.kind())),
                "{json}"
            );
            let back: Schedule = serde_json::from_str(&json).unwrap();
            assert_eq!(back, s);
        }
    }
}
