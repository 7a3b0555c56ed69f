//! `ChunkLmHead`: the LM head and the loss (`linear` → `cross_entropy`, and in the backward
//! `cross_entropy_backward` → `linear_backward_data` and `linear_backward_weight`) become one
//! fused, chunked `classifier_cross_entropy_backward` at the start of the backward, which makes
//! the loss and both gradients from one product of logits per chunk (three matmuls where the
//! unfused head has four), so the logits of the whole batch (`tokens × vocab`, the largest
//! activation of a model with a large vocabulary) never exist at once and are never saved.
//!
//! The forward then has no loss: a loss-only `classifier_cross_entropy` in the `eval` phase,
//! just before the backward, is what evaluation runs after the forward (training never runs
//! it). Its scratch lives at that one step, where the backward's scratch has not begun, so it
//! adds nothing to the training peak.
//!
//! The fused ops round the logits and their gradient as the unfused ones do, so the pass
//! changes no number. Needs: the training graph with one loss. Keeps: the loss tensor, the
//! hidden states' gradient and the head weight's gradient accumulation (tied embeddings: the
//! head's part is added before the embedding's backward adds its own, as unfused).

use crate::memory_edit::{ProgramEdit, edit_graph};
use llmq_compiler::ir::{Graph, Node, Phase, Role, Tensor, TensorId};
use llmq_compiler::kernels::ops::{ClassifierCrossEntropy, ClassifierCrossEntropyBackward};
use llmq_compiler::kernels::{Op, TensorType};
use llmq_compiler::pass::{Pass, PassContext, PassError};

/// Fuses and chunks the LM head with the loss, `chunk_rows` tokens at a time.
pub struct ChunkLmHead {
    /// Tokens per chunk.
    pub chunk_rows: u64,
}

/// The five nodes of the unfused head and loss, by program index.
struct Head {
    linear: usize,
    loss: usize,
    loss_backward: usize,
    data_backward: usize,
    weight_backward: usize,
}

impl Pass for ChunkLmHead {
    fn name(&self) -> &'static str {
        "chunk-lm-head"
    }

    fn run(&self, graph: &mut Graph, _: &PassContext) -> Result<(), PassError> {
        edit_graph(graph, |graph, edit| self.edit(graph, edit))
    }
}

impl ChunkLmHead {
    /// The pass as an edit of a program (the nodes in schedule order); new tensors go to
    /// `graph`.
    pub fn edit(&self, graph: &mut Graph, edit: &mut ProgramEdit) -> Result<(), PassError> {
        let Some(head) = find_head(&edit.program) else {
            return Err(PassError::Failed {
                pass: "chunk-lm-head",
                message: "no `linear` → `cross_entropy` head found to chunk".into(),
            });
        };
        let p = &edit.program;
        let (x, w) = (p[head.linear].inputs[0], p[head.linear].inputs[1]);
        let (targets, loss) = (p[head.loss].inputs[1], p[head.loss].outputs[0]);
        let dloss = p[head.loss_backward].inputs[2];
        let dx = p[head.data_backward].outputs[0];
        let dx_accumulates = p[head.data_backward].accumulate[0];
        let dw = p[head.weight_backward].outputs[0];
        let logits = graph.tensor(p[head.linear].outputs[0]).ty.dtype;
        let (layer, backward_layer) = (p[head.loss].layer, p[head.weight_backward].layer);

        let fail = |e: llmq_compiler::kernels::OpError| PassError::Failed {
            pass: "chunk-lm-head",
            message: e.to_string(),
        };
        let eval_op = ClassifierCrossEntropy {
            chunk_rows: self.chunk_rows,
            logits,
        };
        let eval_out = Op::from(eval_op.clone())
            .infer(&types(graph, &[x, w, targets]))
            .map_err(fail)?;
        let eval_scratch = new_tensor(
            graph,
            "lm_head.eval_scratch",
            eval_out[1].clone(),
            Role::Workspace,
            layer,
        );
        let train_op = ClassifierCrossEntropyBackward {
            chunk_rows: self.chunk_rows,
            logits,
        };
        let train_out = Op::from(train_op.clone())
            .infer(&types(graph, &[x, w, targets, dloss]))
            .map_err(fail)?;
        let scratch = new_tensor(
            graph,
            "lm_head.scratch",
            train_out[3].clone(),
            Role::Workspace,
            backward_layer,
        );

        let eval = Node {
            op: eval_op.into(),
            inputs: vec![x, w, targets],
            outputs: vec![loss, eval_scratch],
            accumulate: vec![false; 2],
            phase: Phase::Eval,
            layer,
        };
        let train = Node {
            op: train_op.into(),
            inputs: vec![x, w, targets, dloss],
            outputs: vec![dx, dw, loss, scratch],
            accumulate: vec![dx_accumulates, true, false, false],
            phase: Phase::Backward,
            layer: backward_layer,
        };
        // The fused op stands where the last of the three backward nodes stood, so everything
        // that read their results still comes after it; the loss alone just before the
        // backward, so its scratch lives where the backward's has not begun yet.
        let last = head.data_backward.max(head.weight_backward);
        let first_backward = edit
            .program
            .iter()
            .position(|n| n.phase == Phase::Backward)
            .expect("the head's backward nodes run in the backward");
        edit.program[last] = train;
        edit.insert_before(first_backward, eval);
        let mut dropped = vec![head.linear, head.loss, head.loss_backward];
        dropped.extend([head.data_backward, head.weight_backward]);
        dropped.retain(|&i| i != last);
        edit.remove(&dropped);
        Ok(())
    }
}

/// The unfused head: the `cross_entropy` of a `linear`, whose logits only the loss and its
/// backward read, with the two matmul backwards of that `linear`.
fn find_head(program: &[Node]) -> Option<Head> {
    let loss = program
        .iter()
        .position(|n| matches!(n.op, Op::CrossEntropy(_)))?;
    let logits = program[loss].inputs[0];
    let linear = program
        .iter()
        .position(|n| matches!(n.op, Op::Linear(_)) && n.outputs == [logits])?;
    let loss_backward = program
        .iter()
        .position(|n| matches!(n.op, Op::CrossEntropyBackward(_)) && n.inputs[0] == logits)?;
    let dlogits = program[loss_backward].outputs[0];
    let readers: Vec<usize> = (0..program.len())
        .filter(|&i| program[i].inputs.contains(&logits) || program[i].inputs.contains(&dlogits))
        .collect();
    let data_backward = program
        .iter()
        .position(|n| matches!(n.op, Op::LinearBackwardData(_)) && n.inputs[0] == dlogits)?;
    let weight_backward = program
        .iter()
        .position(|n| matches!(n.op, Op::LinearBackwardWeight(_)) && n.inputs[0] == dlogits)?;
    let expected = [loss, loss_backward, data_backward, weight_backward];
    (readers.len() == expected.len() && expected.iter().all(|i| readers.contains(i))).then_some(
        Head {
            linear,
            loss,
            loss_backward,
            data_backward,
            weight_backward,
        },
    )
}

fn types(graph: &Graph, ids: &[TensorId]) -> Vec<TensorType> {
    ids.iter().map(|&t| graph.tensor(t).ty.clone()).collect()
}

fn new_tensor(
    graph: &mut Graph,
    name: &str,
    ty: TensorType,
    role: Role,
    layer: Option<u32>,
) -> TensorId {
    graph.add_tensor(Tensor {
        name: name.into(),
        ty,
        role,
        layer,
        hf_name: None,
        init: None,
        parts: Vec::new(),
    })
}
