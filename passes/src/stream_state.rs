//! `StreamState`: the chosen classes of training state (weights, master weights, gradients,
//! Adam moments) live in the pinned host arena and stream through device buffers; of one
//! class, the first blocks' tensors may stay on the device (`KeptBlocks`).
//!
//! For every node that touches such a tensor `S`:
//! - reading `S`: it reads a device copy, brought by a host → device copy placed early enough
//!   to hide the transfer behind compute, at most one block ahead (double buffering); a node
//!   right after another that had `S` on the device reuses that copy. The copies run one at a
//!   time on one stream, in program order, so they are placed together, scheduled back from
//!   the last (`schedule_prefetches`): a large one for a later node must not hold up a small
//!   one due sooner;
//! - writing `S`: it writes a fresh device tensor, or, when it also reads `S` (AdamW, zero)
//!   or accumulates into it (gradients), updates the device copy in place; either is copied
//!   back to `S` right after.
//!
//! So the forward streams each block's weights in while the previous block computes, the
//! backward brings each parameter's gradient in, adds to it and writes it back, and the
//! optimizer streams master weights, moments and gradients through per parameter.
//!
//! Needs: a graph whose state is on the device. Keeps: only copies touch host tensors.

use crate::memory_edit::{
    ProgramEdit, buffering_units, copy_node, edit_graph, node_seconds, prefetch_position,
    tensor_like, transfer_seconds,
};
use indexmap::IndexMap;
use llmq_compiler::ir::{Graph, Node, Phase, Role, Tensor, TensorId};
use llmq_compiler::pass::{Pass, PassContext, PassError};
use llmq_compiler::target::DeviceProfile;

/// Nodes at most this far apart share a device copy of a streamed tensor (the optimizer's
/// update, cast and zero of one parameter; the two backward matmuls reading one weight).
const REUSE_DISTANCE: usize = 4;

/// Moves the state of `roles` to the host and streams it through the device.
pub struct StreamState {
    /// The roles whose tensors live on the host: any of `Weight`, `MasterWeight`,
    /// `Gradient`, `AdamM`, `AdamV`.
    pub roles: Vec<Role>,
    /// Of one of `roles`, the blocks whose tensors stay on the device all the same (the
    /// planner's use of memory that a whole class would not fit in).
    pub kept: Option<KeptBlocks>,
    /// The device, to time transfers and the compute that hides them.
    pub device: DeviceProfile,
}

/// A streamed role's tensors of the first `blocks` blocks, left on the device; its tensors of
/// the later blocks and outside the blocks (embedding, head, final norm) still stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeptBlocks {
    /// The streamed role.
    pub role: Role,
    /// How many blocks, from the first.
    pub blocks: u32,
}

impl KeptBlocks {
    /// True when `tensor` is one of the kept ones.
    pub fn keeps(&self, tensor: &Tensor) -> bool {
        tensor.role == self.role && tensor.layer.is_some_and(|layer| layer < self.blocks)
    }
}

impl Pass for StreamState {
    fn name(&self) -> &'static str {
        "stream-state"
    }

    fn run(&self, graph: &mut Graph, _: &PassContext) -> Result<(), PassError> {
        if self.roles.is_empty() {
            return Ok(());
        }
        edit_graph(graph, |graph, edit| self.edit(graph, edit))
    }
}

impl StreamState {
    /// The pass as an edit of a program (the nodes in schedule order); new tensors go to
    /// `graph`.
    pub fn edit(&self, graph: &mut Graph, edit: &mut ProgramEdit) -> Result<(), PassError> {
        if let Some(role) = self.roles.iter().find(|r| !is_state(**r)) {
            return Err(PassError::Failed {
                pass: "stream-state",
                message: format!("{} tensors are not training state", role.name()),
            });
        }
        let kept = |t: &Tensor| self.kept.is_some_and(|k| k.keeps(t));
        let streamed: Vec<TensorId> = graph
            .tensors()
            .filter(|(_, t)| self.roles.contains(&t.role) && !kept(t))
            .map(|(id, _)| id)
            .collect();
        if streamed.is_empty() {
            return Ok(());
        }
        for &t in &streamed {
            graph.place_on_host(t);
        }
        // Prefetches are placed by the program as it was: the nodes are rewired afterwards.
        let original = std::mem::take(&mut edit.program);
        let mut rewired_nodes: Vec<(usize, Node)> = Vec::new();
        let seconds = node_seconds(graph, &original, &self.device);
        let units = buffering_units(&original);
        let mut on_device: IndexMap<TensorId, DeviceCopy> = IndexMap::new();
        let mut prefetches: Vec<Prefetch> = Vec::new();
        for (i, node) in original.iter().enumerate() {
            // Device copies of what the node reads, and of what it accumulates into.
            let accumulated = node
                .outputs
                .iter()
                .zip(&node.accumulate)
                .filter(|(_, acc)| **acc)
                .map(|(t, _)| *t);
            let mut brought: IndexMap<TensorId, TensorId> = IndexMap::new();
            for s in node.inputs.iter().copied().chain(accumulated) {
                if !graph.is_on_host(s) || brought.contains_key(&s) {
                    continue;
                }
                let reusable = on_device
                    .get(&s)
                    .filter(|c| c.phase == node.phase && i - c.last_use <= REUSE_DISTANCE);
                let device_copy = match reusable {
                    Some(c) => c.tensor,
                    None => {
                        let d = tensor_like(graph, s, "stage", Role::Workspace);
                        let writes_s = |n: &Node| n.outputs.contains(&s);
                        let unbounded = f64::INFINITY;
                        prefetches.push(Prefetch {
                            consumer: i,
                            earliest: prefetch_position(
                                &original, &units, &seconds, i, unbounded, writes_s,
                            ),
                            transfer: transfer_seconds(graph.tensor(s).ty.bytes(), &self.device),
                            copy: copy_node(s, d, node.phase, node.layer),
                        });
                        d
                    }
                };
                brought.insert(s, device_copy);
            }
            let touches_host = node.outputs.iter().any(|&t| graph.is_on_host(t));
            if brought.is_empty() && !touches_host {
                continue;
            }
            let mut rewired = node.clone();
            for t in rewired.inputs.iter_mut() {
                if let Some(&d) = brought.get(t) {
                    *t = d;
                }
            }
            let mut current = brought.clone();
            for t in rewired.outputs.iter_mut() {
                if !graph.is_on_host(*t) {
                    continue;
                }
                let s = *t;
                // Accumulated or updated in place (AdamW, zero) in its device copy; else a
                // fresh device tensor.
                let d = match brought.get(&s) {
                    Some(&d) => d,
                    None => tensor_like(graph, s, "update", Role::Workspace),
                };
                *t = d;
                edit.insert_after(i, copy_node(d, s, node.phase, node.layer));
                current.insert(s, d);
            }
            for (s, tensor) in current {
                let copy = DeviceCopy {
                    tensor,
                    last_use: i,
                    phase: node.phase,
                };
                on_device.insert(s, copy);
            }
            rewired_nodes.push((i, rewired));
        }
        for (at, copy) in schedule_prefetches(&seconds, prefetches) {
            edit.insert_before(at, copy);
        }
        edit.program = original;
        for (i, node) in rewired_nodes {
            edit.program[i] = node;
        }
        Ok(())
    }
}

/// A host → device copy to place before node `consumer` of the program, not before node
/// `earliest` (the source's last writer, the phase's start or the previous unit).
struct Prefetch {
    consumer: usize,
    earliest: usize,
    transfer: f64,
    copy: Node,
}

/// Where each of `prefetches` (in the order of their consumers) goes, by the estimated
/// `seconds` of the program's nodes: the copies run one at a time in program order, so,
/// scheduled back from the last, each starts as late as lets it finish before its consumer
/// and before the next copy starts, placed at the latest node the compute reaches by then
/// (never before its earliest). Positions never decrease along the consumers, so the stream
/// runs them in the order they are due; where even the earliest position is too late, the copy
/// starts there and the ones before it are scheduled to be done by then.
fn schedule_prefetches(seconds: &[f64], prefetches: Vec<Prefetch>) -> Vec<(usize, Node)> {
    // When the compute reaches each node.
    let mut reached = Vec::with_capacity(seconds.len() + 1);
    let mut t = 0.0;
    for s in seconds {
        reached.push(t);
        t += s;
    }
    reached.push(t);
    let mut placed = Vec::with_capacity(prefetches.len());
    let (mut next_start, mut next_at) = (f64::INFINITY, usize::MAX);
    for p in prefetches.into_iter().rev() {
        let latest_start = reached[p.consumer].min(next_start) - p.transfer;
        let mut at = p.consumer.min(next_at).max(p.earliest);
        while at > p.earliest && reached[at] > latest_start {
            at -= 1;
        }
        next_start = latest_start.max(reached[at]);
        next_at = at;
        placed.push((at, p.copy));
    }
    placed.reverse();
    placed
}

/// The device copy of a streamed tensor that nearby nodes may share.
struct DeviceCopy {
    tensor: TensorId,
    last_use: usize,
    phase: Phase,
}

/// True for the roles of training state that may be streamed.
fn is_state(role: Role) -> bool {
    matches!(
        role,
        Role::Weight | Role::MasterWeight | Role::Gradient | Role::AdamM | Role::AdamV
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmq_compiler::kernels::{DType, TensorType};

    /// Prefetches of one tensor, told apart by their `layer`, for `schedule_prefetches`.
    fn prefetch(graph: &mut Graph, id: u32, consumer: usize, transfer: f64) -> Prefetch {
        let t = graph.add_tensor(Tensor {
            name: format!("t{id}"),
            ty: TensorType::new([1], DType::F32),
            role: Role::Workspace,
            layer: None,
            hf_name: None,
            init: None,
            parts: Vec::new(),
        });
        Prefetch {
            consumer,
            earliest: 0,
            transfer,
            copy: copy_node(t, t, Phase::Backward, Some(id)),
        }
    }

    /// Each copy's start and finish on the one stream that runs them in program order, each
    /// once the compute (1 s per node) has reached its place.
    fn run_in_order(placed: &[(usize, Node)], transfers: &[f64]) -> Vec<(f64, f64)> {
        let mut free = 0.0f64;
        placed
            .iter()
            .map(|(at, copy)| {
                let start = free.max(*at as f64);
                free = start + transfers[copy.layer.unwrap() as usize];
                (start, free)
            })
            .collect()
    }

    #[test]
    fn a_large_prefetch_for_a_later_node_does_not_hold_up_a_small_one_due_sooner() {
        let mut graph = Graph::new();
        let seconds = vec![1.0; 10];
        // Copy 0 (1 s) is due at node 5, copy 1 (5 s) at node 8: placed alone each as late as
        // hides it (nodes 4 and 3), copy 1 would run first and copy 0 be 4 s late.
        let transfers = [1.0, 5.0];
        let prefetches = vec![
            prefetch(&mut graph, 0, 5, transfers[0]),
            prefetch(&mut graph, 1, 8, transfers[1]),
        ];
        let placed = schedule_prefetches(&seconds, prefetches);
        let order: Vec<(usize, Option<u32>)> =
            placed.iter().map(|(at, c)| (*at, c.layer)).collect();
        assert_eq!(order, [(2, Some(0)), (3, Some(1))]);
        let due = [5.0, 8.0];
        for (i, (_, finish)) in run_in_order(&placed, &transfers).iter().enumerate() {
            assert!(
                *finish <= due[i],
                "copy {i} done at {finish}, due at {}",
                due[i]
            );
        }
    }

    #[test]
    fn prefetches_that_cannot_all_be_hidden_start_at_their_earliest() {
        let mut graph = Graph::new();
        let seconds = vec![1.0; 6];
        // 4 s of copies due by node 3: both as early as allowed, in the order they are due.
        let mut prefetches = vec![
            prefetch(&mut graph, 0, 2, 2.0),
            prefetch(&mut graph, 1, 3, 2.0),
        ];
        prefetches[1].earliest = 1;
        let placed = schedule_prefetches(&seconds, prefetches);
        let order: Vec<(usize, Option<u32>)> =
            placed.iter().map(|(at, c)| (*at, c.layer)).collect();
        assert_eq!(order, [(0, Some(0)), (1, Some(1))]);
    }
}
