//! `OffloadActivations`: for the chosen blocks, every tensor their forward saves for backward
//! goes to the pinned host arena right after it is made (a device → host copy), and comes
//! back in the backward (a host → device copy) early enough that the transfer hides behind
//! the compute before its first reader; the backward readers are rewired to the copy.
//!
//! Needs: the training graph, after `recompute` (a recomputation reading a block's output is a
//! backward reader like any other). Keeps: single-assignment activations.

use crate::memory_edit::{
    ProgramEdit, buffering_units, copy_node, edit_graph, node_seconds, prefetch_position,
    tensor_like, transfer_seconds,
};
use indexmap::IndexMap;
use llmq_compiler::ir::{Graph, Phase, Role, TensorId};
use llmq_compiler::pass::{Pass, PassContext, PassError};
use llmq_compiler::target::DeviceProfile;

/// Offloads the saved tensors of `blocks` to the host between forward and backward.
pub struct OffloadActivations {
    /// The blocks (layer indices) whose saved tensors are offloaded.
    pub blocks: Vec<u32>,
    /// The device, to time transfers and the compute that hides them.
    pub device: DeviceProfile,
}

impl Pass for OffloadActivations {
    fn name(&self) -> &'static str {
        "offload-activations"
    }

    fn run(&self, graph: &mut Graph, _: &PassContext) -> Result<(), PassError> {
        if self.blocks.is_empty() {
            return Ok(());
        }
        edit_graph(graph, |graph, edit| {
            self.edit(graph, edit);
            Ok(())
        })
    }
}

impl OffloadActivations {
    /// The pass as an edit of a program (the nodes in schedule order); new tensors go to
    /// `graph`.
    pub fn edit(&self, graph: &mut Graph, edit: &mut ProgramEdit) {
        let seconds = node_seconds(graph, &edit.program, &self.device);
        let units = buffering_units(&edit.program);
        // Saved tensors of the chosen blocks, with their producer and first backward reader.
        let mut saved: IndexMap<TensorId, (usize, Option<usize>)> = IndexMap::new();
        for (i, node) in edit.program.iter().enumerate() {
            let chosen = node.layer.is_some_and(|l| self.blocks.contains(&l));
            if node.phase == Phase::Forward && chosen {
                for &t in &node.outputs {
                    if graph.tensor(t).role == Role::Saved {
                        saved.insert(t, (i, None));
                    }
                }
            }
            if node.phase == Phase::Backward {
                for t in &node.inputs {
                    if let Some((_, first @ None)) = saved.get_mut(t) {
                        *first = Some(i);
                    }
                }
            }
        }
        let mut reloaded: IndexMap<TensorId, TensorId> = IndexMap::new();
        for (&t, &(producer, first_reader)) in &saved {
            let Some(reader) = first_reader else { continue };
            let layer = graph.tensor(t).layer;
            let host = tensor_like(graph, t, "host", Role::Saved);
            graph.place_on_host(host);
            let back = tensor_like(graph, t, "reload", Role::Saved);
            edit.insert_after(producer, copy_node(t, host, Phase::Forward, layer));
            let transfer = transfer_seconds(graph.tensor(t).ty.bytes(), &self.device);
            let at =
                prefetch_position(&edit.program, &units, &seconds, reader, transfer, |_| false);
            edit.insert_before(at, copy_node(host, back, Phase::Backward, layer));
            reloaded.insert(t, back);
            graph.tensor_mut(t).role = Role::Activation;
        }
        for node in edit
            .program
            .iter_mut()
            .filter(|n| n.phase == Phase::Backward)
        {
            for t in node.inputs.iter_mut() {
                if let Some(&r) = reloaded.get(t) {
                    *t = r;
                }
            }
        }
    }
}
