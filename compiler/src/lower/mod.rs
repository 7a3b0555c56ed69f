//! Lowering: a training graph becomes a [`Plan`].
//!
//! 1. Order: the graph's topological order, partitioned by phase into three sections: forward
//!    and backward (run once per micro-batch; eval runs the forward alone) and the optimizer;
//!    each is a CUDA-graph segment.
//! 2. Liveness (`liveness.rs`): every tensor's first and last step; state lives throughout.
//! 3. Allocation (`allocate.rs`): state packed at the arena's start, transient buffers packed
//!    above it so that buffers live at the same time never overlap.
//! 4. Estimates (`cost.rs`): per step time from the device profile; memory by category at peak.

mod allocate;
mod cost;
mod liveness;

pub use allocate::allocate;
pub use liveness::{Interval, liveness};

use crate::autodiff::TrainIo;
use crate::ir::{BufferId, Category, Graph, NodeId, Phase};
use crate::plan::{
    Arena, Buffer, Estimates, GraphSegment, ModelInfo, Plan, PlanOptions, PlanTensor, Repeat,
    Section, Step, StreamKind,
};
use crate::target::DeviceProfile;
use indexmap::IndexMap;
use llmq_kernels::TensorType;

/// What lowering needs besides the graph.
pub struct LowerInput<'a> {
    /// The training graph (after the passes).
    pub graph: &'a Graph,
    /// Its trainer-facing tensors.
    pub io: &'a TrainIo,
    /// The model's identity.
    pub model: ModelInfo,
    /// The flags.
    pub options: PlanOptions,
    /// The device profile for the estimates.
    pub device: DeviceProfile,
}

/// Lowers a training graph to a plan.
pub fn lower(input: LowerInput) -> Plan {
    let graph = input.graph;
    let order = schedule_order(graph);
    let count = |phase| {
        order
            .iter()
            .filter(|&&n| graph.node(n).phase == phase)
            .count() as u32
    };
    let forward_len = count(Phase::Forward);
    let micro_len = forward_len + count(Phase::Backward);
    let steps: Vec<Step> = order
        .iter()
        .map(|&id| {
            let node = graph.node(id);
            let ins: Vec<TensorType> = node
                .inputs
                .iter()
                .map(|&t| graph.tensor(t).ty.clone())
                .collect();
            let outs: Vec<TensorType> = node
                .outputs
                .iter()
                .map(|&t| graph.tensor(t).ty.clone())
                .collect();
            Step {
                op: node.op.clone(),
                inputs: node.inputs.clone(),
                outputs: node.outputs.clone(),
                accumulate: node.accumulate.clone(),
                phase: node.phase,
                layer: node.layer,
                stream: 0,
                waits: Vec::new(),
                records: None,
                estimate: cost::estimate(&node.op, &ins, &outs, &input.device),
            }
        })
        .collect();

    let intervals = liveness(graph, &steps);
    let sizes: Vec<u64> = graph.tensors().map(|(_, t)| t.ty.bytes()).collect();
    let persistent: Vec<bool> = graph
        .tensors()
        .map(|(_, t)| t.role.is_persistent())
        .collect();
    let categories: Vec<Category> = graph.tensors().map(|(_, t)| t.role.category()).collect();
    let (offsets, arena_bytes) = allocate(&sizes, &intervals, &persistent, &categories);

    let buffers: Vec<Buffer> = (0..sizes.len())
        .map(|i| Buffer {
            arena: Arena::Device,
            offset: offsets[i],
            size: sizes[i],
            first_step: intervals[i].first,
            last_step: intervals[i].last,
        })
        .collect();
    let tensors: Vec<PlanTensor> = graph
        .tensors()
        .map(|(id, t)| PlanTensor {
            name: t.name.clone(),
            ty: t.ty.clone(),
            role: t.role,
            layer: t.layer,
            buffer: BufferId(id.0),
            hf_name: t.hf_name.clone(),
            init: t.init.clone(),
        })
        .collect();

    let n = steps.len() as u32;
    let sections = vec![
        Section {
            name: "forward".into(),
            start: 0,
            end: forward_len,
            repeat: Repeat::PerMicroBatch,
        },
        Section {
            name: "backward".into(),
            start: forward_len,
            end: micro_len,
            repeat: Repeat::PerMicroBatch,
        },
        Section {
            name: "optimizer".into(),
            start: micro_len,
            end: n,
            repeat: Repeat::Once,
        },
    ];
    let graph_segments = sections
        .iter()
        .map(|s| GraphSegment {
            start: s.start,
            end: s.end,
        })
        .collect();
    let estimates = estimates(
        &steps,
        &buffers,
        &categories,
        &input.options,
        micro_len,
        input.model.param_count,
    );

    Plan {
        model: input.model,
        options: input.options,
        device: input.device,
        ranks: 1,
        tensors,
        buffers,
        device_arena_bytes: arena_bytes,
        host_arena_bytes: 0,
        steps,
        streams: vec![StreamKind::Compute],
        events: 0,
        sections,
        graph_segments,
        collectives: Vec::new(),
        io: input.io.clone(),
        estimates,
    }
}

/// The topological order, stably partitioned by phase: forward, backward, optimizer. Valid
/// because no phase reads what a later phase writes within the same step.
fn schedule_order(graph: &Graph) -> Vec<NodeId> {
    let order = graph.topological_order();
    [Phase::Forward, Phase::Backward, Phase::Optimizer]
        .into_iter()
        .flat_map(|phase| {
            order
                .iter()
                .copied()
                .filter(move |&n| graph.node(n).phase == phase)
        })
        .collect()
}

fn estimates(
    steps: &[Step],
    buffers: &[Buffer],
    categories: &[Category],
    options: &PlanOptions,
    micro_len: u32,
    _param_count: u64,
) -> Estimates {
    // Live bytes per step, by a sweep over buffer intervals.
    let n = steps.len().max(1);
    let mut delta = vec![0i64; n + 1];
    for b in buffers {
        delta[b.first_step as usize] += b.size as i64;
        delta[b.last_step as usize + 1] -= b.size as i64;
    }
    let (mut live, mut peak, mut peak_step) = (0i64, 0i64, 0usize);
    for (s, d) in delta.iter().take(n).enumerate() {
        live += d;
        if live > peak {
            (peak, peak_step) = (live, s);
        }
    }
    let mut memory_at_peak: IndexMap<Category, u64> =
        Category::ALL.iter().map(|&c| (c, 0)).collect();
    for (b, &c) in buffers.iter().zip(categories) {
        if (b.first_step as usize..=b.last_step as usize).contains(&peak_step) {
            memory_at_peak[&c] += b.size;
        }
    }

    let micro: f64 = steps[..micro_len as usize]
        .iter()
        .map(|s| s.estimate.seconds)
        .sum();
    let optimizer: f64 = steps[micro_len as usize..]
        .iter()
        .map(|s| s.estimate.seconds)
        .sum();
    let step_seconds = micro * options.grad_accum as f64 + optimizer;
    let tokens = (options.batch * options.seq * options.grad_accum as u64) as f64;
    // Model FLOPs: the forward's matrix work (every matmul and attention) times three.
    let forward_matrix_flops: f64 = steps
        .iter()
        .filter(|s| s.phase == Phase::Forward && s.op.spec().uses_matrix_units())
        .map(|s| s.estimate.flops)
        .sum();
    let micro_tokens = (options.batch * options.seq) as f64;
    Estimates {
        memory_at_peak,
        peak_step: peak_step as u32,
        peak_live_bytes: peak as u64,
        micro_batch_seconds: micro,
        optimizer_seconds: optimizer,
        step_seconds,
        tokens_per_second: if step_seconds > 0.0 {
            tokens / step_seconds
        } else {
            0.0
        },
        model_flops_per_token: 3.0 * forward_matrix_flops / micro_tokens,
    }
}
