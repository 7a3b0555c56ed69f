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
    // Placed transient buffers (offset, end, live range), kept sorted by offset.
    let mut placed: Vec<(u64, u64, Interval)> = Vec::with_capacity(transient.len());
    let mut arena = base;
    for i in transient {
        let size = align(sizes[i]);
        let mut candidate = base;
        for (offset, end, live) in &placed {
            let (offset, end) = (*offset, *end);
            if !intervals[i].overlaps(live) {
                continue;
            }
            if offset >= candidate + size {
                break;
            }
            candidate = candidate.max(end);
        }
        offsets[i] = candidate;
        let pos = placed.partition_point(|&(o, _, _)| o <= candidate);
        placed.insert(pos, (candidate, candidate + size, intervals[i]));
        arena = arena.max(candidate + size);
    }
    (offsets, arena)
}
