//! Fusion: rewrites that let the GPU make fewer passes over memory, and the clean-up of casts
//! that change no value, found with `egg`.
//!
//! The pass writes the graph's fusible dataflow as terms (`fusion/rules.rs`: one term per op,
//! `(output k op)` per output of an op with several, other tensors as leaves). It proposes
//! fused nodes from the graph's structure (each writing the tensors of the nodes it replaces),
//! adds their terms, and lets egg saturate the e-graph with the rules, which define each
//! output of a fused op by the unfused ops. A proposal is applied when egg proved every one of
//! its outputs equal to the tensor it takes over. Each rule is an equality the CPU references
//! satisfy bit for bit on every input, checked on random inputs in
//! `kernels/tests/references.rs`; so a fused plan computes exactly what the unfused plan
//! computes (tested on the tiny models in `tests/fusion.rs`, in BF16 and FP8).
//!
//! Rules:
//! - `residual-add-rms-norm`: `s = a + b` feeding `rms_norm(s, w)` becomes one `add_rms_norm`
//!   producing `s`, the normalised value and `rstd` (every pre-norm block has two).
//! - `norm-backward-add`: `dx` of an `rms_norm_backward` added into the residual stream's
//!   gradient (`add(r, dx)`, either operand order) becomes one `rms_norm_backward_add` writing
//!   the sum and accumulating `dw` as before, when the add is all that reads `dx` (so `dx` is
//!   never written) and `r` is written before the norm's backward (whose place the fused node
//!   takes). A `dx` the norm accumulates into (`+=`) is not fused: the add reads the total.
//! - `{op}-abs-max-*`: the `abs_max` of an output of `swiglu`, `rms_norm`, `add_rms_norm`,
//!   `swiglu_backward`, `split_rope_backward` or `rms_norm_backward_add` (the FP8 scale inputs
//!   of the down, q/k/v and gate/up matmuls, of the gate/up and q/k/v backward matmuls' `dy` and
//!   of the output projections' backward `dy`) becomes one more output of that op, its
//!   `{op}_abs_max`
//!   variant, so the GPU does not read the tensor again; `swiglu_backward_abs_max` takes both
//!   gradients' abs-maxes, so it is used when both are wanted. The variants are separate ops
//!   rather than an attribute of the base op: each op keeps a fixed signature (the launchers,
//!   the memory planner and the backward rules see `rms_norm` exactly as before), the kernel
//!   name follows the op's, and the variant records the storage dtype the abs-max is taken in.
//!   A recomputed fused op reproduces its abs-max bit for bit (a max does not depend on the
//!   order of reduction). Abs-maxes of weights, of the attention output and of the other
//!   gradients stay separate nodes. Packed (gate and up in one tensor, see below), the
//!   backward's variant takes the one abs-max of its one gradient.
//! - Cast clean-up (`cast-to-own-dtype`, `double-cast`, `*-of-exact-cast`): a reader of a
//!   cast's result reads the cast's operand instead when the cast changes no value (bf16 → f32,
//!   FP8 → bf16/f32); a cast left unread goes. The pipeline makes no such casts today (the only
//!   casts are the optimizer's FP32 master → BF16 weight, and memory planning adds copies, not
//!   casts); the rules are there for graphs that will (an FP8 LM head, persistent quantised
//!   weights) and are tested on a hand-made graph (`passes/tests/fusion_casts.rs`).
//!
//! Horizontal fusion (q/k/v into one matmul, gate/up into one) is not done here but in its own
//! pass on the forward graph, before autodiff (`horizontal_fusion.rs`): packing the weights is
//! a change of parameters, not a rewrite of values egg could prove on the training graph, and
//! the backward then follows from the catalogue's rules. This pass sees its results: the
//! packed `swiglu{packed=true}` and its backward have their abs-max variants like the unpacked
//! ones (`swiglu_packed-abs-max-*`, `swiglu_backward_packed-abs-max-*`); the packed backward's
//! one gradient `dgu` has one abs-max, the scale of the packed gate|up backward matmuls' `dy`.
//!
//! Invariants: tensors keep their IDs, names and roles (only nodes change, and a forward
//! tensor newly read by the backward becomes saved); a fused node takes the place of the first
//! node it fuses in program order, and the others go. A fused node's accumulated output
//! (`rms_norm_backward`'s `+=dw`) is proven equal to what the node it replaces added there.
//! egg runs to saturation with explicit limits; a limit reached is an error, never a silent
//! partial result.

mod rules;

use egg::{EGraph, Id, Runner, SimpleScheduler, StopReason};
use indexmap::{IndexMap, IndexSet};
use llmq_compiler::ir::{Graph, Node, NodeId, Phase, Role, TensorId};
use llmq_compiler::kernels::ops::{
    AddRmsNorm, AddRmsNormAbsMax, RmsNormAbsMax, RmsNormBackwardAdd, RmsNormBackwardAddAbsMax,
    SplitRopeBackwardAbsMax, SwiGlu, SwiGluAbsMax, SwiGluBackward, SwiGluBackwardAbsMax,
};
use llmq_compiler::kernels::{DType, Op};
use llmq_compiler::pass::{Pass, PassContext, PassError};
use rules::{Dtypes, Term, dtype_leaf, index_leaf, rules};
use std::time::Duration;

/// egg's limits. Every rule adds a few e-nodes per match and chains are at most three rules
/// deep, so a few iterations saturate; the node limit scales with the graph. The time
/// limit is far above any run (the whole pass: 18-30 ms on the 32B here): it must never be
/// what decides a plan.
const ITERATIONS: usize = 8;
const NODES_PER_TERM: usize = 4;
const TIME_LIMIT: Duration = Duration::from_secs(600);

/// The fusion pass.
pub struct Fusion;

const NAME: &str = "fusion";

impl Pass for Fusion {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, graph: &mut Graph, _: &PassContext) -> Result<(), PassError> {
        let order = graph.topological_order();
        let mut terms = Terms::build(graph, &order);
        let mut candidates = Candidates::new(graph);
        candidates.residual_norms(&order);
        candidates.norm_backward_adds(&order);
        candidates.abs_maxes(&order);
        for stage in candidates.stages.values().flatten() {
            terms.add(graph, &stage.node);
        }
        let egraph = saturate(terms.egraph)?;
        let mut edits = Edits {
            graph,
            egraph: &egraph,
            of_tensor: &terms.of_tensor,
            fused: IndexMap::new(),
            absorbed_by: IndexMap::new(),
            rewired: IndexMap::new(),
        };
        edits.keep_proven(candidates.stages);
        edits.bypass_exact_casts(&order);
        let unread = edits.unread_casts(&order);
        let Edits { fused, rewired, .. } = edits;
        let saved = newly_saved(graph, &rewired);
        graph.rewrite(|edit| {
            for (at, f) in fused {
                edit.replace(at, f.node);
                for n in f.absorbs {
                    edit.remove(n);
                }
            }
            for (n, node) in rewired {
                edit.replace(n, node);
            }
            for n in unread {
                edit.remove(n);
            }
            for t in saved {
                edit.tensor_mut(t).role = Role::Saved;
            }
        });
        Ok(())
    }
}

/// Runs egg's rules to saturation under explicit limits; a limit reached is an error.
fn saturate(egraph: EGraph<Term, Dtypes>) -> Result<EGraph<Term, Dtypes>, PassError> {
    let node_limit = NODES_PER_TERM * egraph.total_number_of_nodes() + 1000;
    let runner = Runner::default()
        .with_scheduler(SimpleScheduler)
        .with_iter_limit(ITERATIONS)
        .with_node_limit(node_limit)
        .with_time_limit(TIME_LIMIT)
        .with_egraph(egraph)
        .run(&rules());
    match runner.stop_reason {
        Some(StopReason::Saturated) => Ok(runner.egraph),
        reason => Err(PassError::Failed {
            pass: NAME,
            message: format!("egg stopped before saturating: {reason:?}"),
        }),
    }
}

/// An operand of a term: a tensor, or the dtype a cast or quantisation converts to.
enum Child {
    Tensor(TensorId),
    Dtype(DType),
}

/// The term of a node's op (its output for single-output ops), with its operands' e-classes
/// from `child`; `None` for ops no rule models, or when an operand has no e-class.
fn term_of(node: &Node, mut child: impl FnMut(Child) -> Option<Id>) -> Option<Term> {
    let to = match &node.op {
        Op::Cast(c) => Some(c.to),
        Op::Quantize(q) => Some(q.to),
        Op::Add(_)
        | Op::RmsNorm(_)
        | Op::SwiGlu(_)
        | Op::SwiGluBackward(_)
        | Op::RmsNormBackward(_)
        | Op::AbsMax(_)
        | Op::AddRmsNorm(_)
        | Op::RmsNormAbsMax(_)
        | Op::AddRmsNormAbsMax(_)
        | Op::SwiGluAbsMax(_)
        | Op::SwiGluBackwardAbsMax(_)
        | Op::SplitRopeBackward(_)
        | Op::SplitRopeBackwardAbsMax(_)
        | Op::RmsNormBackwardAdd(_)
        | Op::RmsNormBackwardAddAbsMax(_) => None,
        _ => return None,
    };
    let mut children = Vec::with_capacity(node.inputs.len() + 1);
    if let Some(to) = to {
        children.push(child(Child::Dtype(to))?);
    }
    for &t in &node.inputs {
        children.push(child(Child::Tensor(t))?);
    }
    Some(match (&node.op, children.as_slice()) {
        (Op::Add(_), &[a, b]) => Term::Add([a, b]),
        (Op::RmsNorm(_), &[x, w]) => Term::RmsNorm([x, w]),
        (Op::SwiGlu(_), &[g, u]) => Term::SwiGlu([g, u]),
        (Op::SwiGlu(_), &[gu]) => Term::SwiGluPacked(gu),
        (Op::SwiGluBackward(_), &[g, u, d]) => Term::SwiGluBackward([g, u, d]),
        (Op::SwiGluBackward(_), &[gu, d]) => Term::SwiGluBackwardPacked([gu, d]),
        (Op::RmsNormBackward(_), &[dy, x, w, s]) => Term::RmsNormBackward([dy, x, w, s]),
        (Op::AbsMax(_), &[x]) => Term::AbsMax(x),
        (Op::AddRmsNorm(_), &[a, b, w]) => Term::AddRmsNorm([a, b, w]),
        (Op::RmsNormAbsMax(_), &[x, w]) => Term::RmsNormAbsMax([x, w]),
        (Op::AddRmsNormAbsMax(_), &[a, b, w]) => Term::AddRmsNormAbsMax([a, b, w]),
        (Op::SwiGluAbsMax(_), &[g, u]) => Term::SwiGluAbsMax([g, u]),
        (Op::SwiGluAbsMax(_), &[gu]) => Term::SwiGluPackedAbsMax(gu),
        (Op::SwiGluBackwardAbsMax(_), &[g, u, d]) => Term::SwiGluBackwardAbsMax([g, u, d]),
        (Op::SwiGluBackwardAbsMax(_), &[gu, d]) => Term::SwiGluBackwardPackedAbsMax([gu, d]),
        (Op::SplitRopeBackward(_), &[q, k, v]) => Term::SplitRopeBackward([q, k, v]),
        (Op::SplitRopeBackwardAbsMax(_), &[q, k, v]) => Term::SplitRopeBackwardAbsMax([q, k, v]),
        (Op::RmsNormBackwardAdd(_), &[dy, x, w, s, r]) => {
            Term::RmsNormBackwardAdd([dy, x, w, s, r])
        }
        (Op::RmsNormBackwardAddAbsMax(_), &[dy, x, w, s, r]) => {
            Term::RmsNormBackwardAddAbsMax([dy, x, w, s, r])
        }
        (Op::Cast(_), &[to, x]) => Term::Cast([to, x]),
        (Op::Quantize(_), &[to, x, m]) => Term::Quantize([to, x, m]),
        _ => unreachable!("the modelled ops have these operands"),
    })
}

/// False for a node no rule can match although its op is modelled: a quantisation of anything
/// but a cast's result (only the cast rules read quantisations; the FP8 recipe makes tens per
/// block, which would more than double the e-graph and egg's time for nothing).
fn may_match(graph: &Graph, node: &Node) -> bool {
    match node.op {
        Op::Quantize(_) => graph
            .producer(node.inputs[0])
            .is_some_and(|p| matches!(graph.node(p).op, Op::Cast(_))),
        _ => true,
    }
}

/// The abs-max variant of an op, stored in `dtype`, and the outputs whose abs-max it emits
/// (after its own outputs, in this order).
fn abs_max_variant(op: &Op, dtype: DType) -> Option<(Op, &'static [usize])> {
    Some(match op {
        &Op::SwiGlu(SwiGlu { packed }) => (SwiGluAbsMax { dtype, packed }.into(), &[0]),
        &Op::SwiGluBackward(SwiGluBackward { packed }) => {
            let sources: &[usize] = if packed { &[0] } else { &[0, 1] };
            (SwiGluBackwardAbsMax { dtype, packed }.into(), sources)
        }
        Op::RmsNorm(r) => (RmsNormAbsMax { eps: r.eps, dtype }.into(), &[0]),
        Op::AddRmsNorm(r) => (AddRmsNormAbsMax { eps: r.eps, dtype }.into(), &[1]),
        Op::SplitRopeBackward(r) => {
            let op = SplitRopeBackwardAbsMax {
                cols: r.cols,
                head_dim: r.head_dim,
                theta: r.theta,
                dtype,
            };
            (op.into(), &[0])
        }
        Op::RmsNormBackwardAdd(_) => (RmsNormBackwardAddAbsMax { dtype }.into(), &[0]),
        _ => return None,
    })
}

/// The e-graph of the graph's modelled ops, and the e-class of every tensor in it.
struct Terms {
    egraph: EGraph<Term, Dtypes>,
    of_tensor: Vec<Option<Id>>,
}

impl Terms {
    fn build(graph: &Graph, order: &[NodeId]) -> Terms {
        let mut terms = Terms {
            egraph: EGraph::new(Dtypes::default()),
            of_tensor: vec![None; graph.tensor_count()],
        };
        for &n in order {
            let node = graph.node(n);
            // A term is a value: only nodes whose written outputs are fresh single-assignment
            // tensors have one (not the optimizer's cast writing a weight read earlier). An
            // accumulated output's term is what the node adds, not the tensor's value: the
            // tensor gets no class from it.
            let fresh = |(&t, &acc): (&TensorId, &bool)| {
                acc || (terms.of_tensor[t.index()].is_none()
                    && !graph.tensor(t).role.is_persistent())
            };
            if !node.outputs.iter().zip(&node.accumulate).all(fresh) || !may_match(graph, node) {
                continue;
            }
            if let Some(outputs) = terms.add(graph, node) {
                for ((&t, &acc), id) in node.outputs.iter().zip(&node.accumulate).zip(outputs) {
                    if !acc {
                        terms.of_tensor[t.index()] = Some(id);
                    }
                }
            }
        }
        terms.egraph.rebuild();
        terms
    }

    /// Adds the term of a node's op and of its outputs (`(output k op)` when it has several);
    /// returns the e-class of each output, or `None` for an op no rule models.
    fn add(&mut self, graph: &Graph, node: &Node) -> Option<Vec<Id>> {
        let term = term_of(node, |c| Some(self.child(graph, c)))?;
        let op = self.egraph.add(term);
        if node.outputs.len() == 1 {
            return Some(vec![op]);
        }
        let output = |k: usize| {
            let index = self.egraph.add(Term::Leaf(index_leaf(k)));
            self.egraph.add(Term::Output([index, op]))
        };
        Some((0..node.outputs.len()).map(output).collect())
    }

    /// The e-class of an operand: a tensor's op term, or a leaf named after the tensor (its
    /// dtype recorded) or the dtype.
    fn child(&mut self, graph: &Graph, child: Child) -> Id {
        match child {
            Child::Dtype(d) => self.egraph.add(Term::Leaf(dtype_leaf(d))),
            Child::Tensor(t) => {
                if self.of_tensor[t.index()].is_none() {
                    let leaf = t.to_string().into();
                    self.egraph.analysis.set(leaf, graph.tensor(t).ty.dtype);
                    self.of_tensor[t.index()] = Some(self.egraph.add(Term::Leaf(leaf)));
                }
                self.of(t)
            }
        }
    }

    fn of(&self, t: TensorId) -> Id {
        self.of_tensor[t.index()].expect("operands get an e-class first")
    }
}

/// A fused node replacing node `at` of the graph, and the nodes it absorbs.
struct Fused {
    node: Node,
    absorbs: Vec<NodeId>,
}

/// The fusions to try, found on the graph's structure: per node to replace, its proposals in
/// order, each building on the one before (an `add_rms_norm`, then its abs-max variant).
struct Candidates<'a> {
    graph: &'a Graph,
    stages: IndexMap<NodeId, Vec<Fused>>,
    /// Per absorbed node, the node whose replacement absorbs it.
    absorbed_by: IndexMap<NodeId, NodeId>,
}

impl<'a> Candidates<'a> {
    fn new(graph: &'a Graph) -> Self {
        Candidates {
            graph,
            stages: IndexMap::new(),
            absorbed_by: IndexMap::new(),
        }
    }

    /// The node that writes what node `n` writes once the fusions proposed so far are
    /// applied: its place in program order and the node.
    fn current(&self, n: NodeId) -> (NodeId, &Node) {
        let at = self.absorbed_by.get(&n).copied().unwrap_or(n);
        let node = self
            .stages
            .get(&at)
            .and_then(|s| s.last())
            .map_or(self.graph.node(at), |f| &f.node);
        (at, node)
    }

    /// Proposes `node` to replace node `at` (or its proposal so far), absorbing `absorbs`.
    fn propose(&mut self, at: NodeId, absorbs: &[NodeId], node: Node) {
        for &n in absorbs {
            self.absorbed_by.insert(n, at);
        }
        let absorbs = absorbs.to_vec();
        self.stages
            .entry(at)
            .or_default()
            .push(Fused { node, absorbs });
    }

    /// `residual-add-rms-norm`: each `rms_norm` of an `add`'s result, with the `add`.
    fn residual_norms(&mut self, order: &[NodeId]) {
        for &n in order {
            let norm = self.graph.node(n);
            let Op::RmsNorm(rms) = &norm.op else { continue };
            let Some(add) = self.graph.producer(norm.inputs[0]) else {
                continue;
            };
            let add_node = self.graph.node(add);
            if !matches!(add_node.op, Op::Add(_)) || self.stages.contains_key(&add) {
                continue;
            }
            let sum = add_node.outputs[0];
            let node = Node {
                op: AddRmsNorm {
                    eps: rms.eps,
                    dtype: self.graph.tensor(sum).ty.dtype,
                }
                .into(),
                inputs: vec![add_node.inputs[0], add_node.inputs[1], norm.inputs[1]],
                outputs: vec![sum, norm.outputs[0], norm.outputs[1]],
                accumulate: vec![false; 3],
                phase: add_node.phase,
                layer: add_node.layer,
            };
            self.propose(add, &[n], node);
        }
    }

    /// `norm-backward-add`: each `add` of an `rms_norm_backward`'s `dx` and another gradient
    /// `r`, when the add is the only reader of `dx`, neither accumulates, and `r` is written
    /// before the norm's backward, whose place the fused node takes.
    fn norm_backward_adds(&mut self, order: &[NodeId]) {
        let rank: IndexMap<NodeId, usize> =
            order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let mut reads = vec![0usize; self.graph.tensor_count()];
        for &n in order {
            for &t in &self.graph.node(n).inputs {
                reads[t.index()] += 1;
            }
        }
        for &n in order {
            let add = self.graph.node(n);
            if !matches!(add.op, Op::Add(_)) || add.accumulate[0] {
                continue;
            }
            for (k, &dx) in add.inputs.iter().enumerate() {
                let r = add.inputs[1 - k];
                let Some(back) = self.graph.producer(dx) else {
                    continue;
                };
                let norm = self.graph.node(back);
                let r_ready = self
                    .graph
                    .producer(r)
                    .is_none_or(|p| rank[&p] < rank[&back]);
                if !matches!(norm.op, Op::RmsNormBackward(_))
                    || norm.accumulate[0]
                    || reads[dx.index()] != 1
                    || !r_ready
                    || self.stages.contains_key(&back)
                {
                    continue;
                }
                let mut inputs = norm.inputs.clone();
                inputs.push(r);
                let node = Node {
                    op: RmsNormBackwardAdd {
                        dtype: self.graph.tensor(dx).ty.dtype,
                    }
                    .into(),
                    inputs,
                    outputs: vec![add.outputs[0], norm.outputs[1]],
                    accumulate: vec![false, norm.accumulate[1]],
                    phase: norm.phase,
                    layer: norm.layer,
                };
                self.propose(back, &[n], node);
                break;
            }
        }
    }

    /// The abs-max rules: the `abs_max` nodes reading the outputs of one op (a norm fused with
    /// its residual add or not, swiglu, its backward) become outputs of its abs-max variant,
    /// when there is one for every output the variant takes the abs-max of.
    fn abs_maxes(&mut self, order: &[NodeId]) {
        // Per producer (as fused so far), the abs_max nodes reading its outputs: (output
        // index, node).
        let mut readers: IndexMap<NodeId, Vec<(usize, NodeId)>> = IndexMap::new();
        for &n in order {
            let node = self.graph.node(n);
            if !matches!(node.op, Op::AbsMax(_)) || node.accumulate[0] {
                continue;
            }
            let x = node.inputs[0];
            let Some(producer) = self.graph.producer(x) else {
                continue;
            };
            let (at, producer) = self.current(producer);
            if let Some(k) = producer.outputs.iter().position(|&t| t == x) {
                readers.entry(at).or_default().push((k, n));
            }
        }
        for (at, readers) in readers {
            let producer = self.current(at).1;
            let dtype = self.graph.tensor(producer.outputs[0]).ty.dtype;
            let Some((op, sources)) = abs_max_variant(&producer.op, dtype) else {
                continue;
            };
            let reader_of = |k: usize| readers.iter().find(|r| r.0 == k).map(|r| r.1);
            let Some(absorbs) = sources
                .iter()
                .map(|&k| reader_of(k))
                .collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            let mut outputs = producer.outputs.clone();
            outputs.extend(absorbs.iter().map(|&n| self.graph.node(n).outputs[0]));
            let mut accumulate = producer.accumulate.clone();
            accumulate.resize(outputs.len(), false);
            let node = Node {
                op,
                accumulate,
                outputs,
                ..producer.clone()
            };
            self.propose(at, &absorbs, node);
        }
    }
}

/// The rewrites egg proved, collected before the graph is edited.
struct Edits<'a> {
    graph: &'a Graph,
    egraph: &'a EGraph<Term, Dtypes>,
    of_tensor: &'a [Option<Id>],
    /// Per replaced node, its fused replacement.
    fused: IndexMap<NodeId, Fused>,
    /// Per absorbed node, the node whose replacement absorbed it.
    absorbed_by: IndexMap<NodeId, NodeId>,
    /// Nodes that read a cast's operand instead of its result, with their new operands.
    rewired: IndexMap<NodeId, Node>,
}

impl Edits<'_> {
    fn class(&self, t: TensorId) -> Option<Id> {
        self.of_tensor[t.index()].map(|id| self.egraph.find(id))
    }

    /// True when egg proved every output of `node`, a fused node replacing node `at` and
    /// writing the tensors of the nodes it replaces, equal to that output of its op on its
    /// operands: a written output equal to the tensor, an accumulated one to what node `at`
    /// adds to it.
    fn proves(&self, at: NodeId, node: &Node) -> bool {
        let Some(op) = self.lookup(node) else {
            return false;
        };
        let replaced = self.graph.node(at);
        let outputs = node.outputs.iter().zip(&node.accumulate);
        outputs.enumerate().all(|(k, (&t, &acc))| {
            let want = if acc {
                self.added_by(replaced, t)
            } else {
                self.class(t)
            };
            want.is_some() && self.output(op, node, k) == want
        })
    }

    /// The e-class of output `k` of `node`, whose op term is in class `op`.
    fn output(&self, op: Id, node: &Node, k: usize) -> Option<Id> {
        match node.outputs.len() {
            1 => Some(op),
            _ => {
                let index = self.egraph.lookup(Term::Leaf(index_leaf(k)))?;
                self.egraph.lookup(Term::Output([index, op]))
            }
        }
    }

    /// The e-class of what `node` adds to `t`, one of its accumulated outputs.
    fn added_by(&self, node: &Node, t: TensorId) -> Option<Id> {
        let mut outputs = node.outputs.iter().zip(&node.accumulate);
        let k = outputs.position(|(&o, &acc)| acc && o == t)?;
        self.output(self.lookup(node)?, node, k)
    }

    /// Keeps, per replaced node, its last proposal egg proved (with everything the proposals
    /// up to it absorb).
    fn keep_proven(&mut self, stages: IndexMap<NodeId, Vec<Fused>>) {
        for (at, stages) in stages {
            let Some(last) = stages.iter().rposition(|f| self.proves(at, &f.node)) else {
                continue;
            };
            let absorbs: Vec<NodeId> = stages[..=last]
                .iter()
                .flat_map(|f| f.absorbs.iter().copied())
                .collect();
            for &n in &absorbs {
                self.absorbed_by.insert(n, at);
            }
            let node = stages[last].node.clone();
            self.fused.insert(at, Fused { node, absorbs });
        }
    }

    /// The node that writes what node `n` writes once the kept fusions are applied.
    fn current(&self, n: NodeId) -> &Node {
        let at = self.absorbed_by.get(&n).copied().unwrap_or(n);
        self.fused.get(&at).map_or(self.graph.node(at), |f| &f.node)
    }

    /// The cast clean-up: every operand that a chain of casts produces is read from the
    /// earliest tensor of the chain whose values the reader may take instead.
    fn bypass_exact_casts(&mut self, order: &[NodeId]) {
        for &n in order {
            if self.fused.contains_key(&n) || self.absorbed_by.contains_key(&n) {
                continue;
            }
            let mut node = self.graph.node(n).clone();
            let mut changed = false;
            for i in 0..node.inputs.len() {
                let sources = self.cast_sources(node.inputs[i]);
                if let Some(&x) = sources.iter().rev().find(|&&x| self.may_read(&node, i, x)) {
                    node.inputs[i] = x;
                    changed = true;
                }
            }
            if changed {
                self.rewired.insert(n, node);
            }
        }
    }

    /// The operands of the casts that produce `t`, nearest first (`x, w` for `t = cast(cast(w))`
    /// with `x = cast(w)`).
    fn cast_sources(&self, mut t: TensorId) -> Vec<TensorId> {
        let mut sources = Vec::new();
        while let Some(p) = self.graph.producer(t) {
            let node = self.graph.node(p);
            if !matches!(node.op, Op::Cast(_)) || node.accumulate[0] {
                break;
            }
            t = node.inputs[0];
            sources.push(t);
        }
        sources
    }

    /// True when `node` may read `x` instead of its operand `i`: `x` is written once (its
    /// value cannot change in between), and either egg proved the two equal in the same dtype,
    /// or it proved the node's result the same from `x` and the op takes `x` with unchanged
    /// output types (a cast to `x`'s own dtype is no op of the catalogue).
    fn may_read(&self, node: &Node, i: usize, x: TensorId) -> bool {
        let t = node.inputs[i];
        let (tx, tt) = (self.graph.tensor(x), self.graph.tensor(t));
        if !matches!(
            tx.role,
            Role::Input | Role::Activation | Role::Saved | Role::Workspace
        ) {
            return false;
        }
        if self.class(x).is_some() && self.class(x) == self.class(t) && tx.ty.dtype == tt.ty.dtype {
            return true;
        }
        if matches!(&node.op, Op::Cast(c) if c.to == tx.ty.dtype) {
            return false;
        }
        let mut with_x = node.clone();
        with_x.inputs[i] = x;
        let same_result = self.lookup(node).is_some() && self.lookup(node) == self.lookup(&with_x);
        same_result && self.output_types(node) == self.output_types(&with_x)
    }

    /// The e-class of a node's term, if egg has it.
    fn lookup(&self, node: &Node) -> Option<Id> {
        let term = term_of(node, |c| match c {
            Child::Tensor(t) => self.class(t),
            Child::Dtype(d) => self.egraph.lookup(Term::Leaf(dtype_leaf(d))),
        })?;
        self.egraph.lookup(term)
    }

    fn output_types(&self, node: &Node) -> Option<Vec<llmq_compiler::kernels::TensorType>> {
        let types: Vec<_> = node
            .inputs
            .iter()
            .map(|&t| self.graph.tensor(t).ty.clone())
            .collect();
        node.op.infer(&types).ok()
    }

    /// The casts whose result nothing reads once readers are rewired (a chain goes whole),
    /// among those some reader was taken from; persistent results (a weight written by the
    /// optimizer) stay.
    fn unread_casts(&self, order: &[NodeId]) -> Vec<NodeId> {
        let mut readers = vec![0usize; self.graph.tensor_count()];
        let mut bypassed: IndexSet<TensorId> = IndexSet::new();
        for &n in order {
            if self.absorbed_by.contains_key(&n) {
                continue;
            }
            let node = self.rewired.get(&n).unwrap_or_else(|| self.current(n));
            for &t in &node.inputs {
                readers[t.index()] += 1;
            }
            if let Some(new) = self.rewired.get(&n) {
                let old = &self.graph.node(n).inputs;
                bypassed.extend(old.iter().filter(|t| !new.inputs.contains(t)));
            }
        }
        let mut unread = Vec::new();
        for &n in order.iter().rev() {
            let node = self.rewired.get(&n).unwrap_or_else(|| self.graph.node(n));
            let out = node.outputs[0];
            let is_cast = matches!(node.op, Op::Cast(_)) && !self.fused.contains_key(&n);
            if is_cast
                && readers[out.index()] == 0
                && bypassed.contains(&out)
                && !self.graph.tensor(out).role.is_persistent()
            {
                unread.push(n);
                let input = node.inputs[0];
                readers[input.index()] -= 1;
                bypassed.insert(input);
            }
        }
        unread
    }
}

/// Forward activations that a rewired backward or optimizer node now reads: saved for it.
fn newly_saved(graph: &Graph, rewired: &IndexMap<NodeId, Node>) -> Vec<TensorId> {
    let mut saved = IndexSet::new();
    for node in rewired.values().filter(|n| n.phase != Phase::Forward) {
        for &t in &node.inputs {
            if graph.tensor(t).role == Role::Activation {
                saved.insert(t);
            }
        }
    }
    saved.into_iter().collect()
}
