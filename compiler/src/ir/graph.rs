//! The data-flow graph: op nodes in a petgraph `StableGraph`, tensors in a table beside it.
//!
//! Activations are single-assignment: one node writes each. State (weights, gradients,
//! moments, scalars) may be written by several nodes (accumulation, the optimizer); for those
//! the graph records ordering edges so that every read sees the writes made before it in
//! program order, and no write overtakes an earlier read.
//!
//! Program order is the order nodes were added in, until a pass edits the graph with
//! [`Graph::rewrite`], the one way to edit a built graph: nodes are replaced or removed, new
//! nodes placed before or after existing ones, and every edge is derived again from the new
//! program order, exactly as if the graph had been built that way.

use super::{NodeId, Role, Tensor, TensorId};
use indexmap::{IndexMap, IndexSet};
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
    /// Evaluation: what the trainer runs after the forward instead of the backward to read a
    /// micro-batch's loss (the loss alone, where training makes it in the backward). Never part
    /// of a training step.
    Eval,
    /// The backward pass of one micro-batch.
    Backward,
    /// The optimizer update, once per step after all micro-batches.
    Optimizer,
    /// After the optimizer (and after the weights are first set or restored): the FP8 copies
    /// of the updated weights that every micro-batch of the next step reads.
    WeightQuant,
}

impl Phase {
    /// Every phase, in schedule order (a training step skips `Eval`).
    pub const ALL: [Phase; 5] = [
        Phase::Forward,
        Phase::Eval,
        Phase::Backward,
        Phase::Optimizer,
        Phase::WeightQuant,
    ];

    /// The phase's name in dumps.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Forward => "fwd",
            Phase::Eval => "eval",
            Phase::Backward => "bwd",
            Phase::Optimizer => "opt",
            Phase::WeightQuant => "wq",
        }
    }
}

/// One op applied to tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Per node index, its position in program order (ties in the topological order).
    rank: Vec<usize>,
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
        Phase::ALL
            .into_iter()
            .flat_map(|phase| {
                order
                    .iter()
                    .copied()
                    .filter(move |&n| self.node(n).phase == phase)
            })
            .collect()
    }

    /// A graph with this graph's tensors (and their placement) and no node: where the memory
    /// planner's candidates add their tensors while their programs are edited apart.
    pub fn tensors_only(&self) -> Graph {
        let n = self.tensors.len();
        Graph {
            tensors: self.tensors.clone(),
            dfg: StableGraph::new(),
            last_writer: vec![None; n],
            readers: vec![Vec::new(); n],
            on_host: self.on_host.clone(),
            rank: Vec::new(),
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
        let idx = self.add_unlinked(node);
        self.link(idx);
        NodeId(idx.index() as u32)
    }

    /// Adds a node last in program order, without edges.
    fn add_unlinked(&mut self, node: Node) -> NodeIndex {
        let idx = self.dfg.add_node(node);
        // A removed node's index may be reused: the table only ever grows.
        if self.rank.len() <= idx.index() {
            self.rank.resize(idx.index() + 1, 0);
        }
        self.rank[idx.index()] = self.dfg.node_count() - 1;
        idx
    }

    /// Adds the edges of a node placed after every node linked so far.
    fn link(&mut self, idx: NodeIndex) {
        let node = &self.dfg[idx];
        let inputs = node.inputs.clone();
        let outputs = node.outputs.clone();
        let accumulate = node.accumulate.clone();
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
    }

    /// Edits the graph through `edit`, then derives every edge again from the new program
    /// order. Returns what `edit` returns.
    pub fn rewrite<R>(&mut self, edit: impl FnOnce(&mut Rewrite) -> R) -> R {
        let mut rewrite = Rewrite {
            graph: self,
            placed: Placed::default(),
        };
        let result = edit(&mut rewrite);
        let placed = rewrite.placed;
        let mut inserted = vec![false; self.dfg.node_bound()];
        for &idx in placed
            .before
            .values()
            .chain(placed.after.values())
            .flatten()
        {
            inserted[idx.index()] = true;
        }
        let mut old: Vec<NodeIndex> = self
            .dfg
            .node_indices()
            .filter(|i| !inserted[i.index()])
            .collect();
        old.sort_by_key(|i| self.rank[i.index()]);
        let mut order = Vec::with_capacity(self.dfg.node_count());
        for idx in old {
            placed.place(idx, &mut order);
        }
        for &id in &placed.removed {
            self.dfg.remove_node(NodeIndex::new(id.index()));
        }
        self.dfg.clear_edges();
        self.last_writer = vec![None; self.tensors.len()];
        self.readers = vec![Vec::new(); self.tensors.len()];
        for (rank, &idx) in order.iter().enumerate() {
            self.rank[idx.index()] = rank;
            self.link(idx);
        }
        result
    }

    /// Creates the output tensors of `op` applied to `inputs`.
    fn new_outputs(
        &mut self,
        op: &Op,
        inputs: &[TensorId],
        names: &[String],
        role: Role,
        layer: Option<u32>,
    ) -> Result<Vec<TensorId>, OpError> {
        let types: Vec<TensorType> = inputs.iter().map(|&t| self.tensor(t).ty.clone()).collect();
        let out_types = op.infer(&types)?;
        Ok(out_types
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
                    parts: Vec::new(),
                })
            })
            .collect())
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
        let outputs = self.new_outputs(&op, inputs, names, role, layer)?;
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

    /// Nodes in a dependency-respecting order; among ready nodes the earliest in program order
    /// runs first, so the order is deterministic and follows program order when it can.
    pub fn topological_order(&self) -> Vec<NodeId> {
        let mut indegree: Vec<usize> = vec![0; self.dfg.node_bound()];
        for e in (&self.dfg).edge_references() {
            indegree[e.target().index()] += 1;
        }
        let key = |i: usize| Reverse((self.rank[i], i));
        let mut ready: BinaryHeap<Reverse<(usize, usize)>> = self
            .dfg
            .node_indices()
            .filter(|i| indegree[i.index()] == 0)
            .map(|i| key(i.index()))
            .collect();
        let mut order = Vec::with_capacity(self.dfg.node_count());
        while let Some(Reverse((_, i))) = ready.pop() {
            order.push(NodeId(i as u32));
            for e in self
                .dfg
                .edges_directed(NodeIndex::new(i), Direction::Outgoing)
            {
                let t = e.target().index();
                indegree[t] -= 1;
                if indegree[t] == 0 {
                    ready.push(key(t));
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

/// Where a rewrite puts nodes in program order: new nodes right before or after a node, in
/// the order given, and the nodes it removes.
#[derive(Default)]
struct Placed {
    before: IndexMap<NodeId, Vec<NodeIndex>>,
    after: IndexMap<NodeId, Vec<NodeIndex>>,
    removed: IndexSet<NodeId>,
}

impl Placed {
    /// Appends to `order` the nodes placed before `idx` (and those placed around them), `idx`
    /// unless it is removed, then the nodes placed after it.
    fn place(&self, idx: NodeIndex, order: &mut Vec<NodeIndex>) {
        let id = NodeId(idx.index() as u32);
        for &n in self.before.get(&id).into_iter().flatten() {
            self.place(n, order);
        }
        if !self.removed.contains(&id) {
            order.push(idx);
        }
        for &n in self.after.get(&id).into_iter().flatten() {
            self.place(n, order);
        }
    }
}

/// An edit of a built graph, open inside [`Graph::rewrite`]: nodes replaced in place (same ID)
/// or removed, and new nodes placed before or after existing ones in program order.
pub struct Rewrite<'g> {
    graph: &'g mut Graph,
    placed: Placed,
}

impl Rewrite<'_> {
    /// The graph as edited so far (its edges are those from before the edit).
    pub fn graph(&self) -> &Graph {
        self.graph
    }

    /// Adds a tensor.
    pub fn add_tensor(&mut self, tensor: Tensor) -> TensorId {
        self.graph.add_tensor(tensor)
    }

    /// Mutable access to a tensor.
    pub fn tensor_mut(&mut self, id: TensorId) -> &mut Tensor {
        self.graph.tensor_mut(id)
    }

    /// Replaces the node `id` (its op, operands and results) keeping its place in program
    /// order.
    pub fn replace(&mut self, id: NodeId, node: Node) {
        self.graph.dfg[NodeIndex::new(id.index())] = node;
    }

    /// Removes the node `id` when the edit ends; its outputs must be written by another node
    /// of the edit (a fused node that replaces it). Nodes placed before or after it keep their
    /// place.
    pub fn remove(&mut self, id: NodeId) {
        self.placed.removed.insert(id);
    }

    /// Places `node` right before `anchor` in program order (after nodes placed there earlier).
    pub fn insert_before(&mut self, anchor: NodeId, node: Node) -> NodeId {
        let idx = self.graph.add_unlinked(node);
        self.placed.before.entry(anchor).or_default().push(idx);
        NodeId(idx.index() as u32)
    }

    /// Places `node` right after `anchor` in program order (after nodes placed there earlier).
    pub fn insert_after(&mut self, anchor: NodeId, node: Node) -> NodeId {
        let idx = self.graph.add_unlinked(node);
        self.placed.after.entry(anchor).or_default().push(idx);
        NodeId(idx.index() as u32)
    }

    /// Applies `op` to `inputs` right before `anchor`, creating one tensor per output named
    /// `names[i]` with `role`, in `anchor`'s phase and layer; returns the new tensors.
    pub fn apply_before(
        &mut self,
        anchor: NodeId,
        op: Op,
        inputs: &[TensorId],
        names: &[String],
        role: Role,
    ) -> Result<Vec<TensorId>, OpError> {
        let (phase, layer) = {
            let a = self.graph.node(anchor);
            (a.phase, a.layer)
        };
        let outputs = self.graph.new_outputs(&op, inputs, names, role, layer)?;
        self.insert_before(
            anchor,
            Node {
                op,
                inputs: inputs.to_vec(),
                accumulate: vec![false; outputs.len()],
                outputs: outputs.clone(),
                phase,
                layer,
            },
        );
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmq_kernels::ops::{Add, Zero};
    use llmq_kernels::{DType, TensorType};

    fn tensor(graph: &mut Graph, name: &str, role: Role) -> TensorId {
        graph.add_tensor(Tensor {
            name: name.into(),
            ty: TensorType::new([4], DType::F32),
            role,
            layer: None,
            hf_name: None,
            init: None,
            parts: Vec::new(),
        })
    }

    fn node(op: impl Into<Op>, inputs: &[TensorId], outputs: &[TensorId]) -> Node {
        Node {
            op: op.into(),
            inputs: inputs.to_vec(),
            outputs: outputs.to_vec(),
            accumulate: vec![false; outputs.len()],
            phase: Phase::Forward,
            layer: None,
        }
    }

    /// Every edge as (position of source, position of target, dependency) in program order.
    fn edges(graph: &Graph) -> Vec<(usize, usize, Dep)> {
        let mut edges: Vec<_> = (&graph.dfg)
            .edge_references()
            .map(|e| {
                let rank = |i: NodeIndex| graph.rank[i.index()];
                (rank(e.source()), rank(e.target()), *e.weight())
            })
            .collect();
        edges.sort_by_key(|&(s, t, dep)| (s, t, format!("{dep:?}")));
        edges
    }

    /// Tensors x (input), w (state), a, b, c, m (activations); `program` lists the nodes.
    fn build(program: &[fn(&[TensorId]) -> Node]) -> (Graph, Vec<TensorId>) {
        let mut g = Graph::new();
        let t: Vec<TensorId> = [
            ("x", Role::Input),
            ("w", Role::Weight),
            ("a", Role::Activation),
            ("b", Role::Activation),
            ("c", Role::Activation),
            ("m", Role::Activation),
        ]
        .iter()
        .map(|&(n, r)| tensor(&mut g, n, r))
        .collect();
        for make in program {
            g.add_node(make(&t));
        }
        (g, t)
    }

    #[test]
    fn a_rewrite_links_as_if_the_graph_had_been_built_in_the_new_order() {
        // Built: a = x + w; c = a + a; w = 0. Rewritten: m = w + w placed before the first
        // node (it reads the state w, so zeroing w must wait for it), b = a + x before
        // `c = a + a`, which becomes c = a + b.
        let (mut g, t) = build(&[
            |t| node(Add, &[t[0], t[1]], &[t[2]]),
            |t| node(Add, &[t[2], t[2]], &[t[4]]),
            |t| node(Zero, &[t[1]], &[t[1]]),
        ]);
        g.rewrite(|rw| {
            rw.insert_before(NodeId(0), node(Add, &[t[1], t[1]], &[t[5]]));
            rw.insert_before(NodeId(1), node(Add, &[t[2], t[0]], &[t[3]]));
            rw.replace(NodeId(1), node(Add, &[t[2], t[3]], &[t[4]]));
        });
        let (direct, _) = build(&[
            |t| node(Add, &[t[1], t[1]], &[t[5]]),
            |t| node(Add, &[t[0], t[1]], &[t[2]]),
            |t| node(Add, &[t[2], t[0]], &[t[3]]),
            |t| node(Add, &[t[2], t[3]], &[t[4]]),
            |t| node(Zero, &[t[1]], &[t[1]]),
        ]);
        assert_eq!(edges(&g), edges(&direct));
        // The topological order follows the new program order; node IDs are kept.
        let order: Vec<u32> = g.topological_order().iter().map(|n| n.0).collect();
        assert_eq!(order, [3, 0, 4, 1, 2]);
        g.verify().unwrap();
    }

    #[test]
    fn nodes_placed_around_a_removed_node_keep_their_place() {
        // Built: a = x + w; c = a + a; w = 0. Rewritten: `c = a + a` removed, with b = a + x
        // placed before it and c = a + b after it; m = w + w after the last node.
        let (mut g, t) = build(&[
            |t| node(Add, &[t[0], t[1]], &[t[2]]),
            |t| node(Add, &[t[2], t[2]], &[t[4]]),
            |t| node(Zero, &[t[1]], &[t[1]]),
        ]);
        g.rewrite(|rw| {
            rw.insert_before(NodeId(1), node(Add, &[t[2], t[0]], &[t[3]]));
            rw.remove(NodeId(1));
            rw.insert_after(NodeId(1), node(Add, &[t[2], t[3]], &[t[4]]));
            rw.insert_after(NodeId(2), node(Add, &[t[1], t[1]], &[t[5]]));
        });
        let (direct, _) = build(&[
            |t| node(Add, &[t[0], t[1]], &[t[2]]),
            |t| node(Add, &[t[2], t[0]], &[t[3]]),
            |t| node(Add, &[t[2], t[3]], &[t[4]]),
            |t| node(Zero, &[t[1]], &[t[1]]),
            |t| node(Add, &[t[1], t[1]], &[t[5]]),
        ]);
        assert_eq!(edges(&g), edges(&direct));
        let order: Vec<u32> = g.topological_order().iter().map(|n| n.0).collect();
        assert_eq!(order, [0, 3, 4, 2, 5]);
        g.verify().unwrap();
    }
}
