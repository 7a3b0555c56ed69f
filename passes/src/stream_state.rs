//! `StreamState`: the chosen classes of training state (weights, master weights, gradients,
//! Adam moments) live in the pinned host arena and stream through device buffers.
//!
//! For every node that touches such a tensor `S`:
//! - reading `S`: it reads a device copy, brought by a host → device copy placed early enough
//!   to hide the transfer behind compute, at most one block ahead (double buffering); a node
//!   right after another that had `S` on the device reuses that copy;
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
use llmq_compiler::ir::{Graph, Node, Phase, Role, TensorId};
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
    /// The device, to time transfers and the compute that hides them.
    pub device: DeviceProfile,
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
        let streamed: Vec<TensorId> = graph
            .tensors()
            .filter(|(_, t)| self.roles.contains(&t.role))
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
                        let transfer = transfer_seconds(graph.tensor(s).ty.bytes(), &self.device);
                        let writes_s = |n: &Node| n.outputs.contains(&s);
                        let at =
                            prefetch_position(&original, &units, &seconds, i, transfer, writes_s);
                        edit.insert_before(at, copy_node(s, d, node.phase, node.layer));
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
        edit.program = original;
        for (i, node) in rewired_nodes {
            edit.program[i] = node;
        }
        Ok(())
    }
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
