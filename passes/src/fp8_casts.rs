//! `Fp8Casts`: LLMQ's FP8 recipe for the linear layers inside the blocks (q/k/v, attention
//! output, gate/up, down), in the forward and in both backward matmuls.
//!
//! Every block `linear`, `linear_backward_data` and `linear_backward_weight` becomes an
//! `fp8_matmul` whose operands are quantised with a per-tensor scale from the current abs-max
//! (`abs_max`, then `quantize` or `quantize_dual`): activations and weights to e4m3,
//! gradients to the context's `grad_fp8` (e4m3 or e5m2). FP32 accumulation, results in the
//! dtype the BF16 op had. `fp8_matmul` wants both operands contiguous in the contraction
//! dimension (cuBLASLt's TN form), so:
//!
//! | matmul          | contracts over | a                       | b                        |
//! |-----------------|----------------|-------------------------|--------------------------|
//! | `y = x·Wᵀ`      | in (K)         | `x` `[rows, K]`         | `W` `[M, K]`             |
//! | `dx = dy·W`     | out (M)        | `dy` `[rows, M]`        | `Wᵀ` `[K, M]`, transposed |
//! | `dW = dyᵀ·x`    | rows           | `dyᵀ` `[M, rows]`, transposed | `xᵀ` `[K, rows]`, transposed |
//!
//! Each tensor is quantised once. Activations `x` and output gradients `dy` are read in both
//! layouts, so one `quantize_dual` writes both from one read of the BF16 values: the forward
//! keeps `xᵀ`'s FP8 copy for the weight gradient (saved, one byte per element, as `x`'s was
//! before) and drops `x`'s after its matmul. A weight's second layout is its first one's bytes
//! transposed (`transpose_fp8`, the same descale), so only the first lives across the
//! micro-batch (and across micro-batches, where weight quants persist).
//!
//! Invariants kept: each tensor's abs-max is computed once and shared by all its quantisations
//! (q/k/v share their input's, the two backward matmuls share `dy`'s); the backward's operands
//! of `x` and `W` are exactly the forward's FP8 values, and a recomputed forward reproduces them
//! bit for bit.
//! Embedding, LM head (no layer), norms, attention, softmax and loss are untouched. `abs_max`
//! is a separate node here; the fusion pass then folds it into its producer where the
//! catalogue has a variant with an abs-max output (the norms and swiglu).
//!
//! Needs: the training graph from autodiff. Runs before the memory planner, which then sees
//! the quantised operands as ordinary tensors.

use indexmap::{IndexMap, IndexSet};
use llmq_compiler::ir::{Graph, Node, NodeId, Phase, Rewrite, Role, TensorId};
use llmq_compiler::kernels::ops::{AbsMax, Fp8Matmul, Quantize, QuantizeDual, TransposeFp8};
use llmq_compiler::kernels::{DType, Op};
use llmq_compiler::pass::{Pass, PassContext, PassError};

/// Puts the block linears on FP8 matmuls with per-tensor abs-max scales.
pub struct Fp8Casts;

const NAME: &str = "fp8_casts";

/// The FP8 format of activations and weights.
const OPERAND_FP8: DType = DType::F8E4M3;

impl Pass for Fp8Casts {
    fn name(&self) -> &'static str {
        NAME
    }
    fn run(&self, graph: &mut Graph, ctx: &PassContext) -> Result<(), PassError> {
        let targets: Vec<NodeId> = graph
            .topological_order()
            .into_iter()
            .filter(|&id| is_block_linear(graph.node(id)))
            .collect();
        let dual = read_in_both_layouts(graph, &targets, ctx.grad_fp8);
        let made = graph.rewrite(|rw| {
            let mut q = Quantizer {
                rw,
                dual,
                amax: IndexMap::new(),
                quantized: IndexMap::new(),
            };
            for id in targets {
                q.lower(id, ctx.grad_fp8)?;
            }
            let copies = q.quantized.into_values().flat_map(|(q, d)| [q, d]);
            Ok::<_, PassError>(q.amax.into_values().chain(copies).collect::<Vec<_>>())
        })?;
        mark_saved(graph, made.into_iter());
        Ok(())
    }
}

/// A block linear or one of its backward matmuls.
fn is_block_linear(node: &Node) -> bool {
    node.layer.is_some()
        && matches!(
            node.op,
            Op::Linear(_) | Op::LinearBackwardData(_) | Op::LinearBackwardWeight(_)
        )
}

/// Forward abs-maxes and FP8 copies read by the backward pass are saved for it.
fn mark_saved(graph: &mut Graph, amaxes: impl Iterator<Item = TensorId>) {
    let read_in_backward: Vec<bool> = {
        let mut read = vec![false; graph.tensor_count()];
        for (_, node) in graph.nodes().filter(|(_, n)| n.phase == Phase::Backward) {
            for t in &node.inputs {
                read[t.index()] = true;
            }
        }
        read
    };
    for t in amaxes {
        let tensor = graph.tensor_mut(t);
        if tensor.role == Role::Activation && read_in_backward[t.index()] {
            tensor.role = Role::Saved;
        }
    }
}

/// The operands of a block matmul's FP8 form: each source tensor, the format it is quantised
/// to, and whether the matmul reads it transposed.
fn operands(node: &Node, grad_fp8: DType) -> [(TensorId, DType, bool); 2] {
    let (x, y) = (node.inputs[0], node.inputs[1]);
    match node.op {
        // y = x · Wᵀ
        Op::Linear(_) => [(x, OPERAND_FP8, false), (y, OPERAND_FP8, false)],
        // dx = dy · W: contracts over W's rows, so b = Wᵀ.
        Op::LinearBackwardData(_) => [(x, grad_fp8, false), (y, OPERAND_FP8, true)],
        // dW = dyᵀ · x: contracts over the rows of both.
        Op::LinearBackwardWeight(_) => [(x, grad_fp8, true), (y, OPERAND_FP8, true)],
        _ => unreachable!("only block matmuls are lowered"),
    }
}

/// The tensors, other than weights, that the matmuls of `targets` read in both layouts: they
/// are quantised into both at once (`quantize_dual`). A weight's second layout stays its first
/// one's bytes transposed when needed, so that only its first (made once per optimizer step
/// where the plan persists weight quants) lives across the micro-batch.
fn read_in_both_layouts(graph: &Graph, targets: &[NodeId], grad_fp8: DType) -> IndexSet<TensorId> {
    let mut layouts: IndexMap<TensorId, [bool; 2]> = IndexMap::new();
    for &id in targets {
        for (t, _, transposed) in operands(graph.node(id), grad_fp8) {
            layouts.entry(t).or_default()[usize::from(transposed)] = true;
        }
    }
    layouts
        .into_iter()
        .filter(|&(t, both)| both == [true, true] && graph.tensor(t).role != Role::Weight)
        .map(|(t, _)| t)
        .collect()
}

/// The rewrite in progress: abs-maxes and quantised copies made so far, so each is made once.
struct Quantizer<'r, 'g> {
    rw: &'r mut Rewrite<'g>,
    /// Tensors to quantise into both layouts at once.
    dual: IndexSet<TensorId>,
    /// Per source tensor, its abs-max.
    amax: IndexMap<TensorId, TensorId>,
    /// Per (source tensor, transposed), its quantised values and descale.
    quantized: IndexMap<(TensorId, bool), (TensorId, TensorId)>,
}

impl Quantizer<'_, '_> {
    /// Replaces one block matmul by its FP8 form, quantising its operands before it.
    fn lower(&mut self, id: NodeId, grad_fp8: DType) -> Result<(), PassError> {
        let node = self.rw.graph().node(id).clone();
        let [(x, x_to, x_t), (y, y_to, y_t)] = operands(&node, grad_fp8);
        let (a, b) = (
            self.quantize(id, x, x_to, x_t)?,
            self.quantize(id, y, y_to, y_t)?,
        );
        let out = self.rw.graph().tensor(node.outputs[0]).ty.dtype;
        self.rw.replace(
            id,
            Node {
                op: Fp8Matmul { out }.into(),
                inputs: vec![a.0, a.1, b.0, b.1],
                ..node
            },
        );
        Ok(())
    }

    /// The quantised copy of `t` (made before `anchor` if it does not exist yet).
    fn quantize(
        &mut self,
        anchor: NodeId,
        t: TensorId,
        to: DType,
        transposed: bool,
    ) -> Result<(TensorId, TensorId), PassError> {
        if let Some(&q) = self.quantized.get(&(t, transposed)) {
            return Ok(q);
        }
        // The other layout exists: its bytes transposed are this one's (same scale).
        if let Some(&(other, descale)) = self.quantized.get(&(t, !transposed)) {
            let name = format!(
                "{}.{}",
                self.rw.graph().tensor(t).name,
                if transposed { "qT" } else { "q" }
            );
            let out = self.make(anchor, TransposeFp8.into(), &[other], &[name])?[0];
            self.quantized.insert((t, transposed), (out, descale));
            return Ok((out, descale));
        }
        let amax = self.amax(anchor, t)?;
        let name = self.rw.graph().tensor(t).name.clone();
        if self.dual.contains(&t) {
            let names = [
                format!("{name}.q"),
                format!("{name}.qT"),
                format!("{name}.descale"),
            ];
            let out = self.make(anchor, QuantizeDual { to }.into(), &[t, amax], &names)?;
            self.quantized.insert((t, false), (out[0], out[2]));
            self.quantized.insert((t, true), (out[1], out[2]));
            return Ok(self.quantized[&(t, transposed)]);
        }
        if transposed {
            // Read in one layout only so far: its row-major copy, then those bytes transposed.
            self.quantize(anchor, t, to, false)?;
            return self.quantize(anchor, t, to, true);
        }
        let names = [format!("{name}.q"), format!("{name}.descale")];
        let out = self.make(anchor, Quantize { to }.into(), &[t, amax], &names)?;
        self.quantized.insert((t, transposed), (out[0], out[1]));
        Ok((out[0], out[1]))
    }

    /// The abs-max of `t` (computed before `anchor` if it does not exist yet).
    fn amax(&mut self, anchor: NodeId, t: TensorId) -> Result<TensorId, PassError> {
        if let Some(&a) = self.amax.get(&t) {
            return Ok(a);
        }
        let name = format!("{}.amax", self.rw.graph().tensor(t).name);
        let amax = self.make(anchor, AbsMax.into(), &[t], &[name])?[0];
        self.amax.insert(t, amax);
        Ok(amax)
    }

    /// `op` applied to `inputs` right before `anchor`, its outputs named `names`, in the role
    /// of a temporary of `anchor`'s phase.
    fn make(
        &mut self,
        anchor: NodeId,
        op: Op,
        inputs: &[TensorId],
        names: &[String],
    ) -> Result<Vec<TensorId>, PassError> {
        let role = temporary_role(self.rw.graph(), anchor);
        let what = op.name();
        self.rw
            .apply_before(anchor, op, inputs, names, role)
            .map_err(|e| failed(format!("{what} making `{}`: {e}", names[0])))
    }
}

/// The role of a tensor made for the node `anchor`: a forward activation or a backward
/// temporary.
fn temporary_role(graph: &Graph, anchor: NodeId) -> Role {
    match graph.node(anchor).phase {
        Phase::Forward => Role::Activation,
        _ => Role::Workspace,
    }
}

fn failed(message: String) -> PassError {
    PassError::Failed {
        pass: NAME,
        message,
    }
}
