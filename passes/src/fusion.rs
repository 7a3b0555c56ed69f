//! Fusion: rewrites that let the GPU make fewer passes over memory, found with `egg`.
//!
//! The pass writes the graph's fusible dataflow as terms of a small language (one term per op
//! output, other tensors as leaves), lets egg saturate the e-graph with the rules below, and
//! then applies a fusion wherever egg proved the fused term equal to the unfused one for the
//! same operands. Each rule is an equality the CPU references satisfy bit for bit, checked on
//! random inputs in `kernels/tests/references.rs`; so a fused plan computes exactly what the
//! unfused plan computes (tested on the tiny models in `tests/fusion.rs`).
//!
//! Rules:
//! - `residual-add-rms-norm`: `s = a + b` feeding `rms_norm(s, w)` becomes one `add_rms_norm`
//!   producing `s`, the normalised value and `rstd` (every pre-norm block has two).
//!
//! Invariants: tensors keep their IDs, names and roles (only nodes change); the program order
//! is the topological order of the graph before the pass, with the fused node at the position
//! of the `add`.

use egg::{EGraph, Id, Rewrite, Runner, define_language, rewrite};
use llmq_compiler::ir::{Graph, Node, NodeId, TensorId};
use llmq_compiler::kernels::Op;
use llmq_compiler::kernels::ops::AddRmsNorm;
use llmq_compiler::pass::{Pass, PassContext, PassError};

define_language! {
    /// The terms egg rewrites: the fusible ops, the fused ops and their outputs, and leaves.
    enum Term {
        "add" = Add([Id; 2]),
        "rms_norm" = RmsNorm([Id; 2]),
        "add_rms_norm" = AddRmsNorm([Id; 3]),
        "normed_of" = NormedOf(Id),
        Leaf(egg::Symbol),
    }
}

/// The rewrite rules, each an equality of CPU references (see the module doc).
/// (The fused op's first output is `a + b` stored as the `add` stores it, by its definition, so
/// only the normalised output needs a rule.)
fn rules() -> Vec<Rewrite<Term, ()>> {
    vec![rewrite!(
        "residual-add-rms-norm";
        "(rms_norm (add ?a ?b) ?w)" => "(normed_of (add_rms_norm ?a ?b ?w))"
    )]
}

/// The fusion pass.
pub struct Fusion;

impl Pass for Fusion {
    fn name(&self) -> &'static str {
        "fusion"
    }

    fn run(&self, graph: &mut Graph, _: &PassContext) -> Result<(), PassError> {
        let order = graph.topological_order();
        let terms = Terms::build(graph, &order);
        let runner = Runner::default().with_egraph(terms.egraph).run(&rules());
        let fused = residual_norm_fusions(graph, &order, &terms.of_tensor, &runner.egraph);
        if fused.is_empty() {
            return Ok(());
        }
        *graph = rebuild(graph, &order, &fused);
        Ok(())
    }
}

/// The e-graph of the graph's fusible ops, and the e-class of every tensor in it.
struct Terms {
    egraph: EGraph<Term, ()>,
    of_tensor: Vec<Option<Id>>,
}

impl Terms {
    fn build(graph: &Graph, order: &[NodeId]) -> Terms {
        let mut terms = Terms {
            egraph: EGraph::default(),
            of_tensor: vec![None; graph.tensor_count()],
        };
        for &n in order {
            let node = graph.node(n);
            if node.accumulate.iter().any(|&a| a) {
                continue;
            }
            let term = match &node.op {
                Op::Add(_) => Term::Add([terms.id(node.inputs[0]), terms.id(node.inputs[1])]),
                Op::RmsNorm(_) => {
                    Term::RmsNorm([terms.id(node.inputs[0]), terms.id(node.inputs[1])])
                }
                _ => continue,
            };
            let id = terms.egraph.add(term);
            terms.of_tensor[node.outputs[0].index()] = Some(id);
        }
        terms.egraph.rebuild();
        terms
    }

    /// The e-class of a tensor: its op's term, or a leaf named after it.
    fn id(&mut self, t: TensorId) -> Id {
        match self.of_tensor[t.index()] {
            Some(id) => id,
            None => {
                let id = self.egraph.add(Term::Leaf(t.to_string().into()));
                self.of_tensor[t.index()] = Some(id);
                id
            }
        }
    }
}

/// A fusion to apply: the `add` node becomes `op`, writing the outputs of both nodes, and the
/// `rms_norm` node goes.
struct Fused {
    add: NodeId,
    norm: NodeId,
    node: Node,
}

/// The `rms_norm` nodes whose output egg proved equal to `normed_of(add_rms_norm(a, b, w))`
/// for the `add` that produces their input.
fn residual_norm_fusions(
    graph: &Graph,
    order: &[NodeId],
    of_tensor: &[Option<Id>],
    egraph: &EGraph<Term, ()>,
) -> Vec<Fused> {
    let class = |t: TensorId| of_tensor[t.index()].map(|id| egraph.find(id));
    let mut fused: Vec<Fused> = Vec::new();
    for &n in order {
        let norm = graph.node(n);
        let Op::RmsNorm(rms) = &norm.op else { continue };
        let Some(add) = graph.producer(norm.inputs[0]) else {
            continue;
        };
        let add_node = graph.node(add);
        if !matches!(add_node.op, Op::Add(_)) || fused.iter().any(|f| f.add == add) {
            continue;
        }
        let (Some(a), Some(b), Some(w), Some(y)) = (
            class(add_node.inputs[0]),
            class(add_node.inputs[1]),
            class(norm.inputs[1]),
            class(norm.outputs[0]),
        ) else {
            continue;
        };
        let proved = egraph
            .lookup(Term::AddRmsNorm([a, b, w]))
            .and_then(|f| egraph.lookup(Term::NormedOf(f)))
            .is_some_and(|normed| normed == y);
        if !proved {
            continue;
        }
        let sum = add_node.outputs[0];
        fused.push(Fused {
            add,
            norm: n,
            node: Node {
                op: AddRmsNorm {
                    eps: rms.eps,
                    dtype: graph.tensor(sum).ty.dtype,
                }
                .into(),
                inputs: vec![add_node.inputs[0], add_node.inputs[1], norm.inputs[1]],
                outputs: vec![sum, norm.outputs[0], norm.outputs[1]],
                accumulate: vec![false; 3],
                phase: add_node.phase,
                layer: add_node.layer,
            },
        });
    }
    fused
}

/// The graph again, node by node in `order`, with the fusions applied; tensors are unchanged.
fn rebuild(graph: &Graph, order: &[NodeId], fused: &[Fused]) -> Graph {
    let mut out = Graph::new();
    for (_, t) in graph.tensors() {
        out.add_tensor(t.clone());
    }
    for &n in order {
        if fused.iter().any(|f| f.norm == n) {
            continue;
        }
        match fused.iter().find(|f| f.add == n) {
            Some(f) => out.add_node(f.node.clone()),
            None => out.add_node(graph.node(n).clone()),
        };
    }
    out
}
