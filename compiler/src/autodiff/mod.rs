//! Reverse-mode autodiff over the catalogue's backward rules, and the optimizer as graph ops.
//!
//! [`differentiate`] appends to a forward graph: the backward pass of one micro-batch (seeded
//! with the loss gradient `dloss`, which the trainer sets to `1 / micro-batches`, so that the
//! gradients accumulated over micro-batches are those of the mean loss), then the optimizer
//! phase: the global gradient norm, the clipping factor, AdamW for every parameter (on its FP32
//! master copy when there is one, then cast back), and zeroing of the gradients.
//!
//! Parameter gradients are state: every backward op that produces one adds into it. Activation
//! gradients are single-assignment; where an activation feeds several ops their contributions
//! are summed with `Add`.

mod optimizer;

pub use optimizer::{MasterWeights, OptimizerOptions, ParamState};

use crate::ir::{Graph, Node, Phase, Role, Tensor, TensorId};
use indexmap::IndexMap;
use llmq_kernels::{BackwardStep, DType, Op, OpError, Ref, TensorType};

/// What the training graph needs beyond the forward graph.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// Dtype of parameter gradients.
    pub grad_dtype: DType,
    /// Dtype of the master copy of parameters, or `None` to update the weights directly.
    pub master_dtype: Option<DType>,
    /// Dtype of the two Adam moments.
    pub moment_dtype: DType,
    /// The optimizer's hyper-parameters.
    pub optimizer: OptimizerOptions,
}

/// The tensors through which the trainer talks to a training graph.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrainIo {
    /// Input token ids `[batch, seq]`.
    pub tokens: TensorId,
    /// Target token ids `[batch, seq]`.
    pub targets: TensorId,
    /// The micro-batch's mean loss.
    pub loss: TensorId,
    /// The loss gradient, set by the trainer to `1 / micro-batches`.
    pub dloss: TensorId,
    /// `[learning rate, step]`, set by the trainer before the optimizer phase.
    pub hyper: TensorId,
    /// The global gradient norm before clipping.
    pub grad_norm: TensorId,
    /// Every parameter with its optimizer state, in declaration order.
    pub params: Vec<ParamState>,
}

/// Why a graph could not be differentiated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AutodiffError {
    /// A backward op refused its operands: a bug in a backward rule.
    #[error("backward of {op} at {node}: {source}")]
    Rule {
        /// The forward op.
        op: &'static str,
        /// The forward node.
        node: String,
        /// What the backward op said.
        source: OpError,
    },
    /// A backward rule asked for the gradient of an output that has none.
    #[error("backward of {op} at {node} needs the gradient of output {output}, which has none")]
    MissingGradient {
        /// The forward op.
        op: &'static str,
        /// The forward node.
        node: String,
        /// The output index.
        output: u8,
    },
}

/// Appends the backward pass and the optimizer to a forward graph whose loss is `loss`.
pub fn differentiate(
    graph: &mut Graph,
    tokens: TensorId,
    targets: TensorId,
    loss: TensorId,
    opts: &TrainOptions,
) -> Result<TrainIo, AutodiffError> {
    let forward = graph.topological_order();
    let needs_grad = tensors_needing_grad(graph, &forward);
    let weights = graph.tensors_with_role(Role::Weight);
    let grads: IndexMap<TensorId, TensorId> = weights
        .iter()
        .map(|&w| {
            let t = graph.tensor(w).clone();
            let grad = graph.add_tensor(Tensor {
                name: format!("grad.{}", t.name),
                ty: t.ty.with_dtype(opts.grad_dtype),
                role: Role::Gradient,
                layer: t.layer,
                hf_name: None,
                init: None,
                parts: t.parts.iter().map(|p| p.derived("grad")).collect(),
            });
            (w, grad)
        })
        .collect();
    let dloss = scalar_tensor(graph, "dloss", [1], Role::Input);

    let mut backward = Backward {
        graph,
        needs_grad,
        weight_grads: &grads,
        act_grads: IndexMap::new(),
    };
    backward.act_grads.insert(loss, dloss);
    for &node_id in forward.iter().rev() {
        backward.node(node_id)?;
    }

    let (hyper, grad_norm, params) = optimizer::append(graph, &grads, opts);
    Ok(TrainIo {
        tokens,
        targets,
        loss,
        dloss,
        hyper,
        grad_norm,
        params,
    })
}

/// A new F32 tensor outside any block.
fn scalar_tensor(
    graph: &mut Graph,
    name: &str,
    shape: impl Into<Vec<u64>>,
    role: Role,
) -> TensorId {
    graph.add_tensor(Tensor {
        name: name.into(),
        ty: TensorType::new(shape, DType::F32),
        role,
        layer: None,
        hf_name: None,
        init: None,
        parts: Vec::new(),
    })
}

/// Per tensor: true when it is a weight or computed from one (so a gradient flows to it).
fn tensors_needing_grad(graph: &Graph, forward: &[crate::ir::NodeId]) -> Vec<bool> {
    let mut needs: Vec<bool> = graph
        .tensors()
        .map(|(_, t)| t.role == Role::Weight)
        .collect();
    for &id in forward {
        let node = graph.node(id);
        if node.inputs.iter().any(|t| needs[t.index()]) {
            for t in &node.outputs {
                needs[t.index()] = true;
            }
        }
    }
    needs
}

struct Backward<'g> {
    graph: &'g mut Graph,
    needs_grad: Vec<bool>,
    weight_grads: &'g IndexMap<TensorId, TensorId>,
    /// The gradient of each activation, summed over the contributions seen so far.
    act_grads: IndexMap<TensorId, TensorId>,
}

impl Backward<'_> {
    /// Emits the backward steps of one forward node, if any of its outputs has a gradient.
    fn node(&mut self, id: crate::ir::NodeId) -> Result<(), AutodiffError> {
        let node = self.graph.node(id).clone();
        if !node.outputs.iter().any(|t| self.act_grads.contains_key(t)) {
            return Ok(());
        }
        let input_types: Vec<TensorType> = node
            .inputs
            .iter()
            .map(|&t| self.graph.tensor(t).ty.clone())
            .collect();
        let Some(rule) = node.op.spec().backward(&input_types) else {
            return Ok(());
        };
        // The temporaries and input gradients the rule's steps have written so far.
        let mut written: IndexMap<Ref, TensorId> = IndexMap::new();
        for step in rule {
            match step {
                BackwardStep::PassThrough { output, input } => {
                    let target = node.inputs[input as usize];
                    if self.needs_grad[target.index()] {
                        let grad = self.grad_output(&node, id, output)?;
                        self.contribute(target, grad, node.layer);
                    }
                }
                BackwardStep::Apply {
                    op,
                    inputs,
                    outputs,
                } => {
                    self.apply(&node, id, op, &inputs, &outputs, &mut written)?;
                }
            }
        }
        Ok(())
    }

    fn grad_output(
        &self,
        node: &Node,
        id: crate::ir::NodeId,
        output: u8,
    ) -> Result<TensorId, AutodiffError> {
        self.act_grads
            .get(&node.outputs[output as usize])
            .copied()
            .ok_or(AutodiffError::MissingGradient {
                op: node.op.name(),
                node: id.to_string(),
                output,
            })
    }

    fn apply(
        &mut self,
        node: &Node,
        id: crate::ir::NodeId,
        op: Op,
        inputs: &[Ref],
        outputs: &[Ref],
        written: &mut IndexMap<Ref, TensorId>,
    ) -> Result<(), AutodiffError> {
        let wanted = |r: &Ref| match *r {
            Ref::GradInput(i) => self.needs_grad[node.inputs[i as usize].index()],
            _ => true,
        };
        if !outputs.iter().any(wanted) {
            return Ok(());
        }
        let mut args = Vec::with_capacity(inputs.len());
        for r in inputs {
            args.push(match *r {
                Ref::Input(i) => self.saved(node.inputs[i as usize]),
                Ref::Output(i) => self.saved(node.outputs[i as usize]),
                Ref::GradOutput(i) => self.grad_output(node, id, i)?,
                Ref::Temp(_) | Ref::GradInput(_) => *written.get(r).unwrap_or_else(|| {
                    panic!(
                        "backward rule of {} reads {r:?}, which it has not written (or which \
                         is a weight's accumulated gradient)",
                        node.op.name()
                    )
                }),
            });
        }
        let arg_types: Vec<TensorType> = args
            .iter()
            .map(|&t| self.graph.tensor(t).ty.clone())
            .collect();
        let out_types = op.infer(&arg_types).map_err(|source| AutodiffError::Rule {
            op: node.op.name(),
            node: id.to_string(),
            source,
        })?;
        // Each output: a weight's gradient (accumulated), or a new tensor (an activation's
        // gradient contribution, a temporary, or an unwanted gradient that is dropped).
        let mut outs = Vec::with_capacity(outputs.len());
        let mut accumulate = Vec::with_capacity(outputs.len());
        let mut contributions = Vec::new();
        for (r, ty) in outputs.iter().zip(out_types) {
            let target = match *r {
                Ref::GradInput(i) => Some(node.inputs[i as usize]),
                _ => None,
            };
            if let Some(&grad) = target.and_then(|t| self.weight_grads.get(&t)) {
                outs.push(grad);
                accumulate.push(true);
                continue;
            }
            let name = match (*r, target) {
                (_, Some(t)) => format!("d.{}", self.graph.tensor(t).name),
                (Ref::Temp(i), _) => format!("{}.tmp{i}", op.name()),
                _ => unreachable!("backward outputs are GradInput or Temp"),
            };
            let t = self.graph.add_tensor(Tensor {
                name,
                ty,
                role: Role::Workspace,
                layer: node.layer,
                hf_name: None,
                init: None,
                parts: Vec::new(),
            });
            written.insert(*r, t);
            if let Some(input) = target.filter(|t| self.needs_grad[t.index()]) {
                contributions.push((input, t));
            }
            outs.push(t);
            accumulate.push(false);
        }
        self.graph.add_node(Node {
            op,
            inputs: args,
            outputs: outs,
            accumulate,
            phase: Phase::Backward,
            layer: node.layer,
        });
        for (input, grad) in contributions {
            self.contribute(input, grad, node.layer);
        }
        Ok(())
    }

    /// Marks a forward activation read by the backward pass as saved for backward.
    fn saved(&mut self, t: TensorId) -> TensorId {
        let tensor = self.graph.tensor_mut(t);
        if tensor.role == Role::Activation {
            tensor.role = Role::Saved;
        }
        t
    }

    /// Adds `grad` to the gradient of activation `t`.
    fn contribute(&mut self, t: TensorId, grad: TensorId, layer: Option<u32>) {
        let sum = match self.act_grads.get(&t) {
            None => grad,
            Some(&previous) => {
                let name = format!("d.{}", self.graph.tensor(t).name);
                self.graph
                    .apply(
                        Op::from(llmq_kernels::ops::Add),
                        &[previous, grad],
                        &[name],
                        Role::Workspace,
                        Phase::Backward,
                        layer,
                    )
                    .expect("gradients of one tensor have one type")[0]
            }
        };
        self.act_grads.insert(t, sum);
    }
}
