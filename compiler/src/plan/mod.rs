//! The plan: the contract between the compiler and the runtime.
//!
//! Everything the runtime does is in it: the tensors and the buffer each lives in (a fixed
//! offset in one device arena or one pinned host arena), the steps in order with their stream,
//! the sections (the micro-batch part runs `grad_accum` times, the optimizer part once), the
//! CUDA-graph segments, and the compiler's estimates of memory and time, to be compared with
//! what the runtime measures. `format` reads and writes `plan.bin`; `show` and `diff` print it.

mod diff;
mod format;
mod report;
mod show;

pub use diff::diff_plans;
pub use format::{FORMAT_VERSION, FormatError, MAGIC};
pub use report::{live_bytes, memory_profile, report_html, step_times};
pub use show::{ShowOptions, fits, group_digits, show_plan, state_summary, summary};

use crate::autodiff::{OptimizerOptions, TrainIo};
use crate::ir::{BufferId, Category, Init, Node, Part, Role, TensorId};
use crate::target::{DeviceProfile, Precision};
use indexmap::IndexMap;
use llmq_kernels::TensorType;
use serde::{Deserialize, Serialize};

/// Where a buffer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arena {
    /// The one device allocation.
    Device,
    /// The one pinned host allocation (offloaded tensors).
    Host,
}

/// A byte range of an arena.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Buffer {
    /// Which arena.
    pub arena: Arena,
    /// Offset from the arena's start, a multiple of [`ALIGNMENT`].
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// First step that touches it (inclusive).
    pub first_step: u32,
    /// Last step that touches it (inclusive).
    pub last_step: u32,
}

/// Alignment of every buffer: enough for 16-byte vector loads and cuBLASLt's 256-byte rule.
pub const ALIGNMENT: u64 = 256;

/// A tensor of the plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanTensor {
    /// Readable unique name.
    pub name: String,
    /// Shape and dtype.
    pub ty: TensorType,
    /// Role in training.
    pub role: Role,
    /// The block it belongs to.
    pub layer: Option<u32>,
    /// Where its bytes live.
    pub buffer: BufferId,
    /// For weights: the Hugging Face name, for checkpoint import and export.
    pub hf_name: Option<String>,
    /// For weights: the initialisation rule.
    pub init: Option<Init>,
    /// For packed parameters and their state: the parts, by rows (see [`Part`]).
    pub parts: Vec<Part>,
}

impl PlanTensor {
    /// The pieces it is saved, loaded and initialised as: its parts when it is packed, else
    /// itself whole (all its outer rows) under its name and Hugging Face name. The one place
    /// that turns a tensor into the names of files: checkpoint export and import,
    /// `--dump-step`, initialisation and weight loading go through it.
    pub fn pieces(&self) -> Vec<Part> {
        if !self.parts.is_empty() {
            return self.parts.clone();
        }
        vec![Part {
            name: self.name.clone(),
            hf_name: self.hf_name.clone(),
            start: 0,
            end: self.ty.shape.first().copied().unwrap_or(1),
        }]
    }
}

/// Index of a stream in [`Plan::streams`].
pub type StreamId = u32;

/// What a stream is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    /// Kernels and matmuls.
    Compute,
    /// Prefetches from the host arena.
    HostToDevice,
    /// Offloads to the host arena.
    DeviceToHost,
    /// Collectives between GPUs.
    Collective,
}

/// One op of the schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The graph's node it runs: op, operands, results, phase, block.
    pub node: Node,
    /// The stream it runs on.
    pub stream: StreamId,
    /// Events to wait for before it starts.
    pub waits: Vec<u32>,
    /// Event to record after it, if any.
    pub records: Option<u32>,
    /// The cost model's estimate.
    pub estimate: StepEstimate,
}

/// The cost model's view of one step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepEstimate {
    /// Floating-point operations.
    pub flops: f64,
    /// Bytes moved through device memory.
    pub bytes: f64,
    /// Estimated seconds.
    pub seconds: f64,
}

/// How often a section runs per optimizer step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Repeat {
    /// Once per micro-batch (`grad_accum` times).
    PerMicroBatch,
    /// Once per optimizer step.
    Once,
    /// Only when the trainer evaluates, after the forward: no part of a training step.
    Eval,
}

/// The section that makes the weights' FP8 copies, when the plan keeps them across
/// micro-batches: run after every optimizer step and once after the weights are set or
/// restored, before the first forward.
pub const QUANTIZE_WEIGHTS_SECTION: &str = "quantize_weights";

/// The section of the loss alone, which the trainer runs after the forward to evaluate (training
/// makes the loss in the backward); absent when the forward makes it.
pub const EVAL_SECTION: &str = "eval";

/// A contiguous range of steps run as a unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Section {
    /// `forward`, [`EVAL_SECTION`], `backward`, `optimizer`, or [`QUANTIZE_WEIGHTS_SECTION`].
    pub name: String,
    /// First step.
    pub start: u32,
    /// One past the last step.
    pub end: u32,
    /// How often it runs.
    pub repeat: Repeat,
}

/// A range of steps with no host synchronisation inside, captured as one CUDA graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphSegment {
    /// First step.
    pub start: u32,
    /// One past the last step.
    pub end: u32,
}

/// A collective operation between ranks (none until multi-GPU plans land).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Collective {
    /// The step it follows.
    pub after_step: u32,
    /// What it does (`all_reduce`, `reduce_scatter`, `all_gather`).
    pub kind: String,
    /// The tensor it moves.
    pub tensor: TensorId,
}

/// The flags a plan was made with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanOptions {
    /// Sequences per micro-batch.
    pub batch: u64,
    /// Tokens per sequence.
    pub seq: u64,
    /// Micro-batches per optimizer step.
    pub grad_accum: u32,
    /// The numeric recipe.
    pub precision: Precision,
    /// Device memory budget in bytes.
    pub vram_bytes: u64,
    /// Number of GPUs.
    pub gpus: u32,
    /// The optimizer's hyper-parameters.
    pub optimizer: OptimizerOptions,
}

/// What the compiler expects, to compare with what the runtime measures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimates {
    /// Bytes per category at the step of peak live memory.
    pub memory_at_peak: IndexMap<Category, u64>,
    /// The step at which live bytes peak.
    pub peak_step: u32,
    /// Live bytes at that step.
    pub peak_live_bytes: u64,
    /// Seconds for one micro-batch (forward and backward).
    pub micro_batch_seconds: f64,
    /// Seconds for the optimizer section.
    pub optimizer_seconds: f64,
    /// Seconds per optimizer step (all micro-batches and the update).
    pub step_seconds: f64,
    /// Tokens per second at that step time.
    pub tokens_per_second: f64,
    /// Model FLOPs per token: 6·N plus attention (see docs/benchmarks.md).
    pub model_flops_per_token: f64,
}

/// One decision of the memory planner about a class of tensors, with its price: what
/// `llmqc show` prints under "memory decisions".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryDecision {
    /// The tensors concerned (`weights`, `adam m`, `activations`).
    pub class: String,
    /// The blocks it applies to (`all`, `L0-L13`).
    pub blocks: String,
    /// What was decided (`stream from host per block`, `recompute in backward`).
    pub action: String,
    /// Device bytes at peak the decision saves: the peak without it minus the peak with it.
    pub bytes_saved: i64,
    /// Estimated seconds per step it adds: the step time with it minus without it.
    pub seconds_added: f64,
}

/// The model a plan trains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Its name (`qwen2.5-7b`).
    pub name: String,
    /// A hash of the spec files, to match checkpoints to models.
    pub fingerprint: String,
    /// Bound dimension symbols.
    pub dims: IndexMap<String, u64>,
    /// Number of parameters.
    pub param_count: u64,
}

/// A compiled training step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The model.
    pub model: ModelInfo,
    /// The flags it was planned with.
    pub options: PlanOptions,
    /// The device it was planned for.
    pub device: DeviceProfile,
    /// Number of ranks (GPUs); every rank runs the same steps on its shard.
    pub ranks: u32,
    /// Every tensor, indexed by `TensorId`.
    pub tensors: Vec<PlanTensor>,
    /// Every buffer, indexed by `BufferId`.
    pub buffers: Vec<Buffer>,
    /// Bytes of the device arena.
    pub device_arena_bytes: u64,
    /// Bytes of the pinned host arena.
    pub host_arena_bytes: u64,
    /// The schedule.
    pub steps: Vec<Step>,
    /// The streams steps run on.
    pub streams: Vec<StreamKind>,
    /// Number of events steps record and wait for.
    pub events: u32,
    /// Micro-batch and optimizer sections.
    pub sections: Vec<Section>,
    /// CUDA-graph capture segments.
    pub graph_segments: Vec<GraphSegment>,
    /// Collectives between ranks.
    pub collectives: Vec<Collective>,
    /// The tensors the trainer reads and writes.
    pub io: TrainIo,
    /// The compiler's estimates.
    pub estimates: Estimates,
    /// What the memory planner decided, and why; empty when everything stays on the device.
    pub memory: Vec<MemoryDecision>,
}

impl Plan {
    /// The tensor with this ID.
    pub fn tensor(&self, id: TensorId) -> &PlanTensor {
        &self.tensors[id.index()]
    }

    /// The buffer a tensor lives in.
    pub fn buffer_of(&self, id: TensorId) -> &Buffer {
        &self.buffers[self.tensor(id).buffer.index()]
    }

    /// Tokens per optimizer step.
    pub fn tokens_per_step(&self) -> u64 {
        self.options.batch * self.options.seq * self.options.grad_accum as u64
    }

    /// The section called `name`, if the plan has one.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The section of a step.
    pub fn section_of(&self, step: u32) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| (s.start..s.end).contains(&step))
    }
}
