//! Program editing shared by the memory passes (recompute, activation offload, state
//! streaming): insertions before and after nodes of a program, fresh tensors, copy nodes, and
//! where to put a prefetch so that its transfer hides behind compute.

use llmq_compiler::ir::{Graph, Node, Phase, Role, Tensor, TensorId};
use llmq_compiler::kernels::Op;
use llmq_compiler::kernels::ops::Copy;
use llmq_compiler::lower::NodeEstimator;
use llmq_compiler::pass::PassError;
use llmq_compiler::target::DeviceProfile;

/// Runs a memory pass's `edit` on `graph`: its program (the nodes in schedule order) is
/// edited, new tensors go to the graph, and the edit is made through [`Graph::rewrite`]. The
/// memory planner chains the edits of a candidate on one program instead
/// ([`edit_program`]) and lowers that program without building a graph of it.
pub fn edit_graph(
    graph: &mut Graph,
    edit: impl FnOnce(&mut Graph, &mut ProgramEdit) -> Result<(), PassError>,
) -> Result<(), PassError> {
    let ids = graph.schedule();
    let mut program = ProgramEdit::new(ids.iter().map(|&n| graph.node(n).clone()).collect());
    edit(graph, &mut program)?;
    graph.rewrite(|rw| {
        for (id, (before, node, after)) in ids.into_iter().zip(program.into_parts()) {
            for n in before {
                rw.insert_before(id, n);
            }
            match node {
                Some(node) => rw.replace(id, node),
                None => rw.remove(id),
            }
            for n in after {
                rw.insert_after(id, n);
            }
        }
    });
    Ok(())
}

/// Runs a memory pass's `edit` on `program` (nodes in schedule order) and returns the edited
/// program.
pub fn edit_program(
    program: Vec<Node>,
    edit: impl FnOnce(&mut ProgramEdit) -> Result<(), PassError>,
) -> Result<Vec<Node>, PassError> {
    let mut program = ProgramEdit::new(program);
    edit(&mut program)?;
    Ok(program
        .into_parts()
        .flat_map(|(before, node, after)| before.into_iter().chain(node).chain(after))
        .collect())
}

/// A program (nodes in schedule order) with nodes to insert before or after each node.
pub struct ProgramEdit {
    /// The program being edited; insertions and removals are made when the edit ends.
    pub program: Vec<Node>,
    before: Vec<Vec<Node>>,
    after: Vec<Vec<Node>>,
    removed: Vec<bool>,
}

impl ProgramEdit {
    /// Starts editing `program`.
    pub fn new(program: Vec<Node>) -> Self {
        let n = program.len();
        ProgramEdit {
            program,
            before: vec![Vec::new(); n],
            after: vec![Vec::new(); n],
            removed: vec![false; n],
        }
    }

    /// Drops nodes `indices` (what was inserted around them stays).
    pub fn remove(&mut self, indices: &[usize]) {
        for &i in indices {
            self.removed[i] = true;
        }
    }

    /// Inserts `node` before node `i` (after nodes already inserted there).
    pub fn insert_before(&mut self, i: usize, node: Node) {
        self.before[i].push(node);
    }

    /// Inserts `node` after node `i` (after nodes already inserted there).
    pub fn insert_after(&mut self, i: usize, node: Node) {
        self.after[i].push(node);
    }

    /// Per node of the program: what goes before it, the node (`None` when removed), what
    /// goes after it.
    fn into_parts(self) -> impl Iterator<Item = (Vec<Node>, Option<Node>, Vec<Node>)> {
        let nodes = self.program.into_iter().zip(self.removed);
        nodes
            .zip(self.before)
            .zip(self.after)
            .map(|(((node, removed), before), after)| (before, (!removed).then_some(node), after))
    }
}

/// The nodes of `graph` in schedule order: the program the memory passes edit.
pub fn program(graph: &Graph) -> Vec<Node> {
    graph
        .schedule()
        .into_iter()
        .map(|n| graph.node(n).clone())
        .collect()
}

/// A new tensor of `like`'s type and block, named `{prefix}.{name}`.
pub fn tensor_like(graph: &mut Graph, like: TensorId, prefix: &str, role: Role) -> TensorId {
    let t = graph.tensor(like);
    let tensor = Tensor {
        name: format!("{prefix}.{}", t.name),
        ty: t.ty.clone(),
        role,
        layer: t.layer,
        hf_name: None,
        init: None,
        parts: Vec::new(),
    };
    graph.add_tensor(tensor)
}

/// `to = copy(from)`.
pub fn copy_node(from: TensorId, to: TensorId, phase: Phase, layer: Option<u32>) -> Node {
    Node {
        op: Copy.into(),
        inputs: vec![from],
        outputs: vec![to],
        accumulate: vec![false],
        phase,
        layer,
    }
}

/// Estimated seconds of each node of `program` on `device`.
pub fn node_seconds(graph: &Graph, program: &[Node], device: &DeviceProfile) -> Vec<f64> {
    let mut estimator = NodeEstimator::default();
    program
        .iter()
        .map(|n| estimator.estimate(graph, n, device).seconds)
        .collect()
}

/// Seconds to move `bytes` over the host link.
pub fn transfer_seconds(bytes: u64, device: &DeviceProfile) -> f64 {
    bytes as f64 / (device.host_gbps * 1e9)
}

/// Per node, its unit of double buffering: its block in forward and backward; in the
/// optimizer each parameter's update and each gradient's norm term (a block's optimizer state
/// is several times its weights, too much to hold two blocks of).
pub fn buffering_units(program: &[Node]) -> Vec<u64> {
    let mut param = 0u64;
    program
        .iter()
        .map(|n| match n.phase {
            Phase::Optimizer => {
                if matches!(n.op, Op::AdamW(_) | Op::SumSquares(_)) {
                    param += 1;
                }
                param
            }
            _ => n.layer.map_or(0, |l| l as u64 + 1),
        })
        .collect()
}

/// Where to insert a prefetch for node `consumer`: walking back from it, as soon as the compute
/// passed over hides `transfer` seconds, but never into another phase, before a node for
/// which `barrier` holds (one that writes what the prefetch reads), or further back than the
/// previous unit (`buffering_units`: at most two units' prefetches are in flight).
pub fn prefetch_position(
    program: &[Node],
    units: &[u64],
    seconds: &[f64],
    consumer: usize,
    transfer: f64,
    barrier: impl Fn(&Node) -> bool,
) -> usize {
    let phase = program[consumer].phase;
    let mut unit = units[consumer];
    let mut units_crossed = 0;
    let mut hidden = 0.0;
    let mut position = consumer;
    while position > 0 && hidden < transfer {
        let prev = &program[position - 1];
        if prev.phase != phase || barrier(prev) {
            break;
        }
        if units[position - 1] != unit {
            units_crossed += 1;
            if units_crossed > 1 {
                break;
            }
            unit = units[position - 1];
        }
        hidden += seconds[position - 1];
        position -= 1;
    }
    position
}
