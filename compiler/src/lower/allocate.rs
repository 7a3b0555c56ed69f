//! The static memory plan: every buffer at a fixed offset of one arena.
//!
//! State (persistent tensors) is laid out first, grouped by category, and never shared.
//! Transient buffers go above it, largest first, each at the lowest offset where it overlaps
//! no already-placed buffer whose lifetime overlaps its own ("greedy by size", as TFLite's
//! arena planner): close to the live-bytes lower bound on training graphs, and deterministic.

use super::Interval;
use crate::ir::Category;
use crate::plan::ALIGNMENT;

fn align(x: u64) -> u64 {
    x.div_ceil(ALIGNMENT) * ALIGNMENT
}

/// Steps per bucket of the index of placed buffers by time.
const BUCKET_STEPS: u32 = 64;

/// A transient buffer already placed.
#[derive(Clone, Copy)]
struct Placed {
    offset: u64,
    end: u64,
    live: Interval,
}

/// Returns each buffer's offset and the arena's size.
pub fn allocate(
    sizes: &[u64],
    intervals: &[Interval],
    persistent: &[bool],
    categories: &[Category],
) -> (Vec<u64>, u64) {
    let n = sizes.len();
    let mut offsets = vec![0u64; n];
    let mut state: Vec<usize> = (0..n).filter(|&i| persistent[i]).collect();
    state.sort_by_key(|&i| (categories[i], i));
    let mut top = 0u64;
    for i in state {
        offsets[i] = top;
        top += align(sizes[i]);
    }
    let base = top;

    let mut transient: Vec<usize> = (0..n).filter(|&i| !persistent[i]).collect();
    transient.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then(a.cmp(&b)));
    // Placed buffers are found by time: each is listed in every bucket of `BUCKET_STEPS` steps
    // its live range touches, so a buffer meets only those live near it (a fraction of all on
    // a large model), not every buffer placed before it.
    let buckets_len = transient
        .iter()
        .map(|&i| intervals[i].last / BUCKET_STEPS + 1)
        .max()
        .unwrap_or(0);
    let mut buckets: Vec<Vec<Placed>> = vec![Vec::new(); buckets_len as usize];
    let mut conflicts: Vec<(u64, u64)> = Vec::new();
    let mut arena = base;
    for i in transient {
        let size = align(sizes[i]);
        let live = intervals[i];
        let (first, last) = (live.first / BUCKET_STEPS, live.last / BUCKET_STEPS);
        // Each placed buffer live at the same time once: in the first bucket both touch.
        conflicts.clear();
        for b in first..=last {
            for p in &buckets[b as usize] {
                if (p.live.first / BUCKET_STEPS).max(first) == b && p.live.overlaps(&live) {
                    conflicts.push((p.offset, p.end));
                }
            }
        }
        // The lowest offset from the base up that clears every conflict (first fit).
        conflicts.sort_unstable();
        let mut candidate = base;
        for &(offset, end) in &conflicts {
            if offset >= candidate + size {
                break;
            }
            candidate = candidate.max(end);
        }
        offsets[i] = candidate;
        let placed = Placed {
            offset: candidate,
            end: candidate + size,
            live,
        };
        for b in first..=last {
            buckets[b as usize].push(placed);
        }
        arena = arena.max(candidate + size);
    }
    (offsets, arena)
}
