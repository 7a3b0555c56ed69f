//! The cost model of one step: the larger of its matrix or arithmetic time and its memory
//! time (a roofline), plus a fixed launch cost.

use crate::plan::StepEstimate;
use crate::target::{DeviceProfile, LAUNCH_SECONDS, MATRIX_EFFICIENCY, MEMORY_EFFICIENCY};
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
        tflops * 1e12 * MATRIX_EFFICIENCY
    } else {
        device.fp32_tflops * 1e12
    };
    let compute = cost.flops / flops_per_second;
    let memory = cost.bytes / (device.memory_gbps * 1e9 * MEMORY_EFFICIENCY);
    StepEstimate {
        flops: cost.flops,
        bytes: cost.bytes,
        seconds: compute.max(memory) + LAUNCH_SECONDS,
    }
}
