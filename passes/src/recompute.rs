//! `Recompute`: for the chosen blocks, the tensors their forward saves for backward are not
//! kept: the block's forward nodes that make them run again in the backward phase, right
//! before the first backward node that reads one, and the backward readers are rewired to
//! the recomputed tensors. The originals then die within the forward.
//!
//! What the block hands to the next block (its output on the residual stream, read by forward
//! nodes of other blocks) is kept: it is the checkpoint the recomputation starts from, with
//! the weights and whatever comes from outside the block. Recomputation runs the same ops on
//! the same values, so it is bit-identical to the forward.
//!
//! Needs: the training graph (autodiff marks saved tensors `Saved`). Keeps: single-assignment
//! activations; program order everywhere else.

use crate::memory_edit::{ProgramEdit, tensor_like};
use indexmap::{IndexMap, IndexSet};
use llmq_compiler::ir::{Graph, Phase, Role, TensorId};
use llmq_compiler::pass::{Pass, PassContext, PassError};

/// Recomputes the saved tensors of `blocks` in the backward phase.
pub struct Recompute {
    /// The blocks (layer indices) whose saved tensors are recomputed.
    pub blocks: Vec<u32>,
}

impl Pass for Recompute {
    fn name(&self) -> &'static str {
        "recompute"
    }

    fn run(&self, graph: &mut Graph, _: &PassContext) -> Result<(), PassError> {
        if self.blocks.is_empty() {
            return Ok(());
        }
        // One edit for all blocks: each block's analysis reads the original program, and its
        // insertions and rewiring touch only its own tensors.
        let mut edit = ProgramEdit::new(graph);
        for &block in &self.blocks {
            recompute_block(graph, &mut edit, block);
        }
        edit.finish(graph);
        Ok(())
    }
}

fn recompute_block(graph: &mut Graph, edit: &mut ProgramEdit, block: u32) {
    let program = &edit.program;
    let in_block = |i: usize| program[i].phase == Phase::Forward && program[i].layer == Some(block);
    // Producer (program index) of every tensor the block's forward writes.
    let mut producer: IndexMap<TensorId, usize> = IndexMap::new();
    for i in (0..program.len()).filter(|&i| in_block(i)) {
        for &t in &program[i].outputs {
            producer.insert(t, i);
        }
    }
    // Tensors read by forward nodes of other blocks are the block's checkpoints: kept.
    let mut kept: IndexSet<TensorId> = IndexSet::new();
    let mut wanted: IndexSet<TensorId> = IndexSet::new();
    for (i, node) in program.iter().enumerate() {
        for &t in &node.inputs {
            if !producer.contains_key(&t) {
                continue;
            }
            match node.phase {
                Phase::Forward if !in_block(i) => {
                    kept.insert(t);
                }
                Phase::Backward => {
                    wanted.insert(t);
                }
                _ => {}
            }
        }
    }
    wanted.retain(|t| !kept.contains(t));
    if wanted.is_empty() {
        return;
    }
    // The forward nodes needed to make the wanted tensors from the checkpoints, in order.
    let mut needed: IndexSet<usize> = IndexSet::new();
    let mut stack: Vec<usize> = wanted.iter().map(|t| producer[t]).collect();
    while let Some(i) = stack.pop() {
        if !needed.insert(i) {
            continue;
        }
        for t in &program[i].inputs {
            if let Some(&p) = producer.get(t)
                && !kept.contains(t)
            {
                stack.push(p);
            }
        }
    }
    needed.sort();
    let first_use = (0..program.len())
        .find(|&i| {
            program[i].phase == Phase::Backward
                && program[i].inputs.iter().any(|t| wanted.contains(t))
        })
        .expect("a wanted tensor has a backward reader");

    let mut renamed: IndexMap<TensorId, TensorId> = IndexMap::new();
    let mut copies = Vec::with_capacity(needed.len());
    for &i in &needed {
        let mut node = edit.program[i].clone();
        for t in node.inputs.iter_mut() {
            if let Some(&r) = renamed.get(t) {
                *t = r;
            }
        }
        for t in node.outputs.iter_mut() {
            let fresh = tensor_like(graph, *t, "recompute", Role::Saved);
            renamed.insert(*t, fresh);
            *t = fresh;
        }
        node.phase = Phase::Backward;
        copies.push(node);
    }
    for node in copies {
        edit.insert_before(first_use, node);
    }
    for node in edit
        .program
        .iter_mut()
        .filter(|n| n.phase == Phase::Backward)
    {
        for t in node.inputs.iter_mut() {
            if let Some(&r) = renamed.get(t) {
                *t = r;
            }
        }
    }
    for &t in renamed.keys() {
        if graph.tensor(t).role == Role::Saved {
            graph.tensor_mut(t).role = Role::Activation;
        }
    }
}
