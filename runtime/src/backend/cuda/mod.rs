//! The CUDA backend: executes a plan on one GPU through cudarc.
//!
//! At start it checks that the driver, NVRTC and cuBLASLt can be loaded and that a GPU is
//! present (else [`BackendError::Unavailable`], never a panic), refuses a plan whose arena does
//! not fit the card's free memory, makes the two arenas (one device allocation, one pinned host
//! allocation mapped into the device's address space) and the plan's streams and events, loads
//! every kernel (NVRTC, cached on disk: `modules.rs`), chooses a cuBLASLt algorithm per matmul
//! shape, builds cuDNN's attention plans where cuDNN loads and serves a step's shape within
//! the memory the plan leaves (`cudnn.rs`; the own kernels otherwise) and builds every step's
//! launch (`launch.rs`). Nothing is allocated after that.
//!
//! Steps run on the plan's streams, waiting for and recording the plan's events. Every
//! `run_steps` forks from stream 0 and joins back into it, so stream 0 orders the host's reads
//! and writes after the work. With graphs on, a `run_steps` call that covers exactly one of the
//! plan's graph segments is captured as a CUDA graph the first time and replayed afterwards
//! (the inputs live at fixed addresses; the learning rate and step are a device tensor).

pub mod autotune;
pub mod cudnn;
pub mod launch;
pub mod matmul;
pub mod modules;
pub mod nvrtc;

use super::{Backend, BackendError};
use cudarc::driver::sys::{self, CUstreamCaptureMode};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaGraph, CudaStream, DriverError, PinnedHostSlice, result,
};
use cudnn::AttentionPlans;
use launch::{Action, Launch};
use llmq_compiler::ir::TensorId;
use llmq_compiler::plan::{Arena, Plan};
use std::ffi::c_void;
use std::sync::Arc;

/// How the CUDA backend runs a plan.
#[derive(Clone, Copy, Debug)]
pub struct CudaOptions {
    /// The GPU's ordinal.
    pub device: usize,
    /// Capture each graph segment once and replay it (false: launch every step every time).
    pub graphs: bool,
    /// Run attention through cuDNN's fused flash-attention engines where they serve (false:
    /// always the own kernels, whose backward is deterministic; cuDNN's adds dq atomically).
    pub cudnn_attention: bool,
    /// Time the heuristics' cuBLASLt algorithms of every matmul shape at start-up and run the
    /// fastest (`autotune.rs`; false: the heuristics' first, the same choice every run).
    pub autotune_matmuls: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            device: 0,
            graphs: true,
            cudnn_attention: true,
            autotune_matmuls: true,
        }
    }
}

/// Why the CUDA backend cannot run here, or `Ok` when it can: the driver, NVRTC and cuBLASLt
/// load, and at least one GPU is present.
pub fn probe() -> Result<(), String> {
    // SAFETY: these only try to open each library by its candidate names.
    let present = unsafe {
        [
            (
                "the CUDA driver (libcuda.so)",
                cudarc::driver::sys::is_culib_present(),
            ),
            ("NVRTC (libnvrtc.so)", nvrtc::is_available()),
            (
                "cuBLASLt (libcublasLt.so)",
                cudarc::cublaslt::sys::is_culib_present(),
            ),
        ]
    };
    if let Some((name, _)) = present.iter().find(|(_, ok)| !ok) {
        return Err(format!(
            "the CUDA backend needs {name}, which is not on the library path"
        ));
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("the CUDA driver is installed but sees no GPU".into()),
        Err(e) => Err(format!("the CUDA driver sees no GPU: {e}")),
    }
}

/// Device memory the CUDA context itself takes (its code, the loaded modules, the libraries'
/// handles), beyond the allocations the backend makes: measured as 610 MiB on the H200 (the
/// 7B FP8 `--vram 16G` plan, 2026-12-04: the process held 15,798 MiB around an arena of
/// 15,124 MiB and 64 MiB of workspaces), rounded up.
const CONTEXT_BYTES: u64 = 640 << 20;

fn device_error(what: &str) -> impl FnOnce(DriverError) -> BackendError + '_ {
    move |e| BackendError::Device(format!("{what}: {e}"))
}

/// One device allocation, freed on drop.
struct DeviceMemory {
    ctx: Arc<CudaContext>,
    ptr: u64,
}

impl DeviceMemory {
    /// `bytes` (at least one) zero bytes.
    fn zeroed(ctx: &Arc<CudaContext>, bytes: u64) -> Result<Self, BackendError> {
        let bytes = bytes.max(1) as usize;
        // SAFETY: the context is current (bound by the caller); the allocation is zeroed
        // before anyone reads it and freed once, in `drop`.
        let ptr = unsafe {
            let ptr = result::malloc_sync(bytes).map_err(device_error("allocating the arena"))?;
            result::memset_d8_sync(ptr, 0, bytes).map_err(device_error("zeroing the arena"))?;
            ptr
        };
        Ok(DeviceMemory {
            ctx: ctx.clone(),
            ptr,
        })
    }
}

impl Drop for DeviceMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated by `malloc_sync` and is freed once; nothing uses it after
        // the backend is dropped (graphs and launches drop first).
        let _ = self.ctx.bind_to_thread();
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// Executes plans on one GPU.
pub struct CudaBackend {
    plan: Plan,
    options: CudaOptions,
    /// Per graph segment: its captured graph, once captured.
    graphs: Vec<Option<CudaGraph>>,
    launches: Vec<Launch>,
    gemms: matmul::Gemms,
    streams: Vec<Arc<CudaStream>>,
    events: Vec<CudaEvent>,
    /// Per stream: the event that forks work from it (stream 0) or joins it back.
    fork_join: Vec<CudaEvent>,
    device: DeviceMemory,
    /// cuBLASLt's workspace, allocated with the arena.
    _workspace: DeviceMemory,
    /// The kernels' scratch (split column sums), allocated with the arena.
    _scratch: DeviceMemory,
    /// cuDNN's attention plans, when any attention step runs through them, and their workspace
    /// (allocated at start, within what the plan's memory budget leaves).
    attention: Option<(AttentionPlans, DeviceMemory)>,
    /// Which attention runs, for the user.
    attention_summary: String,
    /// What autotuning the matmuls chose (nothing timed when it is off).
    tuning: autotune::Tuning,
    host: PinnedHostSlice<u8>,
    ctx: Arc<CudaContext>,
}

/// Two events that time the work enqueued on one stream between them.
struct Timer {
    before: CudaEvent,
    after: CudaEvent,
}

impl Timer {
    fn new(ctx: &Arc<CudaContext>) -> Result<Self, BackendError> {
        let event = || {
            ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(device_error("creating a timing event"))
        };
        Ok(Timer {
            before: event()?,
            after: event()?,
        })
    }

    /// The seconds that the work `enqueue` puts on `stream` takes there (waits for it).
    fn time(
        &self,
        stream: &CudaStream,
        enqueue: impl FnOnce() -> Result<(), BackendError>,
    ) -> Result<f64, BackendError> {
        self.before
            .record(stream)
            .map_err(device_error("recording a timing event"))?;
        enqueue()?;
        self.after
            .record(stream)
            .map_err(device_error("recording a timing event"))?;
        self.after
            .synchronize()
            .map_err(device_error("waiting for timed work"))?;
        let ms = self
            .before
            .elapsed_ms(&self.after)
            .map_err(device_error("reading a timing event"))?;
        Ok(ms as f64 / 1e3)
    }
}

impl CudaBackend {
    /// Prepares `plan` on GPU `options.device`; see the module documentation for the checks.
    pub fn new(plan: Plan, options: CudaOptions) -> Result<Self, BackendError> {
        probe().map_err(BackendError::Unavailable)?;
        let ctx = CudaContext::new(options.device).map_err(device_error("creating the context"))?;
        // SAFETY: the backend orders its streams itself (the plan's events, fork and join);
        // cudarc's per-buffer events would otherwise be recorded into captured streams.
        unsafe { ctx.disable_event_tracking() };
        if plan.streams.is_empty() {
            return Err(BackendError::Unavailable("the plan has no streams".into()));
        }
        let (free, total) = ctx
            .mem_get_info()
            .map_err(device_error("reading free memory"))?;
        let extra = (matmul::WORKSPACE_BYTES + launch::SCRATCH_BYTES) as u64;
        let needed = plan.device_arena_bytes + extra;
        if (free as u64) < needed {
            return Err(BackendError::Unavailable(format!(
                "the plan needs {needed} bytes of GPU memory (arena {} + cuBLASLt workspace and \
                 kernel scratch {extra}), the GPU has {free} bytes free of {total}",
                plan.device_arena_bytes,
            )));
        }
        let device = DeviceMemory::zeroed(&ctx, plan.device_arena_bytes)?;
        let workspace = DeviceMemory::zeroed(&ctx, matmul::WORKSPACE_BYTES as u64)?;
        let scratch = DeviceMemory::zeroed(&ctx, launch::SCRATCH_BYTES as u64)?;
        let host_len = plan.host_arena_bytes.max(1) as usize;
        // SAFETY: the memory is zeroed right below, before anything reads it. Not
        // write-combined: the host reads this arena (offloaded tensors, checkpoints).
        let mut host = unsafe {
            ctx.alloc_pinned_with_flags::<u8>(
                host_len,
                sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE,
            )
        }
        .map_err(device_error("allocating the pinned host arena"))?;
        host.as_mut_slice()
            .map_err(device_error("mapping the host arena"))?
            .fill(0);
        let mut host_device_ptr: sys::CUdeviceptr = 0;
        // SAFETY: the pointer is to the live pinned allocation made with DEVICEMAP.
        unsafe {
            let p = host
                .as_mut_ptr()
                .map_err(device_error("mapping the host arena"))?;
            sys::cuMemHostGetDevicePointer_v2(&mut host_device_ptr, p as *mut c_void, 0)
                .result()
                .map_err(device_error("mapping the host arena into the device"))?;
        }
        let new_stream = |_| ctx.new_stream().map_err(device_error("creating a stream"));
        let streams = (0..plan.streams.len())
            .map(new_stream)
            .collect::<Result<Vec<_>, _>>()?;
        let new_events = |n: usize| {
            (0..n)
                .map(|_| {
                    ctx.new_event(None)
                        .map_err(device_error("creating an event"))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let events = new_events(plan.events as usize)?;
        let fork_join = new_events(streams.len())?;

        let (major, minor) = ctx
            .compute_capability()
            .map_err(device_error("reading the compute capability"))?;
        let modules = modules::Modules::load(&ctx, &format!("compute_{major}{minor}"))
            .map_err(|e| BackendError::Unavailable(format!("loading the kernels: {e}")))?;
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(device_error("reading the SM count"))? as u32;
        let mut gemms =
            matmul::Gemms::new(workspace.ptr).map_err(|e| BackendError::Device(e.to_string()))?;
        let address = |t: TensorId| {
            let b = plan.buffer_of(t);
            match b.arena {
                Arena::Device => device.ptr + b.offset,
                Arena::Host => host_device_ptr + b.offset,
            }
        };
        // cuDNN's workspace gets what the plan's budget leaves beside the arena, the other
        // workspaces and the context, and what the GPU has free.
        let budget = plan
            .options
            .vram_bytes
            .saturating_sub(needed + CONTEXT_BYTES)
            .min(free as u64 - needed);
        let mut attention_plans = None;
        let mut attention_summary = "attention: own kernels (cuDNN attention off)".to_string();
        if options.cudnn_attention {
            match AttentionPlans::new(budget) {
                Ok(plans) => attention_plans = Some(plans),
                Err(why) => attention_summary = format!("attention: own kernels ({why})"),
            }
        }
        let launches = launch::build(
            &plan,
            &modules,
            &mut gemms,
            attention_plans.as_mut(),
            sm_count,
            scratch.ptr,
            &address,
        )
        .map_err(|e| BackendError::Unsupported(format!("the CUDA backend cannot run {e}")))?;
        if let Some(plans) = &attention_plans {
            attention_summary = plans.summary();
        }
        let tuning = if options.autotune_matmuls {
            autotune::autotune(
                &mut gemms,
                &launches,
                (device.ptr, plan.device_arena_bytes),
                &ctx,
                &streams[0],
            )?
        } else {
            autotune::Tuning::default()
        };
        let attention = match attention_plans {
            Some(plans) if !plans.is_empty() => {
                let workspace = DeviceMemory::zeroed(&ctx, plans.workspace_bytes())?;
                Some((plans, workspace))
            }
            _ => None,
        };
        let graphs = plan.graph_segments.iter().map(|_| None).collect();
        Ok(CudaBackend {
            plan,
            options,
            graphs,
            launches,
            gemms,
            streams,
            events,
            fork_join,
            device,
            _workspace: workspace,
            _scratch: scratch,
            attention,
            attention_summary,
            tuning,
            host,
            ctx,
        })
    }

    /// Which attention kernels run: cuDNN's (its version, plans and workspace, and why any
    /// step runs the own kernels instead) or the own.
    pub fn attention_summary(&self) -> &str {
        &self.attention_summary
    }

    /// What autotuning the matmuls did, in a line for the user.
    pub fn matmul_summary(&self) -> String {
        if self.options.autotune_matmuls {
            self.tuning.summary()
        } else {
            "matmuls: cuBLASLt, the heuristics' first algorithm (autotuning off)".into()
        }
    }

    /// The GPU's name.
    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
    }

    /// Waits until every step enqueued so far has finished.
    pub fn synchronize(&self) -> Result<(), BackendError> {
        self.streams[0]
            .synchronize()
            .map_err(device_error("waiting for the GPU"))
    }

    /// Makes every other stream wait for the work enqueued on stream 0 so far.
    fn fork(&self) -> Result<(), DriverError> {
        self.fork_join[0].record(&self.streams[0])?;
        for s in &self.streams[1..] {
            s.wait(&self.fork_join[0])?;
        }
        Ok(())
    }

    /// Makes stream 0 wait for the work enqueued on every other stream so far.
    fn join(&self) -> Result<(), DriverError> {
        for (s, e) in self.streams.iter().zip(&self.fork_join).skip(1) {
            e.record(s)?;
            self.streams[0].wait(e)?;
        }
        Ok(())
    }

    /// Enqueues steps `start..end` between a fork and a join.
    fn enqueue(&self, start: u32, end: u32) -> Result<(), BackendError> {
        self.fork().map_err(device_error("forking the streams"))?;
        for i in start..end {
            self.enqueue_step(i)?;
        }
        self.join().map_err(device_error("joining the streams"))
    }

    fn enqueue_step(&self, index: u32) -> Result<(), BackendError> {
        let step = &self.plan.steps[index as usize];
        let fail =
            |e: String| BackendError::Device(format!("step {index} ({}): {e}", step.node.op));
        let stream = &self.streams[step.stream as usize];
        for &w in &step.waits {
            stream
                .wait(&self.events[w as usize])
                .map_err(|e| fail(e.to_string()))?;
        }
        let launch = &self.launches[index as usize];
        let cu_stream = stream.cu_stream();
        for &p in &launch.zero_first {
            // SAFETY: `p` addresses an FP32 scalar of the arena (built by launch.rs).
            unsafe { sys::cuMemsetD32Async(p, 0, 1, cu_stream).result() }
                .map_err(|e| fail(e.to_string()))?;
        }
        for action in &launch.actions {
            match action {
                Action::Kernel {
                    name,
                    function,
                    grid,
                    block,
                    shared_bytes,
                    slots,
                } => {
                    let mut params: Vec<*mut c_void> = slots
                        .iter()
                        .map(|s| s as *const u64 as *mut c_void)
                        .collect();
                    // SAFETY: the arguments follow the kernel's documented order and types (one
                    // 8-byte slot each, read up to the parameter's size), every pointer addresses
                    // a tensor of the arenas with the extents passed, and the grid and block meet
                    // the kernel's stated limits (launch.rs checks them at start-up).
                    unsafe {
                        result::launch_kernel(
                            function.cu_function(),
                            (*grid, 1, 1),
                            (*block, 1, 1),
                            *shared_bytes,
                            cu_stream,
                            &mut params,
                        )
                    }
                    .map_err(|e| fail(format!("launching {name}: {e}")))?;
                }
                Action::Matmul {
                    gemm,
                    a,
                    b,
                    d,
                    scales,
                } => self
                    .gemms
                    .run(*gemm, *a, *b, *d, *scales, cu_stream)
                    .map_err(|e| fail(e.to_string()))?,
                Action::Copy { dst, src, bytes } => {
                    // SAFETY: both ranges are tensors of the arenas, `bytes` long, and the plan's
                    // events order this copy after their writers and before their readers.
                    let status = unsafe { sys::cuMemcpyAsync(*dst, *src, *bytes, cu_stream) };
                    status.result().map_err(|e| fail(e.to_string()))?
                }
                Action::Attention { plan, tensors } => {
                    let (plans, workspace) = self
                        .attention
                        .as_ref()
                        .expect("attention actions come with their plans");
                    // SAFETY: the tensors are the step's, of the plan's shape, in the arenas; the
                    // workspace holds the largest plan's; steps on the compute stream run one at
                    // a time, so no two executions share the workspace at once.
                    unsafe { plans.execute(*plan, tensors, workspace.ptr, cu_stream) }
                        .map_err(fail)?
                }
                Action::Memset { ptr, bytes } => {
                    // SAFETY: `ptr..ptr+bytes` is one tensor of the arenas.
                    unsafe { result::memset_d8_async(*ptr, 0, *bytes, cu_stream) }
                        .map_err(|e| fail(e.to_string()))?
                }
            }
        }
        if let Some(r) = step.records {
            self.events[r as usize]
                .record(stream)
                .map_err(|e| fail(e.to_string()))?;
        }
        Ok(())
    }

    /// Captures steps `start..end` into a graph.
    fn capture(&self, start: u32, end: u32) -> Result<CudaGraph, BackendError> {
        let s0 = &self.streams[0];
        s0.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(device_error("starting a graph capture"))?;
        let enqueued = self.enqueue(start, end);
        let graph = s0.end_capture(sys::CUgraphInstantiate_flags(0));
        enqueued?;
        graph
            .map_err(device_error("capturing a graph"))?
            .ok_or_else(|| BackendError::Device(format!("steps {start}..{end} captured no work")))
    }

    fn tensor_range(&self, tensor: TensorId) -> (Arena, u64, usize) {
        let t = self.plan.tensor(tensor);
        let b = self.plan.buffer_of(tensor);
        (b.arena, b.offset, t.ty.bytes() as usize)
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn plan(&self) -> &Plan {
        &self.plan
    }

    fn run_steps(&mut self, start: u32, end: u32) -> Result<(), BackendError> {
        let segment = self
            .plan
            .graph_segments
            .iter()
            .position(|g| g.start == start && g.end == end)
            .filter(|_| self.options.graphs);
        let Some(segment) = segment else {
            return self.enqueue(start, end);
        };
        if self.graphs[segment].is_none() {
            self.graphs[segment] = Some(self.capture(start, end)?);
        }
        let graph = self.graphs[segment].as_ref().expect("captured above");
        graph.launch().map_err(device_error("launching a graph"))
    }

    fn step_times(&mut self, start: u32, end: u32) -> Result<Option<Vec<f64>>, BackendError> {
        let timer = Timer::new(&self.ctx)?;
        let mut times = Vec::with_capacity((end - start) as usize);
        for i in start..end {
            // Each step alone between a fork and a join, timed on stream 0, which the fork
            // and join order before and after it.
            times.push(timer.time(&self.streams[0], || self.enqueue(i, i + 1))?);
        }
        Ok(Some(times))
    }

    fn write_bytes(&mut self, tensor: TensorId, bytes: &[u8]) -> Result<(), BackendError> {
        let t = self.plan.tensor(tensor);
        if t.ty.bytes() as usize != bytes.len() {
            let size = t.ty.dtype.size_bytes() as usize;
            return Err(BackendError::Size {
                tensor,
                name: t.name.clone(),
                expected: t.ty.numel() as usize,
                got: bytes.len() / size,
            });
        }
        // Earlier steps may still read the old value: wait for them first.
        self.synchronize()?;
        let (arena, offset, len) = self.tensor_range(tensor);
        match arena {
            Arena::Device => {
                // SAFETY: the destination is one tensor of the device arena, `len` bytes long.
                unsafe { result::memcpy_htod_sync(self.device.ptr + offset, bytes) }
                    .map_err(device_error("writing a tensor"))
            }
            Arena::Host => {
                let host = self
                    .host
                    .as_mut_slice()
                    .map_err(device_error("mapping the host arena"))?;
                host[offset as usize..offset as usize + len].copy_from_slice(bytes);
                Ok(())
            }
        }
    }

    fn read_bytes(&mut self, tensor: TensorId) -> Result<Vec<u8>, BackendError> {
        self.synchronize()?;
        let (arena, offset, len) = self.tensor_range(tensor);
        match arena {
            Arena::Device => {
                let mut out = vec![0u8; len];
                // SAFETY: the source is one tensor of the device arena, `len` bytes long.
                unsafe { result::memcpy_dtoh_sync(&mut out, self.device.ptr + offset) }
                    .map_err(device_error("reading a tensor"))?;
                Ok(out)
            }
            Arena::Host => {
                let host = self
                    .host
                    .as_slice()
                    .map_err(device_error("mapping the host arena"))?;
                Ok(host[offset as usize..offset as usize + len].to_vec())
            }
        }
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Let enqueued work finish before the graphs, handles and arenas go.
        let _ = self.ctx.synchronize();
    }
}
