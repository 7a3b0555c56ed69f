//! Autotuning of the cuBLASLt matmuls, once, at start-up.
//!
//! cuBLASLt's heuristics rank their algorithms by a model of the GPU; their first is not always
//! the fastest for a shape. So before the trainer writes anything into the arena, every prepared
//! shape runs each of its candidates (`matmul::CANDIDATES`) on the very tensors of its first step,
//! timed with CUDA events, and keeps the fastest where it beats the heuristics' first by more
//! than [`MARGIN`]: where the candidates tie, timing noise then does not move the choice from one
//! run to the next.
//!
//! The timing runs where training runs: at the card's power cap. An H100 trains at its 700 W
//! limit with the SM clock a quarter below its boost (docs/benchmarks.md), and an algorithm that
//! is fastest in a short burst at full clock need not be fastest there. So the arena is filled
//! with random bytes (constant operands leave the tensor cores' data paths idle and the card far
//! below its limit) and each candidate runs back to back for [`SUSTAIN_SECONDS`] before and
//! while it is timed, long enough for the power limiter to settle. The arena is zeroed again
//! afterwards, as it was allocated.
//!
//! Different algorithms may round differently (another split of the reduced dimension), so two
//! runs that choose differently are not bitwise equal; `CudaOptions::autotune_matmuls = false`
//! keeps the heuristics' first choice everywhere.

use super::launch::{Action, Launch};
use super::matmul::Gemms;
use super::{BackendError, Timer, device_error};
use cudarc::driver::{CudaContext, CudaStream, result};
use std::sync::Arc;

/// How much faster than the heuristics' first a candidate must run to be chosen.
const MARGIN: f64 = 0.03;
/// Runs of each candidate before it is measured (compiling nothing, warming caches).
const WARM_UPS: usize = 2;
/// How long each candidate runs back to back before it is timed, and again while it is timed
/// (the mean of the timed runs is its time): the power limiter settles within milliseconds.
const SUSTAIN_SECONDS: f64 = 0.02;
/// Timed runs at least, for shapes too slow to repeat within SUSTAIN_SECONDS, and at most, for
/// shapes so small (tens of microseconds) that they never reach the power cap anyway.
const MIN_TIMED_RUNS: usize = 3;
const MAX_TIMED_RUNS: usize = 200;
/// Bytes of random data copied to the device, then doubled by device copies to fill the arena.
const RANDOM_SEED_BYTES: usize = 16 << 20;

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

/// Fills `arena = (address, bytes)` with random bytes: RANDOM_SEED_BYTES from the host, then
/// device copies doubling the filled part (a few milliseconds for 80 GB, where a host copy of it
/// all would take seconds). As FP8 or BF16 some bytes are NaN or infinite, which changes no
/// matmul's speed.
fn fill_random(arena: (u64, u64), stream: &Arc<CudaStream>) -> Result<(), BackendError> {
    let (base, bytes) = arena;
    let seed_bytes = RANDOM_SEED_BYTES.min(bytes as usize);
    let random: Vec<u8> = (0..seed_bytes.div_ceil(8) as u64)
        .flat_map(|i| llmq_kernels::rng::word(0x6175_746f, 0, i).to_le_bytes())
        .take(seed_bytes)
        .collect();
    let fail = || device_error("filling the arena with random bytes for autotuning");
    // SAFETY: `base..base + seed_bytes` lies in the arena, which nothing else uses yet; the
    // host slice lives until the synchronous copy returns.
    unsafe { result::memcpy_htod_sync(base, &random) }.map_err(fail())?;
    let mut filled = seed_bytes as u64;
    while filled < bytes {
        let chunk = filled.min(bytes - filled);
        // SAFETY: source `base..base + chunk` and destination `base + filled..+ chunk` lie in
        // the arena and do not overlap (chunk ≤ filled).
        let (dst, stream) = (base + filled, stream.cu_stream());
        unsafe { result::memcpy_dtod_async(dst, base, chunk as usize, stream) }.map_err(fail())?;
        filled += chunk;
    }
    Ok(())
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
    fill_random(arena, stream)?;
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
            let time = run(WARM_UPS)
                .and_then(|()| timer.time(stream, || run(1)))
                .and_then(|once| {
                    let runs = ((SUSTAIN_SECONDS / once).ceil() as usize)
                        .clamp(MIN_TIMED_RUNS, MAX_TIMED_RUNS);
                    run(runs)?;
                    Ok(timer.time(stream, || run(runs))? / runs as f64)
                });
            // A candidate that cuBLASLt refuses to run is never chosen.
            times.push(time.unwrap_or(f64::INFINITY));
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
