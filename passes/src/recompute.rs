//! `Recompute`: for the chosen blocks, the tensors their forward saves for backward are not
//! kept: the block's forward nodes that make them run again in the backward phase, right
//! before the first backward node that reads one, and the backward readers are rewired to
//! the recomputed tensors. The originals then die within the forward.
//!
//! What the block hands to the next block (its output on the residual stream, read by forward
//! nodes of other blocks, or by the eval section's loss after the last block) is kept: it is the checkpoint the recomputation starts from, with
//! the weights and whatever comes from outside the block. Recomputation runs the same ops on
//! the same values, so it is bit-identical to the forward.
//!
//! Needs: the training graph (autodiff marks saved tensors `Saved`). Keeps: single-assignment
//! activations; program order everywhere else.

use crate::memory_edit::{ProgramEdit, edit_graph, tensor_like};
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
        edit_graph(graph, |graph, edit| {
            self.edit(graph, edit);
            Ok(())
        })
    }
}

impl Recompute {
    /// The pass as an edit of a program (the nodes in schedule order); new tensors go to
    /// `graph`.
    pub fn edit(&self, graph: &mut Graph, edit: &mut ProgramEdit) {
        let program = &edit.program;
        let forward_block = |i: usize| {
            (program[i].phase == Phase::Forward)
                .then_some(program[i].layer)
                .flatten()
                .filter(|l| self.blocks.contains(l))
        };
        // Producer (program index) and block of every tensor the chosen blocks' forward writes.
        let mut producer: IndexMap<TensorId, (usize, u32)> = IndexMap::new();
        for (i, node) in program.iter().enumerate() {
            if let Some(block) = forward_block(i) {
                for &t in &node.outputs {
                    producer.insert(t, (i, block));
                }
            }
        }
        // Tensors read by forward nodes of other blocks are checkpoints: kept (so are those the
        // eval section reads after the forward: the final hidden state). Those read in the
        // backward are wanted; each block's first backward reader is where it recomputes.
        let mut kept: IndexSet<TensorId> = IndexSet::new();
        let mut wanted: IndexSet<TensorId> = IndexSet::new();
        for (i, node) in program.iter().enumerate() {
            for t in &node.inputs {
                let Some(&(_, block)) = producer.get(t) else {
                    continue;
                };
                match node.phase {
                    Phase::Forward | Phase::Eval if forward_block(i) != Some(block) => {
                        kept.insert(*t);
                    }
                    Phase::Backward => {
                        wanted.insert(*t);
                    }
                    _ => {}
                }
            }
        }
        wanted.retain(|t| !kept.contains(t));
        let mut first_use: IndexMap<u32, usize> = IndexMap::new();
        for (i, node) in program.iter().enumerate() {
            if node.phase != Phase::Backward {
                continue;
            }
            for t in node.inputs.iter().filter(|t| wanted.contains(*t)) {
                first_use.entry(producer[t].1).or_insert(i);
            }
        }
        // Per block, the forward nodes that make its wanted tensors from the checkpoints.
        let mut needed: IndexMap<u32, IndexSet<usize>> = IndexMap::new();
        let mut stack: Vec<usize> = wanted.iter().map(|t| producer[t].0).collect();
        while let Some(i) = stack.pop() {
            let block = forward_block(i).expect("producers are in a chosen block");
            if !needed.entry(block).or_default().insert(i) {
                continue;
            }
            for t in &program[i].inputs {
                if let Some(&(p, _)) = producer.get(t)
                    && !kept.contains(t)
                {
                    stack.push(p);
                }
            }
        }

        let mut renamed: IndexMap<TensorId, TensorId> = IndexMap::new();
        for (block, mut nodes) in needed {
            nodes.sort();
            let at = first_use[&block];
            // A block's recomputation reads its own recomputed tensors, and the originals of
            // everything else (another block's recomputation may come later).
            let mut own: IndexMap<TensorId, TensorId> = IndexMap::new();
            for i in nodes {
                let mut node = edit.program[i].clone();
                for t in node.inputs.iter_mut() {
                    if let Some(&r) = own.get(t) {
                        *t = r;
                    }
                }
                for t in node.outputs.iter_mut() {
                    let fresh = tensor_like(graph, *t, "recompute", Role::Saved);
                    own.insert(*t, fresh);
                    renamed.insert(*t, fresh);
                    *t = fresh;
                }
                node.phase = Phase::Backward;
                edit.insert_before(at, node);
            }
        }
        // Backward readers of checkpoints keep the originals: a node recomputed for a wanted
        // tensor may also make a checkpoint, whose readers can come before the recomputation.
        let backward = edit
            .program
            .iter_mut()
            .filter(|n| n.phase == Phase::Backward);
        for node in backward {
            for t in node.inputs.iter_mut() {
                if let Some(&r) = renamed.get(t)
                    && !kept.contains(t)
                {
                    *t = r;
                }
            }
        }
        for &t in renamed.keys().filter(|t| !kept.contains(*t)) {
            if graph.tensor(t).role == Role::Saved {
                graph.tensor_mut(t).role = Role::Activation;
            }
        }
    }
}
