//! Autotuning of the cuBLASLt matmuls, once, at start-up.
//!
//! cuBLASLt's heuristics rank their algorithms by a model of the GPU; their first is not always
//! the fastest for a shape. So before the trainer writes anything into the arena, every prepared
//! shape runs each of its candidates (`matmul::CANDIDATES`) on the very tensors of its first step,
//! timed with CUDA events, and keeps the fastest where it beats the heuristics' first by more
//! than [`MARGIN`]: where the candidates tie, timing noise then does not move the choice from one
//! run to the next. The arena is filled with a finite pattern for the timing (zeros would let the
//! tensor cores idle at lower power) and zeroed again afterwards, as it was allocated.
//!
//! Different algorithms may round differently (another split of the reduced dimension), so two
//! runs that choose differently are not bitwise equal; `CudaOptions::autotune_matmuls = false`
//! keeps the heuristics' first choice everywhere.

use super::launch::{Action, Launch};
use super::matmul::Gemms;
use super::{BackendError, Timer, device_error};
use cudarc::driver::sys;
use cudarc::driver::{CudaContext, CudaStream, result};
use std::sync::Arc;

/// How much faster than the heuristics' first a candidate must run to be chosen.
const MARGIN: f64 = 0.03;
/// Runs of each candidate before timing, and timed runs (their mean is the candidate's time).
const WARM_UPS: usize = 2;
const TIMED_RUNS: usize = 5;
/// The fill for timing: BF16 pairs of 1.0; as FP8 bytes, 1.875 and −0; as FP32, about 1.0.
const PATTERN: u32 = 0x3F80_3F80;

/// What autotuning did, for the user.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tuning {
    /// Prepared shapes.
    pub shapes: usize,
    /// Shapes timed: more than one candidate, every tensor in the device arena.
    pub timed: usize,
    /// Shapes whose algorithm changed.
    pub changed: usize,
    /// One pass over the plan's timed matmul steps with the heuristics' first algorithm, in
    /// seconds (every step at its shape's time).
    pub first_seconds: f64,
    /// The same pass with the chosen algorithms.
    pub chosen_seconds: f64,
}

impl Tuning {
    /// One line: what was timed and what it gained.
    pub fn summary(&self) -> String {
        if self.timed == 0 {
            return format!(
                "matmuls: cuBLASLt, {} shapes, the heuristics' first algorithm (none timed)",
                self.shapes
            );
        }
        format!(
            "matmuls: cuBLASLt, {} shapes; autotuned {}: {} run another of the heuristics' \
             algorithms; the plan's matmul steps {:.1} → {:.1} ms ({:+.1}%)",
            self.shapes,
            self.timed,
            self.changed,
            self.first_seconds * 1e3,
            self.chosen_seconds * 1e3,
            (self.chosen_seconds / self.first_seconds - 1.0) * 100.0
        )
    }
}

/// The index of the candidate to keep: the fastest, where it beats candidate 0 by more than
/// [`MARGIN`]; candidate 0 otherwise (and where no candidate ran).
pub fn choose(times: &[f64]) -> usize {
    let best = (0..times.len())
        .filter(|&c| times[c].is_finite())
        .min_by(|&x, &y| times[x].total_cmp(&times[y]));
    match best {
        Some(b) if !times[0].is_finite() || times[b] < times[0] * (1.0 - MARGIN) => b,
        _ => 0,
    }
}

/// Times every candidate of every shape that `launches` use, chooses one per shape, and zeroes
/// the arena `arena = (address, bytes)` again. Shapes whose tensors are not all in that arena
/// (host-mapped operands) keep the heuristics' first algorithm.
pub fn autotune(
    gemms: &mut Gemms,
    launches: &[Launch],
    arena: (u64, u64),
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
) -> Result<Tuning, BackendError> {
    // Each shape, its first step's tensors (a, b, d) and scales, and how many steps run it.
    type Use = (usize, [u64; 3], Option<[u64; 2]>, usize);
    let mut uses: Vec<Use> = Vec::new();
    for action in launches.iter().flat_map(|l| &l.actions) {
        if let Action::Matmul {
            gemm,
            a,
            b,
            d,
            scales,
        } = action
        {
            match uses.iter_mut().find(|u| u.0 == *gemm) {
                Some(u) => u.3 += 1,
                None => uses.push((*gemm, [*a, *b, *d], *scales, 1)),
            }
        }
    }
    let (base, bytes) = arena;
    let inside = |p: u64| p >= base && p < base + bytes;
    let mut tuning = Tuning {
        shapes: uses.len(),
        ..Tuning::default()
    };
    let timed: Vec<_> = uses
        .into_iter()
        .filter(|(gemm, tensors, scales, _)| {
            gemms.candidates(*gemm) > 1
                && tensors
                    .iter()
                    .chain(scales.iter().flatten())
                    .all(|&p| inside(p))
        })
        .collect();
    if timed.is_empty() {
        return Ok(tuning);
    }
    let cu_stream = stream.cu_stream();
    // SAFETY: `base..base + bytes` is the arena; nothing else uses it yet.
    unsafe { sys::cuMemsetD32Async(base, PATTERN, (bytes / 4) as usize, cu_stream) }
        .result()
        .map_err(device_error("filling the arena for autotuning"))?;
    let timer = Timer::new(ctx)?;
    for (gemm, [a, b, d], scales, count) in timed {
        let mut times = Vec::with_capacity(gemms.candidates(gemm));
        for candidate in 0..gemms.candidates(gemm) {
            let run = |runs: usize| -> Result<(), BackendError> {
                for _ in 0..runs {
                    gemms
                        .run_candidate(gemm, candidate, a, b, d, scales, cu_stream)
                        .map_err(|e| BackendError::Device(e.to_string()))?;
                }
                Ok(())
            };
            let time = run(WARM_UPS).and_then(|()| timer.time(stream, || run(TIMED_RUNS)));
            // A candidate that cuBLASLt refuses to run is never chosen.
            times.push(time.map_or(f64::INFINITY, |t| t / TIMED_RUNS as f64));
        }
        let chosen = choose(&times);
        gemms.choose(gemm, chosen);
        tuning.timed += 1;
        tuning.changed += usize::from(chosen != 0);
        if times[0].is_finite() {
            tuning.first_seconds += times[0] * count as f64;
            tuning.chosen_seconds += times[chosen] * count as f64;
        }
    }
    // SAFETY: as above; the timing runs are finished (synchronised after each candidate).
    unsafe { result::memset_d8_async(base, 0, bytes as usize, cu_stream) }
        .map_err(device_error("zeroing the arena after autotuning"))?;
    stream
        .synchronize()
        .map_err(device_error("zeroing the arena after autotuning"))?;
    Ok(tuning)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heuristics_first_stays_unless_another_is_clearly_faster() {
        assert_eq!(
            choose(&[1.0, 0.98, 1.1]),
            0,
            "2% faster is within the margin"
        );
        assert_eq!(choose(&[1.0, 0.99, 0.9]), 2, "10% faster is chosen");
        assert_eq!(choose(&[1.0]), 0);
        assert_eq!(
            choose(&[f64::INFINITY, 2.0, 1.5]),
            2,
            "the first failed to run"
        );
        assert_eq!(choose(&[1.0, f64::INFINITY]), 0);
        assert_eq!(choose(&[f64::INFINITY, f64::INFINITY]), 0, "none ran");
    }

    #[test]
    fn the_summary_says_what_was_gained() {
        let t = Tuning {
            shapes: 20,
            timed: 18,
            changed: 5,
            first_seconds: 0.2,
            chosen_seconds: 0.19,
        };
        let s = t.summary();
        assert!(s.contains("20 shapes") && s.contains("autotuned 18") && s.contains("5 run"));
        assert!(s.contains("200.0 → 190.0 ms (-5.0%)"), "{s}");
    }
}
