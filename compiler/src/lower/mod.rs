//! Lowering: a training graph becomes a [`Plan`].
//!
//! 1. Order: the graph's schedule (`Graph::schedule`) in one section per phase: forward
//!    and backward (run once per micro-batch), the optimizer, and where nodes run in them the
//!    eval section (the loss alone, which evaluation runs after the forward; it lies between
//!    forward and backward, so its buffers live only where the backward's first step's do)
//!    and `quantize_weights`; each is a CUDA-graph segment.
//! 2. Streams and events (`streams.rs`): copies to and from the host arena on copy streams,
//!    with the events that keep every execution equivalent to the linear order.
//! 3. Liveness (`liveness.rs`): every tensor's first and last step; state lives throughout;
//!    the source of a device → host copy until the step that waits for the copy.
//! 4. Allocation (`allocate.rs`), once per arena: state packed at the arena's start,
//!    transient buffers packed above it so that buffers live at the same time never overlap.
//! 5. Estimates (`cost.rs`, `timeline.rs`): per step time from the device profile, sections
//!    timed with their streams overlapping; device memory by category at peak.

mod allocate;
mod cost;
mod liveness;
mod streams;
mod timeline;

pub use allocate::allocate;
pub use cost::NodeEstimator;
pub use liveness::{Interval, liveness};
pub use streams::{COMPUTE, DEVICE_TO_HOST, HOST_TO_DEVICE, Release};

use crate::autodiff::TrainIo;
use crate::ir::{BufferId, Category, Graph, Node, Phase, TensorId};
use crate::plan::{
    Arena, Buffer, EVAL_SECTION, Estimates, GraphSegment, ModelInfo, Plan, PlanOptions, PlanTensor,
    QUANTIZE_WEIGHTS_SECTION, Repeat, Section, Step, StepEstimate, StreamKind, live_bytes,
};
use crate::target::DeviceProfile;
use indexmap::IndexMap;

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
    /// When device → host copies' sources are released (the memory planner's choice).
    pub release: Release,
}

/// Lowers a training graph to a plan.
pub fn lower(input: LowerInput) -> Plan {
    let graph = input.graph;
    let order: Vec<Node> = graph
        .schedule()
        .iter()
        .map(|&n| graph.node(n).clone())
        .collect();
    lower_program(input, order)
}

/// Lowers `program` (nodes in schedule order: forward, backward, optimizer) over the tensors
/// of `input.graph`, whose own nodes are not looked at, to the plan that a graph built from
/// `program` lowers to, without building it.
pub fn lower_program(input: LowerInput, program: Vec<Node>) -> Plan {
    let graph = input.graph;
    let Scheduled {
        steps,
        sections,
        events,
        mut buffers,
        categories,
    } = schedule(graph, program, &input.device, input.release);
    let sizes: Vec<u64> = buffers.iter().map(|b| b.size).collect();
    let intervals: Vec<Interval> = buffers
        .iter()
        .map(|b| Interval {
            first: b.first_step,
            last: b.last_step,
        })
        .collect();
    let mut offsets = vec![0u64; sizes.len()];
    let arena_bytes = allocate_arena(graph, &sizes, &intervals, &categories, &mut offsets, false);
    let host_arena_bytes =
        allocate_arena(graph, &sizes, &intervals, &categories, &mut offsets, true);
    for (b, offset) in buffers.iter_mut().zip(offsets) {
        b.offset = offset;
    }
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
            parts: t.parts.clone(),
        })
        .collect();

    let graph_segments = sections
        .iter()
        .map(|s| GraphSegment {
            start: s.start,
            end: s.end,
        })
        .collect();
    let estimates = estimates(&steps, &sections, &buffers, &categories, &input.options);
    let uses_host = buffers.iter().any(|b| b.arena == Arena::Host);

    Plan {
        model: input.model,
        options: input.options,
        device: input.device,
        ranks: 1,
        tensors,
        buffers,
        device_arena_bytes: arena_bytes,
        host_arena_bytes,
        steps,
        streams: if uses_host {
            streams::STREAMS.to_vec()
        } else {
            vec![StreamKind::Compute]
        },
        events,
        sections,
        graph_segments,
        collectives: Vec::new(),
        io: input.io.clone(),
        estimates,
        memory: Vec::new(),
    }
}

/// The estimates of the plan that a graph built from `program` (nodes in schedule order:
/// forward, backward, optimizer; over the tensors of `graph`, whose own nodes are not looked
/// at) lowers to, with the device arena taken to be the live-bytes peak, which the allocator
/// reaches or comes close to. For the memory planner's candidates: nothing is laid out and no
/// graph is built of each. Copies' sources are released by `release`.
pub fn estimate_program(
    graph: &Graph,
    program: Vec<Node>,
    device: &DeviceProfile,
    options: &PlanOptions,
    release: Release,
) -> Estimates {
    let s = schedule(graph, program, device, release);
    estimates(&s.steps, &s.sections, &s.buffers, &s.categories, options)
}

/// What the plan and the quick estimate are made of: the steps with their streams, events and
/// estimates, the sections, and per tensor a buffer (not laid out yet: offset 0) and the
/// category its bytes count under.
struct Scheduled {
    steps: Vec<Step>,
    sections: Vec<Section>,
    events: u32,
    buffers: Vec<Buffer>,
    categories: Vec<Category>,
}

/// Steps 1 to 3 of lowering for `order` (the schedule, partitioned by phase: `Phase::ALL`),
/// whose nodes become the steps, one section per phase.
fn schedule(
    graph: &Graph,
    order: Vec<Node>,
    device: &DeviceProfile,
    release: Release,
) -> Scheduled {
    debug_assert!(
        order.is_sorted_by_key(|n| n.phase),
        "a schedule runs the forward, the eval, the backward, then the optimizer"
    );
    let mut estimator = NodeEstimator::default();
    let mut sections = Vec::new();
    let mut start = 0u32;
    for phase in Phase::ALL {
        let len = order.iter().filter(|n| n.phase == phase).count() as u32;
        let (name, repeat) = match phase {
            Phase::Forward => ("forward", Repeat::PerMicroBatch),
            Phase::Eval => (EVAL_SECTION, Repeat::Eval),
            Phase::Backward => ("backward", Repeat::PerMicroBatch),
            Phase::Optimizer => ("optimizer", Repeat::Once),
            Phase::WeightQuant => (QUANTIZE_WEIGHTS_SECTION, Repeat::Once),
        };
        // The forward, backward and optimizer sections are always there; the others only
        // when some node runs in them.
        if len > 0 || matches!(phase, Phase::Forward | Phase::Backward | Phase::Optimizer) {
            sections.push(Section {
                name: name.into(),
                start,
                end: start + len,
                repeat,
            });
        }
        start += len;
    }
    let mut steps: Vec<Step> = order
        .into_iter()
        .map(|node| {
            let stream = streams::stream_of(graph, &node.inputs, &node.outputs);
            let estimate = step_estimate(estimator.estimate(graph, &node, device), stream, device);
            Step {
                node,
                stream,
                waits: Vec::new(),
                records: None,
                estimate,
            }
        })
        .collect();
    let (events, releases) =
        streams::place_events(&mut steps, &sections, graph.tensor_count(), release);

    let mut intervals = liveness(graph, &steps);
    for (copy, release) in releases {
        for &t in &steps[copy as usize].node.inputs {
            let i = &mut intervals[t.index()];
            i.last = i.last.max(release);
        }
    }
    // A transient tensor no step touches (a pass replaced its ops) takes no bytes.
    let mut touched = vec![false; graph.tensor_count()];
    for step in &steps {
        for t in step.node.inputs.iter().chain(&step.node.outputs) {
            touched[t.index()] = true;
        }
    }
    let buffers: Vec<Buffer> = graph
        .tensors()
        .zip(intervals)
        .map(|((id, t), live)| Buffer {
            arena: if graph.is_on_host(id) {
                Arena::Host
            } else {
                Arena::Device
            },
            offset: 0,
            size: if touched[id.index()] || t.role.is_persistent() {
                t.ty.bytes()
            } else {
                0
            },
            first_step: live.first,
            last_step: live.last,
        })
        .collect();
    let categories = graph.tensors().map(|(_, t)| t.role.category()).collect();
    Scheduled {
        steps,
        sections,
        events,
        buffers,
        categories,
    }
}

/// The estimate of one step from its node's roofline (`cost.rs`): a copy to or from the host
/// arena takes its bytes over the host link instead.
fn step_estimate(
    mut e: StepEstimate,
    stream: crate::plan::StreamId,
    device: &DeviceProfile,
) -> StepEstimate {
    if stream != COMPUTE {
        e.seconds = e.bytes / (device.host_gbps * 1e9) + crate::target::LAUNCH_SECONDS;
    }
    e
}

/// Lays out the buffers of one arena (host or device): returns its size, fills `offsets`.
fn allocate_arena(
    graph: &Graph,
    sizes: &[u64],
    intervals: &[Interval],
    categories: &[Category],
    offsets: &mut [u64],
    host: bool,
) -> u64 {
    let members: Vec<usize> = (0..sizes.len())
        .filter(|&i| graph.is_on_host(TensorId(i as u32)) == host)
        .collect();
    let persistent: Vec<bool> = members
        .iter()
        .map(|&i| graph.tensor(TensorId(i as u32)).role.is_persistent())
        .collect();
    let (local, bytes) = allocate(
        &members.iter().map(|&i| sizes[i]).collect::<Vec<_>>(),
        &members.iter().map(|&i| intervals[i]).collect::<Vec<_>>(),
        &persistent,
        &members.iter().map(|&i| categories[i]).collect::<Vec<_>>(),
    );
    for (&i, o) in members.iter().zip(local) {
        offsets[i] = o;
    }
    bytes
}

fn estimates(
    steps: &[Step],
    sections: &[Section],
    buffers: &[Buffer],
    categories: &[Category],
    options: &PlanOptions,
) -> Estimates {
    // Live device bytes per step and category; the peak is the first step with the most.
    let profile = live_bytes(
        buffers.iter().zip(categories.iter().copied()),
        Arena::Device,
        steps.len(),
    );
    let total = |s: usize| -> u64 { profile[s].iter().sum() };
    let peak_step =
        (0..profile.len()).fold(0, |best, s| if total(s) > total(best) { s } else { best });
    let peak = profile.get(peak_step).map_or(0, |_| total(peak_step));
    let memory_at_peak: IndexMap<Category, u64> = Category::ALL
        .iter()
        .enumerate()
        .map(|(c, &category)| (category, profile.get(peak_step).map_or(0, |p| p[c])))
        .collect();

    let time = |repeat| -> f64 {
        sections
            .iter()
            .filter(|s| s.repeat == repeat)
            .map(|s| timeline::section_seconds(steps, s))
            .sum()
    };
    let micro = time(Repeat::PerMicroBatch);
    let optimizer = time(Repeat::Once);
    let step_seconds = micro * options.grad_accum as f64 + optimizer;
    let tokens = (options.batch * options.seq * options.grad_accum as u64) as f64;
    // Model FLOPs: the forward's matrix work (every matmul and attention) times three. Where
    // training makes the loss in the backward, the eval section holds the forward's head.
    let forward_matrix_flops: f64 = steps
        .iter()
        .filter(|s| matches!(s.node.phase, Phase::Forward | Phase::Eval))
        .filter(|s| s.node.op.spec().uses_matrix_units())
        .map(|s| s.estimate.flops)
        .sum();
    let micro_tokens = (options.batch * options.seq) as f64;
    Estimates {
        memory_at_peak,
        peak_step: peak_step as u32,
        peak_live_bytes: peak,
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
