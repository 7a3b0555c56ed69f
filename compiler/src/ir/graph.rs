//! The data-flow graph: op nodes in a petgraph `StableGraph`, tensors in a table beside it.
//!
//! Activations are single-assignment: one node writes each. State (weights, gradients,
//! moments, scalars) may be written by several nodes (accumulation, the optimizer); for those
//! the graph records ordering edges so that every read sees the writes made before it in
//! program order, and no write overtakes an earlier read.

use super::{NodeId, Role, Tensor, TensorId};
use llmq_kernels::{Op, OpError, TensorType};
use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::{EdgeRef, IntoEdgeReferences, NodeIndexable};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Which part of a training step a node belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Phase {
    /// The forward pass of one micro-batch.
    Forward,
    /// The backward pass of one micro-batch.
    Backward,
    /// The optimizer update, once per step after all micro-batches.
    Optimizer,
}

impl Phase {
    /// The phase's name in dumps.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Forward => "fwd",
            Phase::Backward => "bwd",
            Phase::Optimizer => "opt",
        }
    }
}

/// One op applied to tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The op from the catalogue.
    pub op: Op,
    /// Operands.
    pub inputs: Vec<TensorId>,
    /// Results. An output flagged in `accumulate` is added to the tensor's current value.
    pub outputs: Vec<TensorId>,
    /// Per output: add to the existing value instead of overwriting it.
    pub accumulate: Vec<bool>,
    /// The part of the step the node runs in.
    pub phase: Phase,
    /// The block it belongs to, if any.
    pub layer: Option<u32>,
}

/// Why an edge exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dep {
    /// The consumer reads what the producer wrote.
    Data(TensorId),
    /// The two nodes touch the same state tensor and must keep their program order.
    Order(TensorId),
}

/// An inconsistency found by [`Graph::verify`] or refused while building.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GraphError {
    /// An op refused its operands.
    #[error("{node} ({op}): {source}")]
    Op {
        /// The node.
        node: String,
        /// The op's name.
        op: &'static str,
        /// What the op said.
        source: OpError,
    },
    /// A recorded output type disagrees with the op's shape rule.
    #[error("{node} ({op}): output {tensor} is {got} but the op produces {expected}")]
    OutputType {
        /// The node.
        node: NodeId,
        /// The op's name.
        op: &'static str,
        /// The output tensor.
        tensor: TensorId,
        /// The tensor's recorded type.
        got: TensorType,
        /// What the shape rule says.
        expected: TensorType,
    },
    /// An activation written twice, or read before any write.
    #[error("{0}")]
    Dataflow(String),
}

/// Tensors, and the op nodes that read and write them.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    tensors: Vec<Tensor>,
    dfg: StableGraph<Node, Dep>,
    /// Per tensor, the node that wrote it last (while building).
    last_writer: Vec<Option<NodeIndex>>,
    /// Per tensor, the nodes that read it since its last write (while building).
    readers: Vec<Vec<NodeIndex>>,
    /// Per tensor, true when it lives in the pinned host arena (decided by the memory planner;
    /// only `copy` nodes touch such tensors).
    on_host: Vec<bool>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tensor and returns its ID.
    pub fn add_tensor(&mut self, tensor: Tensor) -> TensorId {
        self.tensors.push(tensor);
        self.last_writer.push(None);
        self.readers.push(Vec::new());
        self.on_host.push(false);
        TensorId(self.tensors.len() as u32 - 1)
    }

    /// Moves a tensor to the pinned host arena.
    pub fn place_on_host(&mut self, id: TensorId) {
        self.on_host[id.index()] = true;
    }

    /// True when the tensor lives in the pinned host arena.
    pub fn is_on_host(&self, id: TensorId) -> bool {
        self.on_host[id.index()]
    }

    /// The topological order, stably partitioned by phase: forward, backward, optimizer. Valid
    /// because no phase reads what a later phase writes within the same step. This is the
    /// order of the plan's steps.
    pub fn schedule(&self) -> Vec<NodeId> {
        let order = self.topological_order();
        [Phase::Forward, Phase::Backward, Phase::Optimizer]
            .into_iter()
            .flat_map(|phase| {
                order
                    .iter()
                    .copied()
                    .filter(move |&n| self.node(n).phase == phase)
            })
            .collect()
    }

    /// The nodes in schedule order: the program a pass may edit and give back to
    /// [`Graph::set_program`].
    pub fn program(&self) -> Vec<Node> {
        self.schedule()
            .into_iter()
            .map(|id| self.node(id).clone())
            .collect()
    }

    /// Replaces every node by `program`, in that order: node IDs follow it and the edges are
    /// rebuilt from it, so the order is kept exactly (a pass that inserts, duplicates or
    /// rewires nodes states the order it wants and the graph derives the dependencies).
    pub fn set_program(&mut self, program: Vec<Node>) {
        self.dfg.clear();
        self.last_writer = vec![None; self.tensors.len()];
        self.readers = vec![Vec::new(); self.tensors.len()];
        for node in program {
            self.add_node(node);
        }
    }

    /// The tensor with this ID.
    pub fn tensor(&self, id: TensorId) -> &Tensor {
        &self.tensors[id.index()]
    }

    /// Mutable access to a tensor (its role, say, once autodiff knows it is saved).
    pub fn tensor_mut(&mut self, id: TensorId) -> &mut Tensor {
        &mut self.tensors[id.index()]
    }

    /// All tensors with their IDs, in creation order.
    pub fn tensors(&self) -> impl Iterator<Item = (TensorId, &Tensor)> {
        self.tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (TensorId(i as u32), t))
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// The node with this ID.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.dfg[NodeIndex::new(id.index())]
    }

    /// All nodes with their IDs, in creation order.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.dfg
            .node_indices()
            .map(|i| (NodeId(i.index() as u32), &self.dfg[i]))
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.dfg.node_count()
    }

    /// Adds a node writing existing tensors, with the edges that order it after the writers
    /// of its inputs and around other accesses to the same state.
    pub fn add_node(&mut self, node: Node) -> NodeId {
        let inputs = node.inputs.clone();
        let outputs = node.outputs.clone();
        let accumulate = node.accumulate.clone();
        let idx = self.dfg.add_node(node);
        for &t in &inputs {
            if let Some(w) = self.last_writer[t.index()] {
                self.dfg.update_edge(w, idx, Dep::Data(t));
            }
            self.readers[t.index()].push(idx);
        }
        for (&t, &acc) in outputs.iter().zip(&accumulate) {
            if let Some(w) = self.last_writer[t.index()] {
                let dep = if acc { Dep::Data(t) } else { Dep::Order(t) };
                self.dfg.update_edge(w, idx, dep);
            }
            for r in std::mem::take(&mut self.readers[t.index()]) {
                if r != idx {
                    self.dfg.update_edge(r, idx, Dep::Order(t));
                }
            }
            self.last_writer[t.index()] = Some(idx);
        }
        NodeId(idx.index() as u32)
    }

    /// Applies `op` to `inputs`, creating one new tensor per output named `names[i]` with
    /// `role`, and returns their IDs.
    pub fn apply(
        &mut self,
        op: Op,
        inputs: &[TensorId],
        names: &[String],
        role: Role,
        phase: Phase,
        layer: Option<u32>,
    ) -> Result<Vec<TensorId>, OpError> {
        let types: Vec<TensorType> = inputs.iter().map(|&t| self.tensor(t).ty.clone()).collect();
        let out_types = op.infer(&types)?;
        let outputs: Vec<TensorId> = out_types
            .into_iter()
            .zip(names)
            .map(|(ty, name)| {
                self.add_tensor(Tensor {
                    name: name.clone(),
                    ty,
                    role,
                    layer,
                    hf_name: None,
                    init: None,
                })
            })
            .collect();
        let accumulate = vec![false; outputs.len()];
        self.add_node(Node {
            op,
            inputs: inputs.to_vec(),
            outputs: outputs.clone(),
            accumulate,
            phase,
            layer,
        });
        Ok(outputs)
    }

    /// The node that produced each tensor last, if any.
    pub fn producer(&self, t: TensorId) -> Option<NodeId> {
        self.last_writer[t.index()].map(|i| NodeId(i.index() as u32))
    }

    /// Nodes in a dependency-respecting order; among ready nodes the earliest created runs
    /// first, so the order is deterministic and follows program order when it can.
    pub fn topological_order(&self) -> Vec<NodeId> {
        let mut indegree: Vec<usize> = vec![0; self.dfg.node_bound()];
        for e in (&self.dfg).edge_references() {
            indegree[e.target().index()] += 1;
        }
        let mut ready: BinaryHeap<Reverse<usize>> = self
            .dfg
            .node_indices()
            .filter(|i| indegree[i.index()] == 0)
            .map(|i| Reverse(i.index()))
            .collect();
        let mut order = Vec::with_capacity(self.dfg.node_count());
        while let Some(Reverse(i)) = ready.pop() {
            order.push(NodeId(i as u32));
            for e in self
                .dfg
                .edges_directed(NodeIndex::new(i), Direction::Outgoing)
            {
                let t = e.target().index();
                indegree[t] -= 1;
                if indegree[t] == 0 {
                    ready.push(Reverse(t));
                }
            }
        }
        order
    }

    /// Checks that every node's output types match its op's shape rule, that activations
    /// have exactly one plain writer and are accumulated into or updated in place only after
    /// it (the memory planner stages state on the device: gradients are accumulated into the
    /// staged copy, AdamW updates it in place), that only copies touch host tensors, and that
    /// the graph has no cycle.
    pub fn verify(&self) -> Result<(), GraphError> {
        let order = self.topological_order();
        if order.len() != self.node_count() {
            return Err(GraphError::Dataflow("the graph has a cycle".into()));
        }
        let mut writers = vec![0usize; self.tensors.len()];
        for id in order {
            let node = self.node(id);
            let types: Vec<TensorType> = node
                .inputs
                .iter()
                .map(|&t| self.tensor(t).ty.clone())
                .collect();
            let expected = node.op.infer(&types).map_err(|source| GraphError::Op {
                node: id.to_string(),
                op: node.op.name(),
                source,
            })?;
            let is_copy = matches!(node.op, Op::Copy(_));
            if let Some(&t) = node
                .inputs
                .iter()
                .chain(&node.outputs)
                .find(|&&t| self.is_on_host(t) && !is_copy)
            {
                return Err(GraphError::Dataflow(format!(
                    "{id} ({}) touches host tensor {t} `{}`; only copies may",
                    node.op.name(),
                    self.tensor(t).name
                )));
            }
            for ((&t, want), &acc) in node.outputs.iter().zip(&expected).zip(&node.accumulate) {
                let tensor = self.tensor(t);
                // State is stored in its own dtype (the write converts); shapes must agree.
                let ok = if tensor.role.is_persistent() {
                    tensor.ty.shape == want.shape
                } else {
                    tensor.ty == *want
                };
                if !ok {
                    return Err(GraphError::OutputType {
                        node: id,
                        op: node.op.name(),
                        tensor: t,
                        got: tensor.ty.clone(),
                        expected: want.clone(),
                    });
                }
                if tensor.role.is_persistent() {
                    continue;
                }
                // Accumulating into it, or updating it in place (the node reads it too),
                // follows the one plain write.
                let updates = acc || node.inputs.contains(&t);
                if !updates {
                    writers[t.index()] += 1;
                } else if writers[t.index()] == 0 {
                    return Err(GraphError::Dataflow(format!(
                        "{id} updates activation {t} `{}` before anything wrote it",
                        tensor.name
                    )));
                }
            }
        }
        let mut read = vec![false; self.tensors.len()];
        for (_, node) in self.nodes() {
            for t in &node.inputs {
                read[t.index()] = true;
            }
        }
        for (id, t) in self.tensors() {
            // A tensor no node touches any more (a pass replaced its ops) is dead, not wrong.
            let dead = writers[id.index()] == 0 && !read[id.index()];
            if !t.role.is_persistent() && writers[id.index()] != 1 && !dead {
                return Err(GraphError::Dataflow(format!(
                    "activation {id} `{}` has {} plain writers; activations have exactly one",
                    t.name,
                    writers[id.index()]
                )));
            }
        }
        Ok(())
    }

    /// Tensors with the given role, in creation order.
    pub fn tensors_with_role(&self, role: Role) -> Vec<TensorId> {
        self.tensors()
            .filter(|(_, t)| t.role == role)
            .map(|(id, _)| id)
            .collect()
    }

    /// Finds a tensor by name.
    pub fn find(&self, name: &str) -> Option<TensorId> {
        self.tensors()
            .find(|(_, t)| t.name == name)
            .map(|(id, _)| id)
    }
}
