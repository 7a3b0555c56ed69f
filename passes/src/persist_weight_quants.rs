//! `PersistWeightQuants`: the weights' FP8 copies are made once per optimizer step instead of
//! once per micro-batch, and kept across the step.
//!
//! `fp8_casts` quantises every operand where it is used: a weight's abs-max and its K-major
//! copy in the forward, its transposed copy in the backward, in every micro-batch. A weight
//! changes only in the optimizer, so with several micro-batches per step those are the same
//! values made again. This pass moves them (`abs_max` and `quantize` of a weight, and
//! `transpose_fp8` of such a copy) into the `WeightQuant` phase after the optimizer, whose
//! section the trainer also runs once after the weights are set or restored; their outputs become persistent
//! (`QuantizedWeight`). It trades memory (about two bytes per block weight element, both copies
//! kept for the whole step) for time (the quantisations of `grad_accum − 1` micro-batches): the
//! memory planner takes it or not.
//!
//! Values are unchanged bit for bit: the same weights give the same abs-max and the same FP8
//! copies, whichever micro-batch reads them.
//!
//! Needs: `fp8_casts`; runs first among the memory passes, so `recompute` does not repeat a
//! quantisation that no longer belongs to a block's forward.

use crate::memory_edit::{ProgramEdit, edit_graph};
use indexmap::IndexSet;
use llmq_compiler::ir::{Graph, Node, Phase, Role, TensorId};
use llmq_compiler::kernels::Op;
use llmq_compiler::pass::{Pass, PassContext, PassError};

/// Moves the weights' quantisations after the optimizer.
pub struct PersistWeightQuants;

impl Pass for PersistWeightQuants {
    fn name(&self) -> &'static str {
        "persist-weight-quants"
    }

    fn run(&self, graph: &mut Graph, _: &PassContext) -> Result<(), PassError> {
        edit_graph(graph, |graph, edit| {
            self.edit(graph, edit);
            Ok(())
        })
    }
}

impl PersistWeightQuants {
    /// The pass as an edit of a program (the nodes in schedule order); roles change in `graph`.
    pub fn edit(&self, graph: &mut Graph, edit: &mut ProgramEdit) {
        let moved = weight_quantisations(graph, &edit.program);
        let Some(last) = edit.program.len().checked_sub(1) else {
            return;
        };
        for &i in &moved {
            let node = Node {
                phase: Phase::WeightQuant,
                ..edit.program[i].clone()
            };
            for &t in &node.outputs {
                graph.tensor_mut(t).role = Role::QuantizedWeight;
            }
            edit.insert_after(last, node);
        }
        edit.remove(&moved);
    }
}

/// True when `program` quantises a weight, so the pass has something to move.
pub fn quantises_weights(graph: &Graph, program: &[Node]) -> bool {
    !weight_quantisations(graph, program).is_empty()
}

/// The program indices of the abs-maxes and quantisations of weights (`fp8_casts` makes them
/// for the block linears), and of the transposes of those copies.
fn weight_quantisations(graph: &Graph, program: &[Node]) -> Vec<usize> {
    let mut copies: IndexSet<TensorId> = IndexSet::new();
    let mut found = Vec::new();
    for (i, node) in program.iter().enumerate() {
        let source = node.inputs.first().copied();
        let of_weight = source.is_some_and(|t| match node.op {
            Op::AbsMax(_) | Op::Quantize(_) => graph.tensor(t).role == Role::Weight,
            Op::TransposeFp8(_) => copies.contains(&t),
            _ => false,
        });
        if of_weight {
            copies.extend(node.outputs.iter().copied());
            found.push(i);
        }
    }
    found
}
