//! Liveness: the steps between which a tensor's bytes must be kept.

use crate::ir::Graph;
use crate::plan::Step;

/// The inclusive range of steps during which a buffer holds a value that is still needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    /// First step that writes or reads it.
    pub first: u32,
    /// Last step that writes or reads it.
    pub last: u32,
}

impl Interval {
    /// True when the two ranges share a step.
    pub fn overlaps(&self, other: &Interval) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// Per tensor: persistent tensors span every step (they carry values across steps and
/// micro-batches); the others span from their first to their last access.
pub fn liveness(graph: &Graph, steps: &[Step]) -> Vec<Interval> {
    let last_step = steps.len().saturating_sub(1) as u32;
    let mut intervals: Vec<Option<Interval>> = vec![None; graph.tensor_count()];
    for (s, step) in steps.iter().enumerate() {
        for t in step.node.inputs.iter().chain(&step.node.outputs) {
            let slot = &mut intervals[t.index()];
            let s = s as u32;
            *slot = Some(match *slot {
                None => Interval { first: s, last: s },
                Some(i) => Interval {
                    first: i.first.min(s),
                    last: i.last.max(s),
                },
            });
        }
    }
    graph
        .tensors()
        .map(|(id, t)| {
            if t.role.is_persistent() {
                Interval {
                    first: 0,
                    last: last_step,
                }
            } else {
                intervals[id.index()].unwrap_or(Interval { first: 0, last: 0 })
            }
        })
        .collect()
}
