//! One launch per plan step, built once when the backend starts: the kernel (named by the rule
//! of `kernels/cuda/common.cuh`), its arguments in the order documented above each kernel, its
//! grid and block, or a cuBLASLt matmul, or a memset. Shape preconditions of the kernels are
//! checked here, at start-up, so that a plan the kernels cannot run fails before any step.

use super::cudnn::{AttentionPlans, AttentionShape};
use super::matmul::{GemmShape, Gemms};
use super::modules::Modules;
use cudarc::driver::sys::CUfunction_attribute;
use llmq_compiler::ir::TensorId;
use llmq_compiler::plan::{Plan, Step};
use llmq_kernels::ops::{
    ATTENTION_MMA_ROWS, Linear, LinearBackwardData, LinearBackwardWeight, SwiGlu, SwiGluAbsMax,
    SwiGluBackward, SwiGluBackwardAbsMax, attention_backward_blocks_per_sm,
    attention_backward_splits, cudnn_attention_serves,
};
use llmq_kernels::{DType, Op, TensorType};

/// Threads per block of the grid-stride and per-row kernels.
const BLOCK: u32 = 256;
/// Threads per block of the attention kernels (their key or query tile).
const ATTENTION_BLOCK: u32 = 128;
/// The attention kernels' largest head (ATTN_MAX_HEAD_DIM in attention.cu).
const ATTENTION_MAX_HEAD_DIM: u64 = 256;
/// Threads per block of the tensor-core attention kernels (attention_mma.cu: MMA_THREADS).
const ATTENTION_MMA_BLOCK: u32 = 128;
/// The launch of an attention kernel (attention_mma.cu, attention.cu): its name, grid, block
/// and dynamic shared memory.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionLaunch {
    /// `attention_bf16_d{D}` or `attention_backward_bf16_d{D}`.
    pub name: String,
    /// Blocks.
    pub grid: u64,
    /// Threads per block.
    pub block: u32,
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
}

/// True for the head sizes of the tensor-core attention kernels.
fn tensor_core_head(head_dim: u64) -> bool {
    matches!(head_dim, 64 | 128)
}

/// The tensor-core attention launch for these sizes, or `None` when the head size has no
/// tensor-core kernel. Forward: one block per 64 query rows of every head; backward: one more
/// per 64 key rows of every key/value head and split of their walk (`splits`, 1 for the
/// forward; see `attention_backward_splits`).
pub fn attention_mma_launch(
    backward: bool,
    batch: u64,
    seq: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    splits: u64,
) -> Option<AttentionLaunch> {
    if !tensor_core_head(head_dim) {
        return None;
    }
    let rows = ATTENTION_MMA_ROWS;
    let tiles = seq.div_ceil(rows);
    // A bf16 tile of 64 rows padded by 8 elements. MmaForwardSmem<d>: q; k and v twice.
    // MmaBackwardSmem<d>: two own tiles; two walked tiles twice; lse and delta of 64 rows
    // twice.
    let tile = rows * (head_dim + 8) * 2;
    let (name, grid, shared) = if backward {
        let blocks = batch * heads * tiles + batch * kv_heads * tiles * splits;
        ("attention_backward_bf16", blocks, 6 * tile + 4 * rows * 4)
    } else {
        ("attention_bf16", batch * heads * tiles, 5 * tile)
    };
    Some(AttentionLaunch {
        name: format!("{name}_d{head_dim}"),
        grid,
        block: ATTENTION_MMA_BLOCK,
        shared_bytes: shared as u32,
    })
}

/// Threads per block of attention_backward_stats_bf16, eight per query row (STATS_LANES in
/// attention_mma.cu).
const ATTENTION_STATS_BLOCK: u32 = 256;

/// The launch of attention_backward_stats_bf16, which writes the statistics of every query row
/// (lse·log2(e) and do·o) that the tensor-core backward reads.
pub fn attention_stats_launch(batch: u64, seq: u64, heads: u64) -> AttentionLaunch {
    let rows = batch * heads * seq.next_multiple_of(ATTENTION_MMA_ROWS);
    AttentionLaunch {
        name: "attention_backward_stats_bf16".into(),
        grid: (rows * 8).div_ceil(ATTENTION_STATS_BLOCK as u64),
        block: ATTENTION_STATS_BLOCK,
        shared_bytes: 0,
    }
}

/// Bytes of those statistics: two FP32 values per query row, the rows of every head padded to
/// whole tiles.
pub fn attention_stats_bytes(batch: u64, seq: u64, heads: u64) -> u64 {
    2 * 4 * batch * heads * seq.next_multiple_of(ATTENTION_MMA_ROWS)
}

/// Bytes of the split backward's FP32 partial dK and dV (one 64-row tile of each per key tile
/// and split; `combine_splits` in attention_mma.cu) and of its counters (one `int` per key
/// tile, rounded up to 16 bytes): `(partials, counters)`.
pub fn attention_split_bytes(
    batch: u64,
    seq: u64,
    kv_heads: u64,
    head_dim: u64,
    splits: u64,
) -> (u64, u64) {
    let key_tiles = batch * kv_heads * seq.div_ceil(ATTENTION_MMA_ROWS);
    let partials = key_tiles * splits * 2 * ATTENTION_MMA_ROWS * head_dim * 4;
    (partials, (key_tiles * 4).next_multiple_of(16))
}

/// Where the tensor-core attention backward keeps its scratch, and its splits.
struct AttentionScratch {
    stats: u64,
    counters: u64,
    counter_bytes: u64,
    partials: u64,
    splits: u64,
}

/// attention.cu's kernels: one block per row of every head.
fn simple_attention_launch(name: &str, dtype: DType, grid: u64) -> AttentionLaunch {
    AttentionLaunch {
        name: format!("{name}_{dtype}"),
        grid,
        block: ATTENTION_BLOCK,
        shared_bytes: 0,
    }
}

/// Row chunks of the split column sums (COLSUM_CHUNKS in common.cuh).
const COLSUM_CHUNKS: u64 = 64;
/// Columns of one block of the split column sums (COLSUM_WIDTH in common.cuh).
const COLSUM_WIDTH: u64 = 256;
/// Their completion counters at the start of the scratch (COLSUM_COUNTERS in common.cuh).
const COLSUM_COUNTERS: u64 = 4096;
/// Bytes of the backend's kernel scratch: the split column sums' partials and counters, the
/// embedding backward's buckets, the attention backward's row statistics and split partials.
pub const SCRATCH_BYTES: usize = 32 << 20;

/// The tile side and threads per block of quantize_dual and transpose_fp8 (FT_TILE, FT_THREADS
/// in fp8_tile.cuh).
const FP8_TILE: u64 = 64;
const FP8_TILE_BLOCK: u32 = 256;

/// The largest head of rope, split_rope and their backwards: their blocks keep one position's
/// head_dim/2 angles in shared memory (2·ROPE_MAX_HALF in rope.cuh).
const ROPE_MAX_HEAD_DIM: u64 = 512;
/// Threads per block of rope, split_rope and their backwards (ROPE_BLOCK in rope.cuh, their
/// launch bounds).
const ROPE_BLOCK: u32 = 256;
/// Blocks per SM the rope grid aims for: two waves of the ROPE_MIN_BLOCKS = 4 blocks per SM
/// that rope.cuh's launch bounds let reside at once. Each block computes one position's angles
/// once and applies them to every head of a chunk of sequences at that position, so fewer,
/// fuller blocks spend less on angles: the chunks are the largest that still give this many
/// blocks (or one chunk, all sequences, when the positions alone give that many).
const ROPE_BLOCKS_PER_SM: u64 = 8;

/// Columns each thread of embedding_backward keeps (EMB_GROUPS_PER_THREAD groups of eight in
/// embedding.cu).
const EMBEDDING_COLS_PER_THREAD: u64 = 16;

/// True for the swiglu ops reading gate and up packed in one input.
fn packed_swiglu(op: &Op) -> bool {
    matches!(
        op,
        Op::SwiGlu(SwiGlu { packed: true })
            | Op::SwiGluAbsMax(SwiGluAbsMax { packed: true, .. })
            | Op::SwiGluBackward(SwiGluBackward { packed: true })
            | Op::SwiGluBackwardAbsMax(SwiGluBackwardAbsMax { packed: true, .. })
    )
}

/// One kernel argument, passed to the driver by address.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// A device pointer.
    Ptr(u64),
    /// `long long`.
    I64(i64),
    /// `int`.
    I32(i32),
    /// `float`.
    F32(f32),
}

impl Arg {
    /// The value's bytes at the start of an 8-byte slot (the driver reads as many bytes as the
    /// kernel's parameter has, from the slot's address).
    pub fn slot(self) -> u64 {
        match self {
            Arg::Ptr(p) => p,
            Arg::I64(v) => v as u64,
            Arg::I32(v) => v as u32 as u64,
            Arg::F32(v) => v.to_bits() as u64,
        }
    }
}

/// What one step does on its stream.
pub enum Action {
    /// A kernel launch.
    Kernel {
        /// The kernel's name, for messages.
        name: String,
        /// The function.
        function: cudarc::driver::CudaFunction,
        /// Blocks.
        grid: u32,
        /// Threads per block.
        block: u32,
        /// Dynamic shared memory in bytes.
        shared_bytes: u32,
        /// Argument slots (see [`Arg::slot`]).
        slots: Vec<u64>,
    },
    /// A prepared cuBLASLt matmul `d (+)= a·b`.
    Matmul {
        /// Index into [`Gemms`].
        gemm: usize,
        /// Operand A's address.
        a: u64,
        /// Operand B's address.
        b: u64,
        /// The result's address.
        d: u64,
        /// FP8 matmuls: the device addresses of A's and B's FP32 descales.
        scales: Option<[u64; 2]>,
    },
    /// `bytes` bytes from `src` to `dst` (device or mapped pinned host memory: unified
    /// addressing tells the copy engine the direction).
    Copy {
        /// Destination address.
        dst: u64,
        /// Source address.
        src: u64,
        /// Length.
        bytes: usize,
    },
    /// cuDNN's fused attention: plan `plan` of the backend's [`AttentionPlans`] on `tensors`
    /// (the order of `Cudnn::attention_forward` or `attention_backward`).
    Attention {
        /// Index into the attention plans.
        plan: usize,
        /// The tensors' addresses.
        tensors: Vec<u64>,
    },
    /// `bytes` zero bytes at `ptr`.
    Memset {
        /// Address.
        ptr: u64,
        /// Length.
        bytes: usize,
    },
}

/// A step's launch: scalars to zero first (reductions that combine blocks with atomics and do
/// not accumulate across steps), then the actions, in order on the step's stream (one for most
/// ops; a matmul and kernels per chunk for the chunked LM head).
pub struct Launch {
    /// FP32 scalars set to zero before the actions.
    pub zero_first: Vec<u64>,
    /// The work.
    pub actions: Vec<Action>,
}

/// Why a step cannot be launched.
#[derive(Debug, thiserror::Error)]
#[error("step {step} ({op}): {message}")]
pub struct LaunchError {
    /// The step.
    pub step: u32,
    /// Its op.
    pub op: String,
    /// What is wrong.
    pub message: String,
}

/// Builds the launch of every step. `address` gives a tensor's device address; with
/// `attention`, attention steps that cuDNN can serve run its fused kernels.
pub fn build(
    plan: &Plan,
    modules: &Modules,
    gemms: &mut Gemms,
    mut attention: Option<&mut AttentionPlans>,
    sm_count: u32,
    scratch: u64,
    address: &dyn Fn(TensorId) -> u64,
) -> Result<Vec<Launch>, LaunchError> {
    plan.steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let fail = |message: String| LaunchError {
                step: i as u32,
                op: step.node.op.to_string(),
                message,
            };
            let ctx = StepContext {
                plan,
                step,
                address,
                sm_count,
                scratch,
            };
            ctx.launch(modules, gemms, attention.as_deref_mut())
                .map_err(fail)
        })
        .collect()
}

struct StepContext<'a> {
    plan: &'a Plan,
    step: &'a Step,
    address: &'a dyn Fn(TensorId) -> u64,
    sm_count: u32,
    scratch: u64,
}

/// The grid of rms_norm.cu's backward kernels for `groups` rows and the column sums'
/// `sum_blocks`: per chunk of rows, the chunk's column-sum blocks, then its dx blocks (a warp
/// per row).
fn norm_backward_grid(groups: u64, sum_blocks: u64) -> u64 {
    let rows_per_chunk = groups.div_ceil(COLSUM_CHUNKS);
    sum_blocks + COLSUM_CHUNKS * rows_per_chunk.div_ceil(BLOCK as u64 / 32)
}

/// The action of a kernel call: its function looked up, its shared memory raised if it asks.
fn kernel_action(modules: &Modules, call: KernelCall) -> Result<Action, String> {
    let function = modules.function(&call.name).map_err(|e| e.to_string())?;
    if call.shared_bytes > 0 {
        function
            .set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                call.shared_bytes as i32,
            )
            .map_err(|e| format!("{}: raising its shared memory: {e}", call.name))?;
    }
    let grid =
        u32::try_from(call.grid).map_err(|_| format!("{} blocks do not fit a grid", call.grid))?;
    Ok(Action::Kernel {
        name: call.name,
        function,
        grid,
        block: call.block,
        shared_bytes: call.shared_bytes,
        slots: call.args.into_iter().map(Arg::slot).collect(),
    })
}

/// A kernel launch before its function is looked up.
struct KernelCall {
    name: String,
    grid: u64,
    block: u32,
    shared_bytes: u32,
    args: Vec<Arg>,
    zero_first: Vec<u64>,
}

impl KernelCall {
    /// A call that zeroes nothing first.
    fn new(name: String, grid: u64, block: u32, shared_bytes: u32, args: Vec<Arg>) -> KernelCall {
        KernelCall {
            name,
            grid,
            block,
            shared_bytes,
            args,
            zero_first: Vec::new(),
        }
    }
}

impl StepContext<'_> {
    fn in_ty(&self, i: usize) -> &TensorType {
        &self.plan.tensor(self.step.node.inputs[i]).ty
    }
    fn out_ty(&self, i: usize) -> &TensorType {
        &self.plan.tensor(self.step.node.outputs[i]).ty
    }
    fn input_address(&self, i: usize) -> u64 {
        (self.address)(self.step.node.inputs[i])
    }
    fn output_address(&self, i: usize) -> u64 {
        (self.address)(self.step.node.outputs[i])
    }
    fn input(&self, i: usize) -> Arg {
        Arg::Ptr(self.input_address(i))
    }
    fn output(&self, i: usize) -> Arg {
        Arg::Ptr(self.output_address(i))
    }
    /// A memset of the whole output `i`.
    fn zero_output(&self, i: usize) -> Action {
        Action::Memset {
            ptr: self.output_address(i),
            bytes: self.out_ty(i).bytes() as usize,
        }
    }
    fn acc(&self, i: usize) -> bool {
        self.step.node.accumulate[i]
    }
    /// The kernel's single `accumulate` flag, when every output agrees.
    fn acc_all(&self) -> Result<Arg, String> {
        let first = self.acc(0);
        if self.step.node.accumulate.iter().all(|&a| a == first) {
            Ok(Arg::I32(first as i32))
        } else {
            Err(format!(
                "the kernel takes one accumulate flag for all outputs, the plan asks for {:?}",
                self.step.node.accumulate
            ))
        }
    }
    fn no_acc(&self) -> Result<(), String> {
        if self.step.node.accumulate.iter().any(|&a| a) {
            Err("the kernel cannot accumulate into its output".into())
        } else {
            Ok(())
        }
    }
    /// The first float operand's dtype: the `{dtype}` of `{op}_{dtype}`.
    fn float_dtype(&self) -> Result<DType, String> {
        let ins = self.step.node.inputs.iter().chain(&self.step.node.outputs);
        ins.map(|&t| self.plan.tensor(t).ty.dtype)
            .find(|d| d.is_float())
            .ok_or_else(|| "no float operand".to_string())
    }
    /// Blocks of a grid-stride kernel over `n` elements.
    fn stride_grid(&self, n: u64) -> u64 {
        n.div_ceil(BLOCK as u64).clamp(1, self.sm_count as u64 * 16)
    }
    /// Blocks of a grid-stride kernel taking eight elements per thread (`first8` in
    /// common.cuh).
    fn stride_grid_8(&self, n: u64) -> u64 {
        self.stride_grid(n.div_ceil(8))
    }
    /// The backend's kernel scratch. It is shared by every step: only steps of stream 0, which
    /// run one after another, may use it.
    fn kernel_scratch(&self) -> Result<u64, String> {
        if self.step.stream != 0 {
            return Err("a step using the kernel scratch must run on stream 0".into());
        }
        Ok(self.scratch)
    }
    /// The scratch of a split column sum over `cols` columns, and its blocks (see
    /// column_sum_split in common.cuh).
    fn column_sum_scratch(&self, cols: u64) -> Result<(Arg, u64), String> {
        let col_blocks = cols.div_ceil(COLSUM_WIDTH);
        let bytes = COLSUM_COUNTERS * 4 + COLSUM_CHUNKS * cols * 4;
        if bytes > SCRATCH_BYTES as u64 || col_blocks > COLSUM_COUNTERS {
            return Err(format!(
                "{cols} columns need {bytes} bytes of scratch, more than {SCRATCH_BYTES}"
            ));
        }
        Ok((Arg::Ptr(self.kernel_scratch()?), col_blocks * COLSUM_CHUNKS))
    }
    /// `p` moved on by `elements` elements of `dtype`.
    fn offset(&self, p: Arg, elements: u64, dtype: DType) -> Arg {
        Arg::Ptr(p.slot() + elements * dtype.size_bytes())
    }
    /// A swiglu step's gate and up pointers and its `width, stride` arguments (swiglu.cu):
    /// inputs 0 and 1 with stride `width`, or, packed, the two halves of input 0's rows.
    fn gate_up(&self, dtype: DType, width: u64) -> (Arg, Arg, [Arg; 2]) {
        let gu = self.input(0);
        if packed_swiglu(&self.step.node.op) {
            let up = self.offset(gu, width, dtype);
            (gu, up, [Arg::I64(width as i64), Arg::I64(2 * width as i64)])
        } else {
            (gu, self.input(1), [Arg::I64(width as i64); 2])
        }
    }
    /// The grid and block of rope.cuh's kernels (rope, split_rope and their backwards) over
    /// `rows` rows of `x` (`[.., seq, ..]`): one block per (chunk of sequences, position), block
    /// chunk·seq + pos, chunks of `per` sequences, the largest that still give the blocks
    /// wanted (the kernel finds per again from the grid, ceil(sequences / chunks)).
    fn rope_grid(
        &self,
        call: &mut KernelCall,
        x: &TensorType,
        rows: u64,
        head_dim: u64,
    ) -> Result<(), String> {
        if head_dim > ROPE_MAX_HEAD_DIM {
            return Err(format!(
                "rope takes head_dim ≤ {ROPE_MAX_HEAD_DIM}, got {head_dim}"
            ));
        }
        let seq = x.shape[x.shape.len() - 2];
        let sequences = rows.checked_div(seq).unwrap_or(0).max(1);
        let chunks = (self.sm_count as u64 * ROPE_BLOCKS_PER_SM).div_ceil(seq.max(1));
        let per = sequences.div_ceil(chunks.clamp(1, sequences));
        call.grid = (seq * sequences.div_ceil(per)).max(1);
        call.block = ROPE_BLOCK;
        Ok(())
    }
    /// The output scalar `i`, zeroed first unless the plan accumulates into it.
    fn scalar_out(&self, i: usize) -> Vec<u64> {
        if self.acc(i) {
            Vec::new()
        } else {
            vec![self.output_address(i)]
        }
    }

    fn launch(
        &self,
        modules: &Modules,
        gemms: &mut Gemms,
        attention: Option<&mut AttentionPlans>,
    ) -> Result<Launch, String> {
        let op = &self.step.node.op;
        if let Op::Copy(_) = op {
            return Ok(Launch {
                zero_first: Vec::new(),
                actions: vec![Action::Copy {
                    dst: self.output_address(0),
                    src: self.input_address(0),
                    bytes: self.out_ty(0).bytes() as usize,
                }],
            });
        }
        if let Op::Zero(_) = op {
            return Ok(Launch {
                zero_first: Vec::new(),
                actions: vec![self.zero_output(0)],
            });
        }
        if let Op::Fp8Matmul(_) = op {
            return self.fp8_matmul(gemms);
        }
        let dtype = self.float_dtype()?;
        let shapes = [
            self.in_ty(0).shape.as_slice(),
            self.step
                .node
                .inputs
                .get(1)
                .map(|&t| self.plan.tensor(t).ty.shape.as_slice())
                .unwrap_or(&[]),
        ];
        if let Some(shape) = GemmShape::of(op, shapes, dtype, self.acc(0)) {
            if !matches!(dtype, DType::BF16 | DType::F32) {
                return Err(format!(
                    "cuBLASLt matmuls take bf16 or f32 here, not {dtype}"
                ));
            }
            let gemm = gemms.prepare(shape).map_err(|e| e.to_string())?;
            let ptr = |a: Arg| a.slot();
            return Ok(Launch {
                zero_first: Vec::new(),
                actions: vec![Action::Matmul {
                    gemm,
                    a: ptr(self.input(1)),
                    b: ptr(self.input(0)),
                    d: ptr(self.output(0)),
                    scales: None,
                }],
            });
        }
        if let Op::ClassifierCrossEntropy(_) | Op::ClassifierCrossEntropyBackward(_) = op {
            return self.chunked_head(modules, gemms, dtype);
        }
        if let Op::EmbeddingBackward(e) = op {
            return self.embedding_backward(modules, e.vocab, dtype);
        }
        if let Op::Attention(_) | Op::AttentionBackward(_) = op {
            if let Some(launch) = attention.and_then(|plans| self.cudnn_attention(plans, dtype)) {
                return Ok(launch);
            }
            return self.attention(modules, dtype);
        }
        let mut call = self.kernel_call(dtype)?;
        Ok(Launch {
            zero_first: std::mem::take(&mut call.zero_first),
            actions: vec![kernel_action(modules, call)?],
        })
    }

    /// `c (+)= a·bᵀ·a_descale·b_descale` (inputs a, a_descale, b, b_descale): cuBLASLt's FP8
    /// GEMM in `linear`'s mapping, A = b and B = a, the descales read on the device.
    fn fp8_matmul(&self, gemms: &mut Gemms) -> Result<Launch, String> {
        let (a, b, c) = (self.in_ty(0), self.in_ty(2), self.out_ty(0));
        let shape = GemmShape::of(
            &self.step.node.op,
            [&a.shape, &b.shape],
            c.dtype,
            self.acc(0),
        )
        .expect("fp8_matmul is a matmul")
        .with_types(b.dtype, a.dtype, c.dtype);
        let gemm = gemms.prepare(shape).map_err(|e| e.to_string())?;
        let ptr = |a: Arg| a.slot();
        Ok(Launch {
            zero_first: Vec::new(),
            actions: vec![Action::Matmul {
                gemm,
                a: ptr(self.input(2)),
                b: ptr(self.input(0)),
                d: ptr(self.output(0)),
                scales: Some([ptr(self.input(3)), ptr(self.input(1))]),
            }],
        })
    }

    /// The chunked LM head and loss (classifier_cross_entropy.cu), per chunk of rows: a
    /// cuBLASLt matmul of the logits into the scratch, then the loss kernel on it. In training
    /// (`classifier_cross_entropy_backward`) the kernel also turns the logits into their
    /// gradient in place, and the chunk's data- and weight-gradient matmuls follow (the weight
    /// gradient accumulating over chunks): three matmuls per chunk, the logits made once.
    fn chunked_head(
        &self,
        modules: &Modules,
        gemms: &mut Gemms,
        dtype: DType,
    ) -> Result<Launch, String> {
        use Arg::{I32, I64, Ptr};
        // Outputs: the loss and the scratch; in training the gradients come first.
        let (train, chunk_rows, loss, scratch) = match &self.step.node.op {
            Op::ClassifierCrossEntropy(c) => (false, c.chunk_rows, 0, 1),
            Op::ClassifierCrossEntropyBackward(c) => (true, c.chunk_rows, 2, 3),
            _ => unreachable!("called for the chunked head only"),
        };
        if !matches!(dtype, DType::BF16 | DType::F32) {
            return Err(format!(
                "cuBLASLt matmuls take bf16 or f32 here, not {dtype}"
            ));
        }
        let (x, w) = (self.in_ty(0), self.in_ty(1));
        let (rows, vocab, hidden) = (x.rows(), w.shape[0], w.shape[1]);
        let row_bytes = hidden * dtype.size_bytes();
        let addr = |a: Arg| a.slot();
        let (x_ptr, w_ptr, targets) = (addr(self.input(0)), addr(self.input(1)), self.input(2));
        let scratch = addr(self.output(scratch));
        let mut gemm = |op: Op, a: &[u64], b: &[u64], acc: bool| {
            let shape = GemmShape::of(&op, [a, b], dtype, acc).expect("a matmul op");
            gemms.prepare(shape).map_err(|e| e.to_string())
        };
        // The count of valid targets, once for all chunks, in the kernel scratch after the
        // column sums' counters (where their partials go: no column sum runs within this step).
        let valid = Ptr(self.kernel_scratch()? + COLSUM_COUNTERS * 4);
        let count_args = vec![targets, I64(rows as i64), I32(vocab as i32), valid];
        let count = KernelCall::new("count_valid_targets".into(), 1, 1024, 0, count_args);
        let mut actions = vec![kernel_action(modules, count)?];
        let mut first = 0;
        while first < rows {
            let n = chunk_rows.min(rows - first);
            let x_chunk = x_ptr + first * row_bytes;
            let logits = gemm(Linear.into(), &[n, hidden], &[vocab, hidden], false)?;
            actions.push(Action::Matmul {
                gemm: logits,
                a: w_ptr,
                b: x_chunk,
                d: scratch,
                scales: None,
            });
            let mut args = vec![Ptr(scratch), targets];
            let name = if train {
                args.push(self.input(3));
                "classifier_cross_entropy_backward"
            } else {
                "classifier_cross_entropy"
            };
            args.extend([
                self.output(loss),
                I64(first as i64),
                I64(n as i64),
                valid,
                I32(vocab as i32),
            ]);
            let call = KernelCall::new(format!("{name}_{dtype}"), n, BLOCK, 0, args);
            actions.push(kernel_action(modules, call)?);
            if train {
                let data = gemm(
                    LinearBackwardData.into(),
                    &[n, vocab],
                    &[vocab, hidden],
                    self.acc(0),
                )?;
                actions.push(Action::Matmul {
                    gemm: data,
                    a: w_ptr,
                    b: scratch,
                    d: addr(self.output(0)) + first * row_bytes,
                    scales: None,
                });
                let acc = self.acc(1) || first > 0;
                let weight = gemm(LinearBackwardWeight.into(), &[n, vocab], &[n, hidden], acc)?;
                actions.push(Action::Matmul {
                    gemm: weight,
                    a: x_chunk,
                    b: scratch,
                    d: addr(self.output(1)),
                    scales: None,
                });
            }
            first += n;
        }
        Ok(Launch {
            zero_first: self.scalar_out(loss),
            actions,
        })
    }

    /// The embedding's backward (embedding.cu): the token positions bucket-sorted by id in the
    /// kernel scratch (count, scan, bucket), then one block per table row summing its dy rows
    /// in token order. The scratch holds, after the split column sums' counters (which must
    /// stay zero), `count[vocab]`, `cursor[vocab]`, `start[vocab]` and `bucket[tokens]`.
    fn embedding_backward(
        &self,
        modules: &Modules,
        vocab: u64,
        dtype: DType,
    ) -> Result<Launch, String> {
        use Arg::{I32, I64, Ptr};
        let tokens = self.in_ty(0).numel();
        let cols = self.in_ty(1).last_dim();
        let threads = cols
            .div_ceil(EMBEDDING_COLS_PER_THREAD)
            .next_multiple_of(32);
        if threads > 1024 {
            return Err(format!(
                "embedding_backward takes at most 16384 columns, got {cols}"
            ));
        }
        // [distinct count, bucket cursor, count[vocab], cursor[vocab]], then the named ids,
        // the buckets' starts and the buckets (embedding.cu).
        let counters = (2 + 2 * vocab) * 4;
        let base = COLSUM_COUNTERS * 4;
        let bytes = base + counters + (tokens.min(vocab) + vocab + tokens) * 4;
        if bytes > SCRATCH_BYTES as u64 {
            return Err(format!(
                "embedding_backward of {tokens} tokens over a vocabulary of {vocab} needs \
                 {bytes} bytes of kernel scratch, more than {SCRATCH_BYTES}"
            ));
        }
        let ids = self.kernel_scratch()? + base;
        let distinct = ids + counters;
        let start = distinct + tokens.min(vocab) * 4;
        let bucket = start + vocab * 4;
        let call =
            |name: String, grid: u64, block: u32, args| KernelCall::new(name, grid, block, 0, args);
        let n = I64(tokens as i64);
        let grid = self.stride_grid(tokens);
        let kernels = [
            call(
                "embedding_backward_count".into(),
                grid,
                BLOCK,
                vec![self.input(0), Ptr(ids), Ptr(distinct), n, I32(vocab as i32)],
            ),
            call(
                "embedding_backward_starts".into(),
                grid,
                BLOCK,
                vec![Ptr(ids), Ptr(distinct), Ptr(start)],
            ),
            call(
                "embedding_backward_bucket".into(),
                grid,
                BLOCK,
                vec![
                    self.input(0),
                    Ptr(ids),
                    Ptr(start),
                    Ptr(bucket),
                    n,
                    I32(vocab as i32),
                ],
            ),
            // Blocks step over the named ids: at most one per token, or per vocabulary row.
            call(
                format!("embedding_backward_{dtype}"),
                tokens.min(vocab).clamp(1, self.sm_count as u64 * 16),
                (threads as u32).max(BLOCK),
                vec![
                    self.input(0),
                    self.input(1),
                    self.output(0),
                    Ptr(ids),
                    Ptr(distinct),
                    Ptr(start),
                    Ptr(bucket),
                    n,
                    I32(cols as i32),
                ],
            ),
        ];
        let mut actions = vec![Action::Memset {
            ptr: ids,
            bytes: counters as usize,
        }];
        // The kernel adds to the rows that tokens name and leaves the others: where the plan
        // does not accumulate, every row starts from zero.
        if !self.acc(0) {
            actions.push(self.zero_output(0));
        }
        for kernel in kernels {
            actions.push(kernel_action(modules, kernel)?);
        }
        Ok(Launch {
            zero_first: Vec::new(),
            actions,
        })
    }

    /// Attention forward or backward through cuDNN, where it serves: the shapes of
    /// `cudnn_attention_serves` (which the cost model prices at cuDNN's rates), outputs
    /// written rather than accumulated, on the compute stream (the plans share one
    /// workspace), and a plan that cuDNN builds within the workspace budget. `None`: the own
    /// kernels run it.
    fn cudnn_attention(&self, plans: &mut AttentionPlans, dtype: DType) -> Option<Launch> {
        let (shape, backward) = self.attention_shape();
        let served = cudnn_attention_serves(dtype, shape.seq, shape.head_dim)
            && self.step.stream == 0
            && !self.step.node.accumulate.iter().any(|&a| a);
        if !served {
            return None;
        }
        let (plan, chunk) = plans.prepare(shape, backward)?;
        // Every tensor has the batch outermost: chunk c's part of a tensor starts c times its
        // bytes per chunk in.
        let node = &self.step.node;
        let tensors: Vec<(u64, u64)> = node
            .inputs
            .iter()
            .chain(&node.outputs)
            .map(|&t| {
                let bytes = self.plan.tensor(t).ty.bytes();
                ((self.address)(t), bytes / shape.batch * chunk)
            })
            .collect();
        let actions = (0..shape.batch / chunk)
            .map(|c| Action::Attention {
                plan,
                tensors: tensors.iter().map(|&(at, step)| at + c * step).collect(),
            })
            .collect();
        Some(Launch {
            zero_first: Vec::new(),
            actions,
        })
    }

    /// The attention step's shape (from its op and its first input, `q [B, T, H·D]`), and
    /// whether it is the backward.
    fn attention_shape(&self) -> (AttentionShape, bool) {
        let (heads, kv_heads, head_dim, backward) = match &self.step.node.op {
            Op::Attention(a) => (a.heads, a.kv_heads, a.head_dim, false),
            Op::AttentionBackward(a) => (a.heads, a.kv_heads, a.head_dim, true),
            _ => unreachable!("the callers matched attention"),
        };
        let x = self.in_ty(0);
        let seq = x.shape[x.shape.len() - 2];
        let shape = AttentionShape {
            batch: x.numel() / (seq * x.last_dim()),
            seq,
            heads,
            kv_heads,
            head_dim,
        };
        (shape, backward)
    }

    /// Attention forward or backward: the tensor-core kernels (attention_mma.cu) for BF16 heads
    /// of 64 and 128, else attention.cu's kernels. The tensor-core backward first writes the
    /// query rows' statistics into the kernel scratch, and, when it splits the dK/dV walks,
    /// zeroes their counters there.
    fn attention(&self, modules: &Modules, dtype: DType) -> Result<Launch, String> {
        use Arg::{I32, Ptr};
        let (shape, backward) = self.attention_shape();
        let AttentionShape {
            batch,
            seq,
            heads,
            kv_heads,
            head_dim,
        } = shape;
        if head_dim > ATTENTION_MAX_HEAD_DIM {
            return Err(format!(
                "attention takes head_dim ≤ {ATTENTION_MAX_HEAD_DIM}, got {head_dim}"
            ));
        }
        let dims = [batch, seq, heads, kv_heads, head_dim].map(|d| I32(d as i32));
        let (i, o) = (|k| self.input(k), |k| self.output(k));
        let tensor_cores = dtype == DType::BF16 && tensor_core_head(head_dim);
        let mut actions = Vec::new();
        let kernel = |name: String, grid: u64, block: u32, shared_bytes: u32, args: Vec<Arg>| {
            kernel_action(
                modules,
                KernelCall::new(name, grid, block, shared_bytes, args),
            )
        };
        let (call, args) = match (backward, tensor_cores) {
            (true, true) => {
                let scratch = self.attention_scratch(batch, seq, heads, kv_heads, head_dim)?;
                let stats = attention_stats_launch(batch, seq, heads);
                let mut args = vec![i(3), i(5), i(4), Ptr(scratch.stats)];
                args.extend([batch, seq, heads, head_dim].map(|d| I32(d as i32)));
                actions.push(kernel(stats.name, stats.grid, stats.block, 0, args)?);
                if scratch.splits > 1 {
                    actions.push(Action::Memset {
                        ptr: scratch.counters,
                        bytes: scratch.counter_bytes as usize,
                    });
                }
                let call = attention_mma_launch(
                    true,
                    batch,
                    seq,
                    heads,
                    kv_heads,
                    head_dim,
                    scratch.splits,
                )
                .expect("a tensor-core head size");
                let mut args = vec![i(0), i(1), i(2), Ptr(scratch.stats), i(5)];
                args.extend([
                    o(0),
                    o(1),
                    o(2),
                    Ptr(scratch.partials),
                    Ptr(scratch.counters),
                ]);
                args.extend(dims);
                args.extend([self.acc_all()?, I32(scratch.splits as i32)]);
                (call, args)
            }
            (false, true) => {
                self.no_acc()?;
                let call = attention_mma_launch(false, batch, seq, heads, kv_heads, head_dim, 1)
                    .expect("a tensor-core head size");
                let mut args = vec![i(0), i(1), i(2), o(0), o(1)];
                args.extend(dims);
                (call, args)
            }
            (true, false) => {
                let mut args = vec![i(0), i(1), i(2), i(3), i(4), i(5), o(0), o(1), o(2)];
                args.extend(dims);
                args.push(self.acc_all()?);
                let grid = batch * (heads + kv_heads) * seq;
                (
                    simple_attention_launch("attention_backward", dtype, grid),
                    args,
                )
            }
            (false, false) => {
                self.no_acc()?;
                let mut args = vec![i(0), i(1), i(2), o(0), o(1)];
                args.extend(dims);
                let grid = batch * heads * seq;
                (simple_attention_launch("attention", dtype, grid), args)
            }
        };
        actions.push(kernel(
            call.name,
            call.grid,
            call.block,
            call.shared_bytes,
            args,
        )?);
        Ok(Launch {
            zero_first: Vec::new(),
            actions,
        })
    }

    /// The tensor-core attention backward's room in the kernel scratch, after the split column
    /// sums' counters: the row statistics, then, for as many splits of the dK/dV walks as the
    /// GPU's blocks ask (`attention_backward_splits`) and the scratch holds, their counters and
    /// partials.
    fn attention_scratch(
        &self,
        batch: u64,
        seq: u64,
        heads: u64,
        kv_heads: u64,
        head_dim: u64,
    ) -> Result<AttentionScratch, String> {
        let stats = COLSUM_COUNTERS * 4;
        let counters = stats + attention_stats_bytes(batch, seq, heads);
        if counters > SCRATCH_BYTES as u64 {
            return Err(format!(
                "the attention backward of {batch} sequences of {seq} over {heads} heads needs \
                 {counters} bytes of kernel scratch, more than {SCRATCH_BYTES}"
            ));
        }
        let slots = self.sm_count as u64 * attention_backward_blocks_per_sm(head_dim);
        let wanted = attention_backward_splits(batch, seq, heads, kv_heads, slots);
        let fits = |splits: u64| {
            let (partials, counter_bytes) =
                attention_split_bytes(batch, seq, kv_heads, head_dim, splits);
            counters + counter_bytes + partials <= SCRATCH_BYTES as u64
        };
        let splits = (1..=wanted).rev().find(|&s| s == 1 || fits(s)).unwrap_or(1);
        let (_, counter_bytes) = attention_split_bytes(batch, seq, kv_heads, head_dim, splits);
        let base = self.kernel_scratch()?;
        Ok(AttentionScratch {
            stats: base + stats,
            counters: base + counters,
            counter_bytes,
            partials: base + counters + counter_bytes,
            splits,
        })
    }

    fn kernel_call(&self, dtype: DType) -> Result<KernelCall, String> {
        use Arg::{F32, I32, I64};
        let op = &self.step.node.op;
        let base = op.spec().cuda_kernel();
        let mut call = KernelCall::new(format!("{base}_{dtype}"), 1, BLOCK, 0, Vec::new());
        let x = self.in_ty(0);
        let n = x.numel();
        let (i, o) = (|k| self.input(k), |k| self.output(k));
        match op {
            Op::Embedding(_) => {
                self.no_acc()?;
                let table = self.in_ty(1);
                let (vocab, cols) = (table.shape[0], table.shape[1]);
                call.args = vec![
                    i(0),
                    i(1),
                    o(0),
                    I64(n as i64),
                    I32(vocab as i32),
                    I32(cols as i32),
                ];
                call.grid = self.stride_grid_8(n * cols);
            }
            Op::RmsNorm(r) => {
                self.no_acc()?;
                let group = self.in_ty(1).numel();
                call.args = vec![
                    i(0),
                    i(1),
                    o(0),
                    o(1),
                    I64((n / group) as i64),
                    I32(group as i32),
                    F32(r.eps),
                ];
                // One warp per group (rms_norm.cu, add_rms_norm.cu).
                call.grid = (n / group).div_ceil(BLOCK as u64 / 32);
            }
            Op::RmsNormBackward(_) => {
                let group = self.in_ty(2).numel();
                let groups = n / group;
                let (scratch, sum_blocks) = self.column_sum_scratch(group)?;
                call.args = vec![
                    i(0),
                    i(1),
                    i(2),
                    i(3),
                    o(0),
                    o(1),
                    scratch,
                    I64(groups as i64),
                    I32(group as i32),
                    I32(self.acc(0) as i32),
                    I32(self.acc(1) as i32),
                ];
                call.grid = norm_backward_grid(groups, sum_blocks);
            }
            Op::RmsNormBackwardAdd(_) | Op::RmsNormBackwardAddAbsMax(_) => {
                // Every input, then every output (the abs-max last): only dw accumulates.
                let outs = self.step.node.outputs.len();
                if (0..outs).any(|k| k != 1 && self.acc(k)) {
                    return Err("the kernel accumulates into dw only".into());
                }
                let group = self.in_ty(2).numel();
                let groups = n / group;
                let (scratch, sum_blocks) = self.column_sum_scratch(group)?;
                call.args = (0..5).map(i).chain((0..outs).map(o)).collect();
                call.args.extend([
                    scratch,
                    I64(groups as i64),
                    I32(group as i32),
                    I32(self.acc(1) as i32),
                ]);
                call.grid = norm_backward_grid(groups, sum_blocks);
                if outs == 3 {
                    call.zero_first = self.scalar_out(2);
                }
            }
            Op::AddRmsNorm(r) => {
                self.no_acc()?;
                let group = self.in_ty(2).numel();
                call.args = vec![
                    i(0),
                    i(1),
                    i(2),
                    o(0),
                    o(1),
                    o(2),
                    I64((n / group) as i64),
                    I32(group as i32),
                    F32(r.eps),
                ];
                call.grid = (n / group).div_ceil(BLOCK as u64 / 32);
            }
            Op::QuantizeDual(_) | Op::TransposeFp8(_) => {
                // Both move 64×64 tiles of x = [rows, cols] into the [cols, rows] layout.
                self.no_acc()?;
                let cols = x.last_dim();
                let rows = n / cols;
                call.args = if matches!(op, Op::QuantizeDual(_)) {
                    call.name = format!("{base}_{}_{}", x.dtype, self.out_ty(0).dtype);
                    vec![i(0), i(1), o(0), o(1), o(2)]
                } else {
                    vec![i(0), o(0)]
                };
                call.args.extend([I64(rows as i64), I32(cols as i32)]);
                call.grid = rows.div_ceil(FP8_TILE) * cols.div_ceil(FP8_TILE);
                call.block = FP8_TILE_BLOCK;
            }
            Op::CastStochastic(c) => {
                self.no_acc()?;
                call.name = format!("{base}_{}_{}", x.dtype, self.out_ty(0).dtype);
                call.args = vec![i(0), i(1), o(0), I64(n as i64), I64(c.stream as i64)];
                call.grid = self.stride_grid_8(n);
            }
            Op::BiasAdd(_) => {
                self.no_acc()?;
                let cols = self.in_ty(1).numel();
                call.args = vec![i(0), i(1), o(0), I64((n / cols) as i64), I32(cols as i32)];
                call.grid = self.stride_grid_8(n);
            }
            Op::BiasBackward(_) => {
                let cols = x.last_dim();
                let (scratch, sum_blocks) = self.column_sum_scratch(cols)?;
                call.args = vec![
                    i(0),
                    o(0),
                    scratch,
                    I64((n / cols) as i64),
                    I32(cols as i32),
                    self.acc_all()?,
                ];
                call.grid = sum_blocks;
            }
            Op::Rope(_) | Op::RopeBackward(_) => {
                let (head_dim, theta) = match op {
                    Op::Rope(r) => (r.head_dim, r.theta),
                    Op::RopeBackward(r) => (r.head_dim, r.theta),
                    _ => unreachable!("matched above"),
                };
                let channels = x.last_dim();
                let rows = n / channels;
                call.args = vec![
                    i(0),
                    o(0),
                    I64(rows as i64),
                    I32(x.shape[x.shape.len() - 2] as i32),
                    I32(channels as i32),
                    I32(head_dim as i32),
                    F32(theta),
                ];
                if let Op::RopeBackward(_) = op {
                    call.args.push(self.acc_all()?);
                } else {
                    self.no_acc()?;
                }
                self.rope_grid(&mut call, x, rows, head_dim)?;
            }
            Op::SplitRope(_) | Op::SplitRopeBackward(_) | Op::SplitRopeBackwardAbsMax(_) => {
                // The packed tensor's rows, the parts' pointers and sizes (split_rope.cu).
                self.no_acc()?;
                let (cols, head_dim, theta) = match op {
                    Op::SplitRope(r) => (r.cols, r.head_dim, r.theta),
                    Op::SplitRopeBackward(r) => (r.cols, r.head_dim, r.theta),
                    Op::SplitRopeBackwardAbsMax(r) => (r.cols, r.head_dim, r.theta),
                    _ => unreachable!("matched above"),
                };
                let rows = n / x.last_dim();
                call.args = match op {
                    Op::SplitRope(r) => {
                        let bias = if r.bias.is_some() { i(1) } else { Arg::Ptr(0) };
                        vec![i(0), bias, o(0), o(1), o(2)]
                    }
                    _ => (0..3)
                        .map(i)
                        .chain((0..self.step.node.outputs.len()).map(o))
                        .collect(),
                };
                if let Op::SplitRopeBackwardAbsMax(_) = op {
                    call.zero_first = self.scalar_out(1);
                }
                call.args
                    .extend([I64(rows as i64), I32(x.shape[x.shape.len() - 2] as i32)]);
                call.args.extend(cols.map(|c| I32(c as i32)));
                call.args.extend([I32(head_dim as i32), F32(theta)]);
                self.rope_grid(&mut call, x, rows, head_dim)?;
            }
            Op::Add(_) => {
                self.no_acc()?;
                call.args = vec![i(0), i(1), o(0), I64(n as i64)];
                call.grid = self.stride_grid(n);
            }
            Op::SwiGlu(_) | Op::SwiGluAbsMax(_) => {
                // h's elements; gate and up, two inputs or the halves of one (swiglu.cu).
                self.no_acc()?;
                let h = self.out_ty(0);
                let (gate, up, layout) = self.gate_up(dtype, h.last_dim());
                call.args = vec![gate, up, o(0)];
                if let Op::SwiGluAbsMax(_) = op {
                    call.args.push(o(1));
                    call.zero_first = self.scalar_out(1);
                }
                call.args.push(I64(h.numel() as i64));
                call.args.extend(layout);
                call.grid = self.stride_grid_8(h.numel());
            }
            Op::SwiGluBackward(_) | Op::SwiGluBackwardAbsMax(_) => {
                let dh = self.in_ty(self.step.node.inputs.len() - 1);
                let (width, count) = (dh.last_dim(), dh.numel());
                let (gate, up, layout) = self.gate_up(dtype, width);
                let packed = packed_swiglu(op);
                // Packed, dgate and dup are the two halves of each row of dgu.
                let (dgate, dup) = if packed {
                    (o(0), self.offset(o(0), width, dtype))
                } else {
                    (o(0), o(1))
                };
                let dh = i(self.step.node.inputs.len() - 1);
                call.args = vec![gate, up, dh, dgate, dup];
                if let Op::SwiGluBackwardAbsMax(_) = op {
                    self.no_acc()?;
                    // One abs-max of dgu, packed; else one per gradient.
                    let amaxes = if packed { [1, 1] } else { [2, 3] };
                    call.args.extend(amaxes.map(o));
                    call.zero_first = self.scalar_out(amaxes[0]);
                    call.zero_first.extend(self.scalar_out(amaxes[1]));
                    call.zero_first.dedup();
                    call.args.push(I64(count as i64));
                    call.args.extend(layout);
                } else {
                    call.args.push(I64(count as i64));
                    call.args.extend(layout);
                    call.args.push(self.acc_all()?);
                }
                call.grid = self.stride_grid_8(count);
            }
            Op::Split(_) | Op::Concat(_) => {
                self.no_acc()?;
                let (packed, parts, to_packed) = match op {
                    Op::Split(_) => (i(0), (0..self.step.node.outputs.len()).map(o).collect(), 0),
                    _ => (
                        o(0),
                        (0..self.step.node.inputs.len()).map(i).collect::<Vec<_>>(),
                        1,
                    ),
                };
                let cols = match op {
                    Op::Split(s) => &s.cols,
                    Op::Concat(c) => &c.cols,
                    _ => unreachable!("matched above"),
                };
                let total: u64 = cols.iter().sum();
                let unused = 4 - parts.len();
                call.args = vec![packed];
                call.args.extend(parts);
                call.args.extend(std::iter::repeat_n(Arg::Ptr(0), unused));
                call.args.extend(cols.iter().map(|&c| I64(c as i64)));
                call.args.extend(std::iter::repeat_n(I64(0), unused));
                let rows = n / if to_packed == 0 { total } else { cols[0] };
                call.args.extend([I64(rows as i64), I32(to_packed)]);
                call.grid = self.stride_grid_8(rows * total);
            }
            Op::RmsNormAbsMax(_) | Op::AddRmsNormAbsMax(_) => {
                let eps = match op {
                    Op::RmsNormAbsMax(r) => r.eps,
                    Op::AddRmsNormAbsMax(r) => r.eps,
                    _ => unreachable!("matched above"),
                };
                // Every input, then every output (the abs-max last); the weight, the last
                // input, is one group.
                self.no_acc()?;
                let (ins, outs) = (self.step.node.inputs.len(), self.step.node.outputs.len());
                let group = self.in_ty(ins - 1).numel();
                call.args = (0..ins).map(i).chain((0..outs).map(o)).collect();
                call.args
                    .extend([I64((n / group) as i64), I32(group as i32), F32(eps)]);
                call.grid = (n / group).div_ceil(BLOCK as u64 / 32);
                call.zero_first = self.scalar_out(outs - 1);
            }
            Op::CrossEntropy(_) => {
                let vocab = x.last_dim();
                call.args = vec![i(0), i(1), o(0), I64((n / vocab) as i64), I32(vocab as i32)];
                call.grid = n / vocab;
                call.zero_first = self.scalar_out(0);
            }
            Op::CrossEntropyBackward(_) => {
                let vocab = x.last_dim();
                call.args = vec![
                    i(0),
                    i(1),
                    i(2),
                    o(0),
                    I64((n / vocab) as i64),
                    I32(vocab as i32),
                    self.acc_all()?,
                ];
                call.grid = n / vocab;
            }
            Op::SumSquares(_) | Op::AbsMax(_) => {
                call.args = vec![i(0), I64(n as i64), o(0)];
                call.grid = self.stride_grid_8(n);
                call.zero_first = self.scalar_out(0);
            }
            Op::ClipScale(c) => {
                self.no_acc()?;
                call.args = vec![i(0), o(0), o(1), F32(c.max_norm)];
                call.block = 32;
            }
            Op::AdamW(a) => {
                self.no_acc()?;
                if self.step.node.outputs
                    != [
                        self.step.node.inputs[0],
                        self.step.node.inputs[2],
                        self.step.node.inputs[3],
                    ]
                {
                    return Err(
                        "adamw updates param, m and v in place; the plan names other outputs"
                            .into(),
                    );
                }
                let d = |k| self.in_ty(k).dtype;
                call.name = format!("{base}_{}_{}_{}", d(0), d(1), d(2));
                call.args = vec![
                    i(0),
                    i(1),
                    i(2),
                    i(3),
                    i(4),
                    i(5),
                    I64(n as i64),
                    F32(a.beta1),
                    F32(a.beta2),
                    F32(a.eps),
                    F32(a.weight_decay),
                ];
                if a.stochastic.is_some() || a.param_stream.is_some() {
                    // A negative stream rounds that tensor to nearest (kernels/cuda/adamw.cu).
                    let stream = |s: Option<u64>| I64(s.map_or(-1, |s| s as i64));
                    call.name.push_str("_sr");
                    call.args.extend([
                        stream(a.param_stream),
                        stream(a.stochastic.map(|sr| sr.m_stream)),
                        stream(a.stochastic.map(|sr| sr.v_stream)),
                    ]);
                }
                call.grid = self.stride_grid_8(n);
            }
            Op::Cast(_) | Op::Quantize(_) => {
                self.no_acc()?;
                call.name = format!("{base}_{}_{}", x.dtype, self.out_ty(0).dtype);
                call.args = if let Op::Cast(_) = op {
                    vec![i(0), o(0), I64(n as i64)]
                } else {
                    vec![i(0), i(1), o(0), o(1), I64(n as i64)]
                };
                call.grid = self.stride_grid_8(n);
            }
            Op::Zero(_)
            | Op::Copy(_)
            | Op::ClassifierCrossEntropy(_)
            | Op::ClassifierCrossEntropyBackward(_)
            | Op::EmbeddingBackward(_)
            | Op::Attention(_)
            | Op::AttentionBackward(_)
            | Op::Linear(_)
            | Op::Fp8Matmul(_)
            | Op::LinearBackwardData(_)
            | Op::LinearBackwardWeight(_) => {
                unreachable!(
                    "memset, copy, chunked-head, embedding-backward, attention and cuBLASLt steps \
                     are built by the caller"
                )
            }
        }
        Ok(call)
    }
}
