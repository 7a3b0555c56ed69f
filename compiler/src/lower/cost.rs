//! The cost model of one step: the larger of its matrix or arithmetic time (or its longest
//! thread block's, for uneven kernels) and its memory time (a roofline), plus the memory time
//! of a phase that runs in turn with the rest (a fused op's kernel between its matmuls), plus a
//! fixed launch cost and one per library matmul.

use crate::ir::{Graph, Node, TensorId};
use crate::plan::StepEstimate;
use crate::target::{
    DeviceProfile, LAUNCH_SECONDS, MATMUL_CALL_SECONDS, MATRIX_EFFICIENCY, MEMORY_EFFICIENCY,
};
use llmq_kernels::{DType, Op, TensorType};

/// The estimate for `op` on operands of these types.
pub fn estimate(
    op: &Op,
    inputs: &[TensorType],
    outputs: &[TensorType],
    device: &DeviceProfile,
) -> StepEstimate {
    let cost = op.cost(inputs, outputs);
    let flops_per_second = if cost.matrix_units {
        let tflops = match inputs.first().map(|t| t.dtype) {
            Some(DType::F8E4M3 | DType::F8E5M2) => device.fp8_tflops,
            Some(DType::F32) => device.fp32_tflops,
            _ => device.bf16_tflops,
        };
        tflops * 1e12 * MATRIX_EFFICIENCY * cost.matrix_rate
    } else {
        device.fp32_tflops * 1e12
    };
    // However many SMs run the rest, the op takes at least its longest block, which gets a
    // 1/blocks_per_sm share of one SM.
    let longest_block = cost.longest_block.map_or(0.0, |b| {
        cost.flops * b.share * device.sms as f64 * b.blocks_per_sm / flops_per_second
    });
    let compute = (cost.flops / flops_per_second).max(longest_block);
    let bytes_per_second = device.memory_gbps * 1e9 * MEMORY_EFFICIENCY;
    let memory = cost.bytes / bytes_per_second;
    let serial = cost.serial_bytes / bytes_per_second;
    // A matmul's fill and drain take at most as long as its FLOPs (small ones have little of
    // either).
    let per_call = if cost.library_matmuls > 0.0 {
        MATMUL_CALL_SECONDS.min(compute / cost.library_matmuls)
    } else {
        0.0
    };
    StepEstimate {
        flops: cost.flops,
        bytes: cost.bytes + cost.serial_bytes,
        seconds: compute.max(memory) + serial + LAUNCH_SECONDS + cost.library_matmuls * per_call,
    }
}

/// Estimates the nodes of a graph one after another, reusing its lists of operand types: the
/// memory planner estimates tens of thousands of nodes per candidate, and cloning each
/// operand's type for each would dominate.
#[derive(Default)]
pub struct NodeEstimator {
    inputs: Vec<TensorType>,
    outputs: Vec<TensorType>,
}

impl NodeEstimator {
    /// The estimate for `node` on the tensors of `graph`.
    pub fn estimate(&mut self, graph: &Graph, node: &Node, device: &DeviceProfile) -> StepEstimate {
        types_into(graph, &node.inputs, &mut self.inputs);
        types_into(graph, &node.outputs, &mut self.outputs);
        estimate(&node.op, &self.inputs, &self.outputs, device)
    }
}

/// Sets `types` to the types of `ids`, reusing the shapes' storage.
fn types_into(graph: &Graph, ids: &[TensorId], types: &mut Vec<TensorType>) {
    types.truncate(ids.len());
    for (slot, &t) in types.iter_mut().zip(ids) {
        let ty = &graph.tensor(t).ty;
        slot.shape.clone_from(&ty.shape);
        slot.dtype = ty.dtype;
    }
    let filled = types.len();
    types.extend(ids[filled..].iter().map(|&t| graph.tensor(t).ty.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::device;
    use llmq_kernels::ops::{AttentionBackward, ClassifierCrossEntropy, Linear};

    /// Seconds per sequence of Qwen2.5-7B's attention backward at this batch and sequence on
    /// the H100, less the launch.
    fn attention_backward_per_sequence(batch: u64, seq: u64) -> f64 {
        let h100 = device("h100").unwrap();
        let op: Op = AttentionBackward {
            heads: 28,
            kv_heads: 4,
            head_dim: 128,
        }
        .into();
        let q = TensorType::new([batch, seq, 28 * 128], DType::BF16);
        let kv = TensorType::new([batch, seq, 4 * 128], DType::BF16);
        let lse = TensorType::new([batch, 28, seq], DType::F32);
        let inputs = [q.clone(), kv.clone(), kv, q.clone(), lse, q];
        let outputs = op.infer(&inputs).unwrap();
        (estimate(&op, &inputs, &outputs, &h100).seconds - LAUNCH_SECONDS) / batch as f64
    }

    /// An uneven kernel takes at least its longest block: the own attention backward's first
    /// dK/dV block (sequences that are no multiple of 128 run the own kernels, not cuDNN's),
    /// split one way per query head of its group, still walks every later query tile. With
    /// one sequence of 320 it does 4·5 of the 7·28·5·6/2 tile products on half an SM of 132:
    /// 1.80 times the even share, which binds at batch 8.
    #[test]
    fn an_uneven_kernel_takes_at_least_its_longest_block() {
        let ratio =
            attention_backward_per_sequence(1, 320) / attention_backward_per_sequence(8, 320);
        assert!(
            (1.75..1.85).contains(&ratio),
            "batch 1 over batch 8 per sequence: {ratio}"
        );
    }

    /// Split over the heads of the group, the own attention backward's walks at Qwen2.5-7B's
    /// heads cost per sequence at batch 2 what they cost at batch 8 (measured unsplit on the
    /// H200 at sequence 1024: 2.2 times as much).
    #[test]
    fn a_split_walk_costs_a_small_batch_no_more_per_sequence() {
        let ratio =
            attention_backward_per_sequence(2, 960) / attention_backward_per_sequence(8, 960);
        assert!(
            (ratio - 1.0).abs() < 0.01,
            "batch 2 over batch 8 per sequence: {ratio}"
        );
    }

    /// A library matmul pays `MATMUL_CALL_SECONDS` beyond its FLOPs, but never more than its
    /// FLOP time: a large one the whole fixed cost, a tiny one less than its roofline again.
    #[test]
    fn a_matmul_pays_a_fixed_cost_per_call_capped_by_its_flops() {
        let h100 = device("h100").unwrap();
        let linear = |rows: u64, cols: u64, inner: u64| {
            let op: Op = Linear.into();
            let inputs = [
                TensorType::new([rows, inner], DType::BF16),
                TensorType::new([cols, inner], DType::BF16),
            ];
            let outputs = op.infer(&inputs).unwrap();
            let flop_seconds =
                2.0 * (rows * cols * inner) as f64 / (h100.bf16_tflops * 1e12 * MATRIX_EFFICIENCY);
            (
                estimate(&op, &inputs, &outputs, &h100).seconds,
                flop_seconds,
            )
        };
        let (large, flops) = linear(8192, 3584, 3584);
        let expected = flops + LAUNCH_SECONDS + MATMUL_CALL_SECONDS;
        assert!(
            (large - expected).abs() < 1e-3 * expected,
            "{large:e} s against {expected:e} s"
        );
        let (tiny, flops) = linear(16, 64, 64);
        assert!(flops < MATMUL_CALL_SECONDS);
        assert!(
            tiny < LAUNCH_SECONDS + 1e-6,
            "{tiny:e} s for {flops:e} s of FLOPs"
        );
    }

    /// The fused LM head runs its loss kernel after each chunk's matmul, not beside it: its
    /// estimate is the matmul time plus the kernel's memory time, not the larger of the two.
    #[test]
    fn a_fused_heads_loss_kernel_adds_to_its_matmul_time() {
        let h100 = device("h100").unwrap();
        let (rows, vocab, hidden) = (4096u64, 151_936u64, 896u64);
        let op: Op = ClassifierCrossEntropy {
            chunk_rows: 1024,
            logits: DType::BF16,
        }
        .into();
        let inputs = [
            TensorType::new([rows, hidden], DType::BF16),
            TensorType::new([vocab, hidden], DType::BF16),
            TensorType::new([rows], DType::I32),
        ];
        let outputs = op.infer(&inputs).unwrap();
        let matmul =
            2.0 * (rows * vocab * hidden) as f64 / (h100.bf16_tflops * 1e12 * MATRIX_EFFICIENCY);
        let loss_kernel = (rows * vocab * 2) as f64 / (h100.memory_gbps * 1e9 * MEMORY_EFFICIENCY);
        let seconds = estimate(&op, &inputs, &outputs, &h100).seconds;
        assert!(
            loss_kernel > 0.2 * matmul,
            "the kernel's share is not negligible here"
        );
        let calls = 4.0 * MATMUL_CALL_SECONDS; // one logits matmul per chunk of 1024 rows
        let expected = matmul + loss_kernel + LAUNCH_SECONDS + calls;
        assert!(
            (seconds - expected).abs() < 0.01 * expected,
            "estimate {seconds:e} s, matmul {matmul:e} s + loss kernel {loss_kernel:e} s"
        );
    }
}
