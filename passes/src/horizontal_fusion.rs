//! Horizontal fusion: linear layers that read the same input become one linear layer over
//! their weights packed by rows (q/k/v into one `[q+k+v, K]` matmul, gate/up into one
//! `[2F, K]`), so the GPU runs one larger GEMM instead of two or three, in the forward and in
//! both backward matmuls.
//!
//! It runs on the forward graph, before autodiff, so the backward comes from the catalogue's
//! rules unchanged: the packed weight's `linear_backward_data` is one matmul over
//! `K = q+k+v` (or `2F`) instead of several and an `add`, its `linear_backward_weight` one
//! matmul writing the packed gradient, and AdamW updates the packed parameter and its packed
//! master copy and moments once.
//!
//! What reads the packed output `y [.., Σ M_i]`:
//! - `swiglu(gate, up)` reading the two outputs of a pair becomes `swiglu{packed=true}(y)`,
//!   which reads gate and up as the two halves of each row (its backward writes the packed
//!   gradient);
//! - otherwise a `split` copies the column ranges out into the original outputs, which keep
//!   their IDs, so RoPE, QK-norm and attention read q, k, v as before (the backward's
//!   `concat` writes their gradients side by side for the packed backward matmuls). When
//!   every output is read only by a `bias_add` of its own bias (Qwen2's q/k/v), the biases
//!   are packed too and one `bias_add` runs before the split;
//! - where that split has three parts and the first two (q, k) are each read only by a
//!   `rope` of one head size and base, one `split_rope` does the `bias_add` (if any), the
//!   split and both ropes, writing the ropes' outputs (its backward rotates dq and dk back as
//!   it writes the packed gradient). Qwen3's q/k norms between split and rope keep the plain
//!   split.
//!
//! A packed parameter records its parts (`Tensor::parts`: each part's name, Hugging Face
//! name and rows), and so do its gradient and optimizer state: checkpoints, `--dump-step` and
//! initialisation see the parts under their own names, so a packed plan starts from the same
//! values as an unpacked one and reads and writes the same checkpoint files.
//!
//! Invariants: the forward values are those of the unfused graph (each output column is the
//! same dot product; `split`, `split_rope` and packed `swiglu` compute every element as
//! before); the parts' parameters are left unread and retired (no longer weights: dead tensors, which take no
//! bytes and which autodiff, the optimizer and the memory planner do not see), as are the
//! outputs the packed nodes take over. Linears are grouped when they read the same tensor,
//! in the same block, and each weight is a parameter of one piece read by that linear alone,
//! of one dtype, width and initialisation with the others; at most [`MAX_PARTS`] per group.
//! In an FP8 plan the packed weight gets one scale (the abs-max over all its parts), as in
//! LLMQ, where the unfused plan has one per weight.

use indexmap::IndexMap;
use llmq_compiler::ir::{Graph, Node, NodeId, Part, Role, Tensor, TensorId};
use llmq_compiler::kernels::ops::{BiasAdd, Linear, MAX_PARTS, Split, SplitRope, SwiGlu};
use llmq_compiler::kernels::{Op, TensorType};
use llmq_compiler::pass::{Pass, PassContext, PassError};

/// The horizontal fusion pass.
pub struct HorizontalFusion;

const NAME: &str = "horizontal-fusion";

impl Pass for HorizontalFusion {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&self, graph: &mut Graph, _: &PassContext) -> Result<(), PassError> {
        let readers = Readers::of(graph);
        let edits: Vec<GroupEdit> = linear_groups(graph, &readers)
            .iter()
            .map(|linears| plan_group(graph, &readers, linears))
            .collect();
        graph.rewrite(|edit| {
            for e in edits {
                let first = e.linears[0];
                let template = edit.graph().node(first).clone();
                let node = |op: Op, inputs: Vec<TensorId>, outputs: Vec<TensorId>| Node {
                    op,
                    accumulate: vec![false; outputs.len()],
                    inputs,
                    outputs,
                    ..template.clone()
                };
                for &part in &e.parts {
                    retire(edit.tensor_mut(part));
                }
                let weight = edit.add_tensor(e.weight);
                let mut y = edit.add_tensor(e.output.clone());
                edit.replace(
                    first,
                    node(Linear.into(), vec![template.inputs[0], weight], vec![y]),
                );
                for &n in &e.linears[1..] {
                    edit.remove(n);
                }
                match e.consumer {
                    Consumer::SwiGlu(swiglu) => {
                        let out = edit.graph().node(swiglu).outputs.clone();
                        let packed = SwiGlu { packed: true };
                        edit.replace(swiglu, node(packed.into(), vec![y], out));
                    }
                    Consumer::Split {
                        bias,
                        parts,
                        ropes: Some(ropes),
                    } => {
                        let mut inputs = vec![y];
                        if let Some(b) = &bias {
                            inputs.push(edit.add_tensor(b.bias.clone()));
                        }
                        for n in bias.into_iter().flat_map(|b| b.adds).chain(ropes.nodes) {
                            edit.remove(n);
                        }
                        let op = SplitRope {
                            cols: e.cols.try_into().expect("ropes only for q, k, v"),
                            head_dim: ropes.head_dim,
                            theta: ropes.theta,
                            bias: (inputs.len() == 2).then_some(e.output.ty.dtype),
                        };
                        edit.insert_after(first, node(op.into(), inputs, parts));
                    }
                    Consumer::Split {
                        bias,
                        parts,
                        ropes: None,
                    } => {
                        if let Some(b) = bias {
                            let PackedBias { bias, output, adds } = *b;
                            let (bias, biased) = (edit.add_tensor(bias), edit.add_tensor(output));
                            let add = node(BiasAdd.into(), vec![y, bias], vec![biased]);
                            edit.insert_after(first, add);
                            y = biased;
                            for n in adds {
                                edit.remove(n);
                            }
                        }
                        let split = Split { cols: e.cols };
                        edit.insert_after(first, node(split.into(), vec![y], parts));
                    }
                }
            }
        });
        Ok(())
    }
}

/// Makes a parameter packed into another a dead tensor: no longer a weight (tensors stay in
/// a graph, but a non-persistent one no node touches is dead: it takes no bytes, and no pass,
/// autodiff or the memory planner sees it as state). Its names live on in the packed
/// tensor's parts.
fn retire(t: &mut Tensor) {
    t.role = Role::Activation;
    t.hf_name = None;
    t.init = None;
}

/// Per tensor, the nodes that read it, in program order.
struct Readers(Vec<Vec<NodeId>>);

impl Readers {
    fn of(graph: &Graph) -> Readers {
        let mut readers = vec![Vec::new(); graph.tensor_count()];
        for n in graph.topological_order() {
            for &t in &graph.node(n).inputs {
                readers[t.index()].push(n);
            }
        }
        Readers(readers)
    }

    fn get(&self, t: TensorId) -> &[NodeId] {
        &self.0[t.index()]
    }

    /// The one node reading `t`, if exactly one does.
    fn only(&self, t: TensorId) -> Option<NodeId> {
        match self.get(t) {
            &[n] => Some(n),
            _ => None,
        }
    }
}

/// True for a parameter of one piece that only node `n` reads.
fn own_weight(graph: &Graph, readers: &Readers, w: TensorId, n: NodeId) -> bool {
    let t = graph.tensor(w);
    t.role == Role::Weight && t.parts.is_empty() && readers.only(w) == Some(n)
}

/// The groups of linears to pack, each in program order: the linears reading one input in
/// one block whose weights are their own and agree in dtype, width and initialisation.
fn linear_groups(graph: &Graph, readers: &Readers) -> Vec<Vec<NodeId>> {
    let mut by_input: IndexMap<TensorId, Vec<NodeId>> = IndexMap::new();
    for n in graph.topological_order() {
        let node = graph.node(n);
        if matches!(node.op, Op::Linear(_)) && own_weight(graph, readers, node.inputs[1], n) {
            by_input.entry(node.inputs[0]).or_default().push(n);
        }
    }
    let weight = |n: NodeId| graph.tensor(graph.node(n).inputs[1]);
    let key = |n: NodeId| {
        let w = weight(n);
        // The initialisation compared by its text (its std is a float).
        let init = format!("{:?}", w.init);
        (graph.node(n).layer, w.ty.dtype, w.ty.shape[1], init)
    };
    let mut groups = Vec::new();
    for linears in by_input.into_values() {
        // Linears of one input that disagree split into groups that agree, in program order.
        let mut agreeing: IndexMap<_, Vec<NodeId>> = IndexMap::new();
        for n in linears {
            agreeing.entry(key(n)).or_default().push(n);
        }
        for group in agreeing.into_values() {
            for chunk in group.chunks(MAX_PARTS) {
                if chunk.len() >= 2 {
                    groups.push(chunk.to_vec());
                }
            }
        }
    }
    groups
}

/// What the packed output feeds.
enum Consumer {
    /// The `swiglu` node reading the pair's outputs as gate and up.
    SwiGlu(NodeId),
    /// A split into the original outputs (`parts`), after one packed `bias_add` if `bias`;
    /// with `ropes`, one `split_rope` doing all three, whose outputs `parts` are the ropes'
    /// for q and k.
    Split {
        bias: Option<Box<PackedBias>>,
        parts: Vec<TensorId>,
        ropes: Option<Ropes>,
    },
}

/// The `rope` nodes that alone read q and k, of one head size and frequency base: the split
/// applies them as it copies q and k out.
struct Ropes {
    nodes: [NodeId; 2],
    head_dim: u64,
    theta: f32,
}

/// The biases of a group packed like its weights, added once to the packed output.
struct PackedBias {
    /// The packed bias.
    bias: Tensor,
    /// The biased packed output.
    output: Tensor,
    /// The separate `bias_add` nodes it replaces.
    adds: Vec<NodeId>,
}

/// One group's edit, decided before the graph is edited.
struct GroupEdit {
    linears: Vec<NodeId>,
    /// The parameters packed (weights, and biases if packed), retired by the edit.
    parts: Vec<TensorId>,
    weight: Tensor,
    output: Tensor,
    cols: Vec<u64>,
    consumer: Consumer,
}

/// The packed weight, output and consumer of a group of linears.
fn plan_group(graph: &Graph, readers: &Readers, linears: &[NodeId]) -> GroupEdit {
    let nodes: Vec<&Node> = linears.iter().map(|&n| graph.node(n)).collect();
    let weights: Vec<TensorId> = nodes.iter().map(|n| n.inputs[1]).collect();
    let outputs: Vec<TensorId> = nodes.iter().map(|n| n.outputs[0]).collect();
    let cols: Vec<u64> = weights
        .iter()
        .map(|&w| graph.tensor(w).ty.shape[0])
        .collect();
    let weight = packed(graph, &weights);
    let output = packed_columns(graph, &outputs);
    let swiglu = match outputs.as_slice() {
        &[gate, up] => readers.only(gate).filter(|&n| {
            let node = graph.node(n);
            matches!(node.op, Op::SwiGlu(SwiGlu { packed: false }))
                && node.inputs == [gate, up]
                && readers.only(up) == Some(n)
        }),
        _ => None,
    };
    let consumer = match swiglu {
        Some(n) => Consumer::SwiGlu(n),
        None => with_ropes(graph, readers, split_consumer(graph, readers, &outputs)),
    };
    let mut parts = weights;
    if let Consumer::Split { bias: Some(b), .. } = &consumer {
        parts.extend(b.adds.iter().map(|&n| graph.node(n).inputs[1]));
    }
    GroupEdit {
        linears: linears.to_vec(),
        parts,
        weight,
        output,
        cols,
        consumer,
    }
}

/// The split of the packed output into `outputs`, through one packed `bias_add` when each
/// output is read only by a `bias_add` of its own bias and the biases agree.
fn split_consumer(graph: &Graph, readers: &Readers, outputs: &[TensorId]) -> Consumer {
    let bias_add = |&y: &TensorId| {
        let n = readers.only(y)?;
        let node = graph.node(n);
        if !matches!(node.op, Op::BiasAdd(_)) {
            return None;
        }
        let b = node.inputs[1];
        let own = node.inputs[0] == y && own_weight(graph, readers, b, n);
        own.then_some((n, b, node.outputs[0]))
    };
    let adds: Option<Vec<_>> = outputs.iter().map(bias_add).collect();
    let agree = |adds: &[(NodeId, TensorId, TensorId)]| {
        let t = |b: TensorId| graph.tensor(b);
        adds.iter().all(|&(_, b, _)| {
            t(b).ty.dtype == t(adds[0].1).ty.dtype && t(b).init == t(adds[0].1).init
        })
    };
    match adds {
        Some(adds) if agree(&adds) => {
            let biases: Vec<TensorId> = adds.iter().map(|a| a.1).collect();
            let biased: Vec<TensorId> = adds.iter().map(|a| a.2).collect();
            let bias = PackedBias {
                bias: packed(graph, &biases),
                output: packed_columns(graph, &biased),
                adds: adds.iter().map(|a| a.0).collect(),
            };
            Consumer::Split {
                bias: Some(Box::new(bias)),
                parts: biased,
                ropes: None,
            }
        }
        _ => Consumer::Split {
            bias: None,
            parts: outputs.to_vec(),
            ropes: None,
        },
    }
}

/// `split` with the ropes of q and k folded in, when a split into three parts (q, k, v) has
/// its first two each read by a `rope` alone, both of one head size and frequency base.
fn with_ropes(graph: &Graph, readers: &Readers, split: Consumer) -> Consumer {
    let Consumer::Split {
        bias,
        mut parts,
        ropes: None,
    } = split
    else {
        return split;
    };
    let rope = |part: TensorId| {
        let n = readers.only(part)?;
        match &graph.node(n).op {
            Op::Rope(r) => Some((n, r.clone())),
            _ => None,
        }
    };
    let ropes = match parts.as_slice() {
        &[q, k, _] => rope(q).zip(rope(k)).filter(|((_, a), (_, b))| a == b),
        _ => None,
    };
    let ropes = ropes.map(|((q, r), (k, _))| {
        parts[0] = graph.node(q).outputs[0];
        parts[1] = graph.node(k).outputs[0];
        Ropes {
            nodes: [q, k],
            head_dim: r.head_dim,
            theta: r.theta,
        }
    });
    Consumer::Split { bias, parts, ropes }
}

/// The name of a packed tensor: the parts' common prefix up to a `.`, then their own names
/// joined by `+` (`layers.0.wq+wk+wv`).
fn packed_name(names: &[&str]) -> String {
    let prefix = names[0].rfind('.').map_or("", |i| &names[0][..=i]);
    let own: Vec<&str> = names
        .iter()
        .map(|n| n.strip_prefix(prefix).unwrap_or(n))
        .collect();
    format!("{prefix}{}", own.join("+"))
}

/// The parameters `params` stacked by rows into one, which records them as its parts; they
/// agree in dtype, trailing dimensions and initialisation (the groups are made so).
fn packed(graph: &Graph, params: &[TensorId]) -> Tensor {
    let first = graph.tensor(params[0]);
    let mut parts = Vec::with_capacity(params.len());
    let mut rows = 0;
    for &p in params {
        let t = graph.tensor(p);
        debug_assert!(t.ty.shape[1..] == first.ty.shape[1..] && t.ty.dtype == first.ty.dtype);
        let start = rows;
        rows += t.ty.shape[0];
        parts.push(Part {
            name: t.name.clone(),
            hf_name: t.hf_name.clone(),
            start,
            end: rows,
        });
    }
    let mut shape = first.ty.shape.clone();
    shape[0] = rows;
    let names: Vec<&str> = params
        .iter()
        .map(|&p| graph.tensor(p).name.as_str())
        .collect();
    Tensor {
        name: packed_name(&names),
        ty: TensorType::new(shape, first.ty.dtype),
        role: Role::Weight,
        layer: first.layer,
        hf_name: None,
        init: first.init.clone(),
        parts,
    }
}

/// The activation holding `outputs` side by side in each row.
fn packed_columns(graph: &Graph, outputs: &[TensorId]) -> Tensor {
    let first = graph.tensor(outputs[0]);
    let mut shape = first.ty.shape.clone();
    *shape.last_mut().expect("linear outputs have rows") =
        outputs.iter().map(|&t| graph.tensor(t).ty.last_dim()).sum();
    let names: Vec<&str> = outputs
        .iter()
        .map(|&t| graph.tensor(t).name.as_str())
        .collect();
    Tensor {
        name: packed_name(&names),
        ty: TensorType::new(shape, first.ty.dtype),
        role: first.role,
        layer: first.layer,
        hf_name: None,
        init: None,
        parts: Vec::new(),
    }
}
