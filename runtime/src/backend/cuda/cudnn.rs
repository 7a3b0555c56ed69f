//! Causal grouped-query attention through cuDNN's fused flash-attention engines, built with
//! cuDNN's backend graph API (the C API that cudnn-frontend wraps; cudarc gives its raw
//! bindings only).
//!
//! cuDNN has no single "attention" call before 9.21 (the device machines run 9.14): an
//! attention is a graph of primitive operations (two or more matmuls, pointwise operations, row
//! reductions, an index-generated causal mask) that cuDNN's heuristics match to a fused
//! flash-attention kernel when the graph has the shape that engine supports. The graphs below
//! are that shape for BF16 `[B, T, H, D]` tensors (the layout of `ops/attention.rs`); cuDNN sees
//! them as `[B, H, T, D]` through strides. Everything is decided once per attention shape at
//! start-up: the graph, the engine (the heuristics' first configuration that builds) and its
//! workspace. Each execution binds the step's addresses in a variant pack (a host-side
//! descriptor; with CUDA graphs, only at capture).
//!
//! Numerics are those of every flash-attention kernel: FP32 scores and softmax, probabilities
//! rounded to BF16 before the second product; the statistics are the rows' natural-log
//! log-sum-exp, as the own kernels write them, so either backward can follow either forward.

use cudarc::cudnn::sys as dnn;
use dnn::cudnnBackendAttributeName_t as Attr;
use dnn::cudnnBackendAttributeType_t as Ty;
use dnn::cudnnBackendDescriptorType_t as Kind;
use std::ffi::c_void;

/// `Ok` on success, else what was being done, cuDNN's status and its last error message.
fn check(status: dnn::cudnnStatus_t, what: &str) -> Result<(), String> {
    if status == dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        return Ok(());
    }
    let mut message = [0 as std::ffi::c_char; 512];
    // SAFETY: cuDNN writes at most `message.len()` bytes, NUL-terminated.
    let message = unsafe {
        dnn::cudnnGetLastErrorString(message.as_mut_ptr(), message.len());
        std::ffi::CStr::from_ptr(message.as_ptr())
    };
    Err(format!(
        "cuDNN: {what}: {status:?} ({})",
        message.to_string_lossy()
    ))
}

/// One backend descriptor, destroyed on drop.
struct Descriptor(dnn::cudnnBackendDescriptor_t);

impl Descriptor {
    fn new(kind: Kind) -> Result<Self, String> {
        let mut d = std::ptr::null_mut();
        // SAFETY: cuDNN writes the new descriptor into `d`.
        check(
            unsafe { dnn::cudnnBackendCreateDescriptor(kind, &mut d) },
            &format!("creating a {kind:?}"),
        )?;
        Ok(Descriptor(d))
    }

    /// Sets attribute `name` to `values`, of cuDNN type `ty` (which `V` must match).
    fn set<V>(&self, name: Attr, ty: Ty, values: &[V]) -> Result<(), String> {
        // SAFETY: `values` is a live slice of `values.len()` elements of the type cuDNN reads
        // for `ty` (the callers below pair them); cuDNN copies them.
        let status = unsafe {
            dnn::cudnnBackendSetAttribute(
                self.0,
                name,
                ty,
                values.len() as i64,
                values.as_ptr() as *const c_void,
            )
        };
        check(status, &format!("setting {name:?}"))
    }

    /// Reads attribute `name` (cuDNN type `ty`, which `V` must match) into `out`; returns how
    /// many elements it has, which an empty `out` asks for alone.
    fn get<V>(&self, name: Attr, ty: Ty, out: &mut [V]) -> Result<usize, String> {
        let mut count = 0i64;
        let array = match out.is_empty() {
            true => std::ptr::null_mut(),
            false => out.as_mut_ptr() as *mut c_void,
        };
        // SAFETY: cuDNN writes at most `out.len()` elements of `ty` into `array`.
        let status = unsafe {
            dnn::cudnnBackendGetAttribute(self.0, name, ty, out.len() as i64, &mut count, array)
        };
        check(status, &format!("reading {name:?}"))?;
        Ok(count as usize)
    }

    fn set_i64(&self, name: Attr, values: &[i64]) -> Result<(), String> {
        self.set(name, Ty::CUDNN_TYPE_INT64, values)
    }

    fn set_dtype(&self, name: Attr, dtype: dnn::cudnnDataType_t) -> Result<(), String> {
        self.set(name, Ty::CUDNN_TYPE_DATA_TYPE, &[dtype])
    }

    fn set_descriptors(&self, name: Attr, values: &[&Descriptor]) -> Result<(), String> {
        let raw: Vec<_> = values.iter().map(|d| d.0).collect();
        self.set(name, Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR, &raw)
    }

    fn finalize(self) -> Result<Self, String> {
        // SAFETY: the descriptor is live; its attributes were set above.
        let status = unsafe { dnn::cudnnBackendFinalize(self.0) };
        check(status, "finalizing a descriptor")?;
        Ok(self)
    }
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        // SAFETY: created by cudnnBackendCreateDescriptor, destroyed once.
        unsafe { dnn::cudnnBackendDestroyDescriptor(self.0) };
    }
}

/// The shape of one attention: `[batch, seq, heads, head_dim]` queries and outputs,
/// `[batch, seq, kv_heads, head_dim]` keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttentionShape {
    /// Sequences.
    pub batch: u64,
    /// Tokens per sequence.
    pub seq: u64,
    /// Query heads.
    pub heads: u64,
    /// Key and value heads (`heads` a multiple of them).
    pub kv_heads: u64,
    /// Elements per head.
    pub head_dim: u64,
}

/// What a tensor of a graph is: data the caller passes, an intermediate cuDNN keeps to
/// itself, or a scalar passed by value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Data,
    Virtual,
    ByValue,
}

/// The graph under construction: its tensors and operations, in order.
struct Graph {
    tensors: Vec<Descriptor>,
    ops: Vec<Descriptor>,
    next_virtual: i64,
}

/// A tensor of a [`Graph`]: its index there.
#[derive(Clone, Copy)]
struct Tensor(usize);

/// The first unique id of the virtual tensors (the data tensors' ids are below it).
const FIRST_VIRTUAL_ID: i64 = 1000;

impl Graph {
    fn new() -> Self {
        Graph {
            tensors: Vec::new(),
            ops: Vec::new(),
            next_virtual: FIRST_VIRTUAL_ID,
        }
    }

    /// A tensor of `dims` with `strides`; `uid` for data and by-value tensors (virtual ones
    /// number themselves).
    fn tensor(
        &mut self,
        uid: Option<i64>,
        dtype: dnn::cudnnDataType_t,
        dims: [i64; 4],
        strides: [i64; 4],
        role: Role,
    ) -> Result<Tensor, String> {
        let id = uid.unwrap_or_else(|| {
            self.next_virtual += 1;
            self.next_virtual
        });
        let d = Descriptor::new(Kind::CUDNN_BACKEND_TENSOR_DESCRIPTOR)?;
        d.set_dtype(Attr::CUDNN_ATTR_TENSOR_DATA_TYPE, dtype)?;
        d.set_i64(Attr::CUDNN_ATTR_TENSOR_DIMENSIONS, &dims)?;
        d.set_i64(Attr::CUDNN_ATTR_TENSOR_STRIDES, &strides)?;
        d.set_i64(Attr::CUDNN_ATTR_TENSOR_UNIQUE_ID, &[id])?;
        d.set_i64(Attr::CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, &[16])?;
        let flag = |b: bool| b as u8;
        d.set(
            Attr::CUDNN_ATTR_TENSOR_IS_VIRTUAL,
            Ty::CUDNN_TYPE_BOOLEAN,
            &[flag(role == Role::Virtual)],
        )?;
        if role == Role::ByValue {
            d.set(
                Attr::CUDNN_ATTR_TENSOR_IS_BY_VALUE,
                Ty::CUDNN_TYPE_BOOLEAN,
                &[1u8],
            )?;
        }
        self.tensors.push(d.finalize()?);
        Ok(Tensor(self.tensors.len() - 1))
    }

    /// A virtual FP32 tensor of `dims`, packed row-major.
    fn scratch(&mut self, dims: [i64; 4]) -> Result<Tensor, String> {
        self.scratch_of(F32, dims)
    }

    /// A virtual tensor of `dtype` and `dims`, packed row-major.
    fn scratch_of(
        &mut self,
        dtype: dnn::cudnnDataType_t,
        dims: [i64; 4],
    ) -> Result<Tensor, String> {
        self.tensor(None, dtype, dims, packed(dims), Role::Virtual)
    }

    fn descriptor(&self, t: Tensor) -> &Descriptor {
        &self.tensors[t.0]
    }

    /// Appends an operation of `kind`: its sub-descriptor (`None` for a reshape) at its
    /// attribute, its tensors at theirs.
    fn operation(
        &mut self,
        kind: Kind,
        sub: Option<(Attr, Descriptor)>,
        tensors: &[(Attr, Tensor)],
    ) -> Result<(), String> {
        let op = Descriptor::new(kind)?;
        if let Some((attr, sub)) = &sub {
            op.set_descriptors(*attr, &[sub])?;
        }
        for &(attr, t) in tensors {
            op.set_descriptors(attr, &[self.descriptor(t)])?;
        }
        self.ops.push(op.finalize()?);
        Ok(())
    }

    /// `y = mode(x[, b[, t]])`, computed in `precision`; `axis` for GEN_INDEX.
    fn pointwise_in(
        &mut self,
        mode: dnn::cudnnPointwiseMode_t,
        precision: dnn::cudnnDataType_t,
        inputs: &[Tensor],
        y: Tensor,
        axis: Option<i64>,
    ) -> Result<(), String> {
        let pw = Descriptor::new(Kind::CUDNN_BACKEND_POINTWISE_DESCRIPTOR)?;
        pw.set(
            Attr::CUDNN_ATTR_POINTWISE_MODE,
            Ty::CUDNN_TYPE_POINTWISE_MODE,
            &[mode],
        )?;
        pw.set_dtype(Attr::CUDNN_ATTR_POINTWISE_MATH_PREC, precision)?;
        if let Some(axis) = axis {
            pw.set_i64(Attr::CUDNN_ATTR_POINTWISE_AXIS, &[axis])?;
        }
        let slots = [
            Attr::CUDNN_ATTR_OPERATION_POINTWISE_XDESC,
            Attr::CUDNN_ATTR_OPERATION_POINTWISE_BDESC,
            Attr::CUDNN_ATTR_OPERATION_POINTWISE_TDESC,
        ];
        let mut tensors: Vec<_> = slots.into_iter().zip(inputs.iter().copied()).collect();
        tensors.push((Attr::CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y));
        self.operation(
            Kind::CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR,
            Some((
                Attr::CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR,
                pw.finalize()?,
            )),
            &tensors,
        )
    }

    /// `y = mode(inputs)`, computed in FP32.
    fn pointwise(
        &mut self,
        mode: dnn::cudnnPointwiseMode_t,
        inputs: &[Tensor],
        y: Tensor,
    ) -> Result<(), String> {
        self.pointwise_in(mode, F32, inputs, y, None)
    }

    /// `y`, a view of `x` with other strides (a transpose, for cuDNN: no data moves).
    fn reshape(&mut self, x: Tensor, y: Tensor) -> Result<(), String> {
        self.operation(
            Kind::CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR,
            None,
            &[
                (Attr::CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x),
                (Attr::CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y),
            ],
        )
    }

    /// `c = a·b` over the last two dimensions (batched over the first two), FP32 compute.
    fn matmul(&mut self, a: Tensor, b: Tensor, c: Tensor) -> Result<(), String> {
        let mm = Descriptor::new(Kind::CUDNN_BACKEND_MATMUL_DESCRIPTOR)?;
        mm.set_dtype(Attr::CUDNN_ATTR_MATMUL_COMP_TYPE, F32)?;
        self.operation(
            Kind::CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR,
            Some((Attr::CUDNN_ATTR_OPERATION_MATMUL_DESC, mm.finalize()?)),
            &[
                (Attr::CUDNN_ATTR_OPERATION_MATMUL_ADESC, a),
                (Attr::CUDNN_ATTR_OPERATION_MATMUL_BDESC, b),
                (Attr::CUDNN_ATTR_OPERATION_MATMUL_CDESC, c),
            ],
        )
    }

    /// `y = reduce(x)` over the dimensions where `y` has extent 1, FP32 compute.
    fn reduction(
        &mut self,
        reduce: dnn::cudnnReduceTensorOp_t,
        x: Tensor,
        y: Tensor,
    ) -> Result<(), String> {
        let r = Descriptor::new(Kind::CUDNN_BACKEND_REDUCTION_DESCRIPTOR)?;
        r.set(
            Attr::CUDNN_ATTR_REDUCTION_OPERATOR,
            Ty::CUDNN_TYPE_REDUCTION_OPERATOR_TYPE,
            &[reduce],
        )?;
        r.set_dtype(Attr::CUDNN_ATTR_REDUCTION_COMP_TYPE, F32)?;
        self.operation(
            Kind::CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR,
            Some((Attr::CUDNN_ATTR_OPERATION_REDUCTION_DESC, r.finalize()?)),
            &[
                (Attr::CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x),
                (Attr::CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y),
            ],
        )
    }
}

const F32: dnn::cudnnDataType_t = dnn::cudnnDataType_t::CUDNN_DATA_FLOAT;
const BF16: dnn::cudnnDataType_t = dnn::cudnnDataType_t::CUDNN_DATA_BFLOAT16;

/// The oldest cuDNN these graphs are built for: 9.0, whose backend API has
/// `cudnnGetLastErrorString` (grouped queries came to the fused engines in 8.9.7).
const MIN_VERSION: usize = 90000;
/// cuDNN 9.10.0 and 9.10.1, whose BF16 attention engines cudnn-frontend refuses as wrong.
const BROKEN_VERSIONS: std::ops::Range<usize> = 91000..91002;

/// A cuDNN handle; attention plans are built on it and executed through it.
pub struct Cudnn {
    handle: dnn::cudnnHandle_t,
}

impl Cudnn {
    /// A handle on the current CUDA context, or why cuDNN cannot serve here: not on the
    /// library path, or older than 9.0.
    pub fn new() -> Result<Self, String> {
        // SAFETY: this only tries to open the library by its candidate names.
        if !unsafe { dnn::is_culib_present() } {
            return Err("cuDNN (libcudnn.so) is not on the library path".into());
        }
        // SAFETY: the library loads (checked above); these take no pointers but the handle.
        let version = unsafe { dnn::cudnnGetVersion() };
        if version < MIN_VERSION {
            return Err(format!(
                "cuDNN {version} is older than {MIN_VERSION}, the first these attention graphs \
                 are built for"
            ));
        }
        if BROKEN_VERSIONS.contains(&version) {
            return Err(format!(
                "cuDNN {version}: its BF16 attention engines are known to be wrong (9.10.0 and \
                 9.10.1)"
            ));
        }
        let mut handle = std::ptr::null_mut();
        // SAFETY: cuDNN writes the new handle into `handle`.
        check(
            unsafe { dnn::cudnnCreate(&mut handle) },
            "creating a handle",
        )?;
        Ok(Cudnn { handle })
    }

    /// cuDNN's version, as `cudnnGetVersion` gives it (91400 is 9.14.0).
    pub fn version(&self) -> usize {
        // SAFETY: the library is loaded (a handle exists).
        unsafe { dnn::cudnnGetVersion() }
    }

    /// Finalizes `graph` and builds the first of the heuristics' engine configurations that
    /// cuDNN can build for it. `data` are the unique ids of the tensors the caller passes,
    /// `buffers` those of the graph's own (id, bytes; placed at the start of the workspace),
    /// `values` the by-value scalars.
    fn plan(
        &self,
        graph: Graph,
        data: Vec<i64>,
        buffers: Vec<(i64, u64)>,
        values: Vec<(i64, f32)>,
    ) -> Result<AttentionPlan, String> {
        let g = Descriptor::new(Kind::CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR)?;
        let ops: Vec<&Descriptor> = graph.ops.iter().collect();
        g.set_descriptors(Attr::CUDNN_ATTR_OPERATIONGRAPH_OPS, &ops)?;
        g.set(
            Attr::CUDNN_ATTR_OPERATIONGRAPH_HANDLE,
            Ty::CUDNN_TYPE_HANDLE,
            &[self.handle],
        )?;
        let g = g.finalize()?;
        let heuristics = Descriptor::new(Kind::CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR)?;
        heuristics.set_descriptors(Attr::CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, &[&g])?;
        heuristics.set(
            Attr::CUDNN_ATTR_ENGINEHEUR_MODE,
            Ty::CUDNN_TYPE_HEUR_MODE,
            &[dnn::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_A],
        )?;
        let heuristics = heuristics.finalize()?;
        let results = Attr::CUDNN_ATTR_ENGINEHEUR_RESULTS;
        let descriptors = Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR;
        let count =
            heuristics.get::<dnn::cudnnBackendDescriptor_t>(results, descriptors, &mut [])?;
        let configs = (0..count)
            .map(|_| Descriptor::new(Kind::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR))
            .collect::<Result<Vec<_>, _>>()?;
        let mut raw: Vec<_> = configs.iter().map(|c| c.0).collect();
        let got = heuristics.get(results, descriptors, &mut raw)?.min(count);
        let mut why = format!("the heuristics offer {got} engine configurations");
        for config in configs.iter().take(got) {
            let plan = Descriptor::new(Kind::CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)?;
            plan.set(
                Attr::CUDNN_ATTR_EXECUTION_PLAN_HANDLE,
                Ty::CUDNN_TYPE_HANDLE,
                &[self.handle],
            )?;
            plan.set_descriptors(Attr::CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, &[config])?;
            match plan.finalize() {
                Ok(plan) => {
                    let mut workspace = [0i64];
                    plan.get(
                        Attr::CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                        Ty::CUDNN_TYPE_INT64,
                        &mut workspace,
                    )?;
                    let values = values
                        .into_iter()
                        .map(|(uid, v)| (uid, Box::new(v)))
                        .collect();
                    let own: u64 = buffers.iter().map(|(_, bytes)| bytes).sum();
                    return Ok(AttentionPlan {
                        plan,
                        workspace_bytes: own + aligned(workspace[0] as u64),
                        data,
                        buffers,
                        values,
                    });
                }
                Err(e) => why = format!("{why}; {e}"),
            }
        }
        Err(why)
    }

    /// Runs `pack`'s plan on `stream`.
    ///
    /// # Safety
    /// The pack's addresses must be live device memory of the plan's tensors and workspace,
    /// ordered on `stream` after their writers.
    pub unsafe fn execute(
        &self,
        plan: &AttentionPlan,
        pack: &VariantPack,
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<(), String> {
        // SAFETY: the handle is live; the caller vouches for the stream and the pack.
        unsafe {
            check(
                dnn::cudnnSetStream(self.handle, stream as dnn::cudaStream_t),
                "setting the stream",
            )?;
            check(
                dnn::cudnnBackendExecute(self.handle, plan.plan.0, pack.0.0),
                "executing attention",
            )
        }
    }
}

impl Drop for Cudnn {
    fn drop(&mut self) {
        // SAFETY: created by cudnnCreate, destroyed once, after the plans built on it (the
        // backend drops its launches first).
        unsafe { dnn::cudnnDestroy(self.handle) };
    }
}

/// An attention graph with its engine chosen: what a step executes.
pub struct AttentionPlan {
    plan: Descriptor,
    /// The device workspace: the graph's own buffers, then the engine's.
    pub workspace_bytes: u64,
    /// The unique ids of the data tensors, in the order [`AttentionPlan::bind`] takes them.
    data: Vec<i64>,
    /// The graph's own buffers at the start of the workspace: unique id and bytes.
    buffers: Vec<(i64, u64)>,
    /// The by-value scalars: unique id and value (boxed: the variant packs point at them).
    values: Vec<(i64, Box<f32>)>,
}

/// The addresses one execution of a plan reads and writes.
pub struct VariantPack(Descriptor);

impl AttentionPlan {
    /// A variant pack for the data tensors at `pointers` (in the order of the plan's
    /// constructor) and the workspace at `workspace`.
    pub fn bind(&self, pointers: &[u64], workspace: u64) -> Result<VariantPack, String> {
        if pointers.len() != self.data.len() {
            return Err(format!(
                "the attention plan takes {} tensors, got {}",
                self.data.len(),
                pointers.len()
            ));
        }
        let mut uids = self.data.clone();
        let mut addresses: Vec<*mut c_void> = pointers.iter().map(|&p| p as *mut c_void).collect();
        let mut at = workspace;
        for &(uid, bytes) in &self.buffers {
            uids.push(uid);
            addresses.push(at as *mut c_void);
            at += bytes;
        }
        for (uid, value) in &self.values {
            uids.push(*uid);
            addresses.push(&**value as *const f32 as *mut c_void);
        }
        let pack = Descriptor::new(Kind::CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)?;
        pack.set_i64(Attr::CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, &uids)?;
        pack.set(
            Attr::CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
            Ty::CUDNN_TYPE_VOID_PTR,
            &addresses,
        )?;
        pack.set(
            Attr::CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
            Ty::CUDNN_TYPE_VOID_PTR,
            &[at as *mut c_void],
        )?;
        Ok(VariantPack(pack.finalize()?))
    }
}

/// Unique ids of the data tensors (the by-value scalars after them).
mod uid {
    pub const Q: i64 = 1;
    pub const K: i64 = 2;
    pub const V: i64 = 3;
    pub const O: i64 = 4;
    pub const STATS: i64 = 5;
    pub const D_O: i64 = 6;
    pub const D_Q: i64 = 7;
    pub const D_K: i64 = 8;
    pub const D_V: i64 = 9;
    pub const ROW_SUMS: i64 = 10;
    pub const DQ_SUMS: i64 = 11;
    pub const SCALE: i64 = 20;
    pub const MASKED: i64 = 21;
    pub const ONE: i64 = 22;
}

impl AttentionShape {
    /// A `[B, T, heads, D]` tensor seen as `[B, heads, T, D]`: dims and strides.
    fn rows_of(&self, heads: u64) -> ([i64; 4], [i64; 4]) {
        let [b, t, h, d] = [self.batch, self.seq, heads, self.head_dim].map(|x| x as i64);
        ([b, h, t, d], [t * h * d, d, h * d, 1])
    }

    /// The same tensor seen transposed, `[B, heads, D, T]`.
    fn columns_of(&self, heads: u64) -> ([i64; 4], [i64; 4]) {
        let ([b, h, t, d], [sb, sh, st, sd]) = self.rows_of(heads);
        ([b, h, d, t], [sb, sh, sd, st])
    }

    /// The `[B, heads, T, T]` scores.
    fn scores(&self) -> [i64; 4] {
        let [b, h, t] = [self.batch, self.heads, self.seq].map(|x| x as i64);
        [b, h, t, t]
    }

    /// One FP32 value per query row, `[B, heads, T, 1]` (the statistics' layout).
    fn per_row(&self) -> ([i64; 4], [i64; 4]) {
        let [b, h, t] = [self.batch, self.heads, self.seq].map(|x| x as i64);
        ([b, h, t, 1], [h * t, t, 1, 1])
    }
}

const SCALAR: ([i64; 4], [i64; 4]) = ([1; 4], [1; 4]);

use dnn::cudnnPointwiseMode_t as Pw;

impl Graph {
    fn data(
        &mut self,
        uid: i64,
        dtype: dnn::cudnnDataType_t,
        (dims, strides): ([i64; 4], [i64; 4]),
    ) -> Result<Tensor, String> {
        self.tensor(Some(uid), dtype, dims, strides, Role::Data)
    }

    fn value(&mut self, uid: i64) -> Result<Tensor, String> {
        self.tensor(Some(uid), F32, SCALAR.0, SCALAR.1, Role::ByValue)
    }

    /// `y = mode(inputs)` into a new virtual FP32 tensor of `dims`.
    fn apply(&mut self, mode: Pw, inputs: &[Tensor], dims: [i64; 4]) -> Result<Tensor, String> {
        let y = self.scratch(dims)?;
        self.pointwise(mode, inputs, y)?;
        Ok(y)
    }

    /// `x` where the key is not after the query (row ≥ column), else the MASKED value.
    fn causal(&mut self, x: Tensor, dims: [i64; 4]) -> Result<Tensor, String> {
        let int32 = dnn::cudnnDataType_t::CUDNN_DATA_INT32;
        let boolean = dnn::cudnnDataType_t::CUDNN_DATA_BOOLEAN;
        let row = self.scratch_of(int32, dims)?;
        self.pointwise_in(Pw::CUDNN_POINTWISE_GEN_INDEX, int32, &[x], row, Some(2))?;
        let column = self.scratch_of(int32, dims)?;
        self.pointwise_in(Pw::CUDNN_POINTWISE_GEN_INDEX, int32, &[x], column, Some(3))?;
        let keep = self.scratch_of(boolean, dims)?;
        self.pointwise_in(
            Pw::CUDNN_POINTWISE_CMP_GE,
            boolean,
            &[row, column],
            keep,
            None,
        )?;
        let masked = self.value(uid::MASKED)?;
        // y = keep ? x : masked
        self.apply(Pw::CUDNN_POINTWISE_BINARY_SELECT, &[x, masked, keep], dims)
    }

    /// The scaled scores `q·kᵀ·scale`.
    fn scaled_scores(
        &mut self,
        shape: &AttentionShape,
        q: Tensor,
        k_t: Tensor,
        scale: Tensor,
    ) -> Result<Tensor, String> {
        let dims = shape.scores();
        let s = self.scratch(dims)?;
        self.matmul(q, k_t, s)?;
        self.apply(Pw::CUDNN_POINTWISE_MUL, &[s, scale], dims)
    }
}

/// Row-major strides of `dims`.
fn packed(dims: [i64; 4]) -> [i64; 4] {
    [dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1]
}

/// The value of masked scores: minus infinity, so that their probabilities are exactly zero.
const MASKED_SCORE: f32 = f32::NEG_INFINITY;

impl Cudnn {
    /// The forward: `o = softmax(q·kᵀ/√D, causal)·v` and the rows' log-sum-exp. Data tensors,
    /// in order: q, k, v, o, stats (`[B, H, T]` FP32).
    pub fn attention_forward(&self, shape: &AttentionShape) -> Result<AttentionPlan, String> {
        let mut g = Graph::new();
        let q = g.data(uid::Q, BF16, shape.rows_of(shape.heads))?;
        let k_t = g.data(uid::K, BF16, shape.columns_of(shape.kv_heads))?;
        let v = g.data(uid::V, BF16, shape.rows_of(shape.kv_heads))?;
        let o = g.data(uid::O, BF16, shape.rows_of(shape.heads))?;
        let stats = g.data(uid::STATS, F32, shape.per_row())?;
        let scale = g.value(uid::SCALE)?;
        let dims = shape.scores();
        let scaled = g.scaled_scores(shape, q, k_t, scale)?;
        let s = g.causal(scaled, dims)?;
        let (rows, _) = shape.per_row();
        let max = g.scratch(rows)?;
        g.reduction(dnn::cudnnReduceTensorOp_t::CUDNN_REDUCE_TENSOR_MAX, s, max)?;
        let centred = g.apply(Pw::CUDNN_POINTWISE_SUB, &[s, max], dims)?;
        let e = g.apply(Pw::CUDNN_POINTWISE_EXP, &[centred], dims)?;
        let sum = g.scratch(rows)?;
        g.reduction(dnn::cudnnReduceTensorOp_t::CUDNN_REDUCE_TENSOR_ADD, e, sum)?;
        let log_sum = g.apply(Pw::CUDNN_POINTWISE_LOG, &[sum], rows)?;
        g.pointwise(Pw::CUDNN_POINTWISE_ADD, &[max, log_sum], stats)?;
        // The second product's A operand in the inputs' type, as the fused engine requires.
        let p = g.scratch_of(BF16, dims)?;
        g.pointwise(Pw::CUDNN_POINTWISE_DIV, &[e, sum], p)?;
        g.matmul(p, v, o)?;
        let data = vec![uid::Q, uid::K, uid::V, uid::O, uid::STATS];
        self.plan(
            g,
            data,
            Vec::new(),
            shape.values(&[uid::SCALE, uid::MASKED]),
        )
    }

    /// The backward: dq, dk, dv of the forward above, from the forward's o and statistics.
    /// Data tensors, in order: q, k, v, o, stats, d_o, dq, dk, dv. The plan's workspace
    /// begins with two FP32 buffers of the graph, the rows' do·o and an FP32 dq that cuDNN
    /// accumulates into (atomically: the sums' order, and so their last bit, can differ from
    /// run to run).
    pub fn attention_backward(&self, shape: &AttentionShape) -> Result<AttentionPlan, String> {
        let mut g = Graph::new();
        let (h, kv) = (shape.heads, shape.kv_heads);
        let q = g.data(uid::Q, BF16, shape.rows_of(h))?;
        let k_t = g.data(uid::K, BF16, shape.columns_of(kv))?;
        let v_t = g.data(uid::V, BF16, shape.columns_of(kv))?;
        let o = g.data(uid::O, BF16, shape.rows_of(h))?;
        let stats = g.data(uid::STATS, F32, shape.per_row())?;
        let d_o = g.data(uid::D_O, BF16, shape.rows_of(h))?;
        let dq = g.data(uid::D_Q, BF16, shape.rows_of(h))?;
        let dk = g.data(uid::D_K, BF16, shape.rows_of(kv))?;
        let dv = g.data(uid::D_V, BF16, shape.rows_of(kv))?;
        let (rows, row_strides) = shape.per_row();
        let row_sums = g.tensor(Some(uid::ROW_SUMS), F32, rows, row_strides, Role::Data)?;
        let (full, _) = shape.rows_of(h);
        let dq_sums = g.tensor(Some(uid::DQ_SUMS), F32, full, packed(full), Role::Data)?;
        let scale = g.value(uid::SCALE)?;
        let one = g.value(uid::ONE)?;

        // delta = rowsum(do ∘ o), times one: the place of the dropout scale in the pattern
        // cudnn-frontend writes (and the fused engine matches)
        let products = g.apply(Pw::CUDNN_POINTWISE_MUL, &[d_o, o], full)?;
        let sums = g.scratch(rows)?;
        g.reduction(
            dnn::cudnnReduceTensorOp_t::CUDNN_REDUCE_TENSOR_ADD,
            products,
            sums,
        )?;
        g.pointwise(Pw::CUDNN_POINTWISE_MUL, &[sums, one], row_sums)?;
        // P = exp(q·kᵀ·scale − lse), causal
        let dims = shape.scores();
        let scaled = g.scaled_scores(shape, q, k_t, scale)?;
        let centred = g.apply(Pw::CUDNN_POINTWISE_SUB, &[scaled, stats], dims)?;
        let masked = g.causal(centred, dims)?;
        let p = g.apply(Pw::CUDNN_POINTWISE_EXP, &[masked], dims)?;
        // dv = Pᵀ·do (per query head, then summed over the group)
        // P and dS seen transposed, in BF16 (the products' A operands).
        let [_, hh, t, _] = dims;
        let transposed = [hh * t * t, t * t, 1, t];
        let p_t = g.tensor(None, BF16, dims, transposed, Role::Virtual)?;
        g.reshape(p, p_t)?;
        g.grouped_matmul(p_t, d_o, dv, full, h == kv)?;
        // dS = P·(do·vᵀ − delta)·scale
        let dp = g.scratch(dims)?;
        g.matmul(d_o, v_t, dp)?;
        let shifted = g.apply(Pw::CUDNN_POINTWISE_SUB, &[dp, row_sums], dims)?;
        let weighted = g.apply(Pw::CUDNN_POINTWISE_MUL, &[shifted, p], dims)?;
        let ds = g.apply(Pw::CUDNN_POINTWISE_MUL, &[weighted, scale], dims)?;
        // dk = dSᵀ·q (per query head, then summed over the group)
        let ds_t = g.tensor(None, BF16, dims, transposed, Role::Virtual)?;
        g.reshape(ds, ds_t)?;
        g.grouped_matmul(ds_t, q, dk, full, h == kv)?;
        // dq = dS·k, accumulated in FP32, then rounded
        let (k_dims, k_strides) = shape.rows_of(kv);
        let k = g.tensor(None, BF16, k_dims, k_strides, Role::Virtual)?;
        g.reshape(k_t, k)?;
        g.matmul(ds, k, dq_sums)?;
        g.pointwise(Pw::CUDNN_POINTWISE_IDENTITY, &[dq_sums], dq)?;

        let data = vec![
            uid::Q,
            uid::K,
            uid::V,
            uid::O,
            uid::STATS,
            uid::D_O,
            uid::D_Q,
            uid::D_K,
            uid::D_V,
        ];
        let row_bytes = aligned((rows.iter().product::<i64>() * 4) as u64);
        let dq_bytes = aligned((full.iter().product::<i64>() * 4) as u64);
        let buffers = vec![(uid::ROW_SUMS, row_bytes), (uid::DQ_SUMS, dq_bytes)];
        self.plan(
            g,
            data,
            buffers,
            shape.values(&[uid::SCALE, uid::ONE, uid::MASKED]),
        )
    }
}

/// `bytes` rounded up to 256 (every buffer of a workspace starts aligned).
fn aligned(bytes: u64) -> u64 {
    bytes.div_ceil(256) * 256
}

impl Graph {
    /// `y = a·b` where `y` has the key/value heads: computed per query head into a virtual
    /// BF16 `[B, heads, T, D]` (dims `full`), then summed over each group of heads; straight
    /// into `y` when every query head has its own key/value head.
    fn grouped_matmul(
        &mut self,
        a: Tensor,
        b: Tensor,
        y: Tensor,
        full: [i64; 4],
        same_heads: bool,
    ) -> Result<(), String> {
        if same_heads {
            return self.matmul(a, b, y);
        }
        // BF16, as cudnn-frontend declares it: with FP32 here cuDNN 9.14 builds a plan whose
        // sums are wrong (measured on the H200, 2026-12-04).
        let per_head = self.scratch_of(BF16, full)?;
        self.matmul(a, b, per_head)?;
        self.reduction(
            dnn::cudnnReduceTensorOp_t::CUDNN_REDUCE_TENSOR_ADD,
            per_head,
            y,
        )
    }
}

impl AttentionShape {
    /// The values of the by-value scalars `uids`.
    fn values(&self, uids: &[i64]) -> Vec<(i64, f32)> {
        let value = |uid| match uid {
            uid::SCALE => 1.0 / (self.head_dim as f32).sqrt(),
            uid::MASKED => MASKED_SCORE,
            _ => 1.0,
        };
        uids.iter().map(|&u| (u, value(u))).collect()
    }
}

/// A plan's index and the sequences it takes at once, or `None` where the own kernels run.
pub type Served = Option<(usize, u64)>;

/// The attention plans of one training plan (one per distinct shape and direction, shared by
/// its steps), built on one handle, and the budget of the one workspace they share (steps run
/// one at a time on the compute stream).
pub struct AttentionPlans {
    plans: Vec<(AttentionShape, bool, AttentionPlan)>,
    /// What [`AttentionPlans::prepare`] answered for each step shape and direction asked.
    answers: Vec<(AttentionShape, bool, Served)>,
    budget: u64,
    /// Why some steps run the own kernels instead (the first reason; `None` when none did).
    fallback: Option<String>,
    /// The first step that runs in chunks of sequences, and how.
    chunked: Option<String>,
    cudnn: Cudnn,
}

impl AttentionPlans {
    /// A registry whose workspace may grow to `budget` bytes, or why cuDNN cannot serve.
    pub fn new(budget: u64) -> Result<Self, String> {
        Ok(AttentionPlans {
            plans: Vec::new(),
            answers: Vec::new(),
            budget,
            fallback: None,
            chunked: None,
            cudnn: Cudnn::new()?,
        })
    }

    /// The plan for a step of `shape` and direction: its index and the sequences it takes at
    /// once, `shape.batch` or a divisor of it (the caller executes it once per chunk of that
    /// many sequences: every tensor has the batch outermost). cuDNN's workspace grows with the
    /// batch, so where the whole batch's would outgrow the budget, the largest chunk whose
    /// workspace fits is taken. `None`, with the reason kept for [`AttentionPlans::summary`],
    /// when cuDNN cannot build a plan or not even one sequence's workspace fits: the caller
    /// then launches the own kernels.
    pub fn prepare(&mut self, shape: AttentionShape, backward: bool) -> Served {
        if let Some(&(_, _, answer)) = self
            .answers
            .iter()
            .find(|(s, b, _)| *s == shape && *b == backward)
        {
            return answer;
        }
        let answer = self.build_within_budget(shape, backward);
        self.answers.push((shape, backward, answer));
        answer
    }

    fn build_within_budget(&mut self, shape: AttentionShape, backward: bool) -> Served {
        let mut chunk = shape.batch;
        let refused = loop {
            let part = AttentionShape {
                batch: chunk,
                ..shape
            };
            let built = if backward {
                self.cudnn.attention_backward(&part)
            } else {
                self.cudnn.attention_forward(&part)
            };
            let plan = match built {
                Ok(plan) => plan,
                Err(e) => break e,
            };
            if plan.workspace_bytes <= self.budget {
                if chunk < shape.batch {
                    self.chunked.get_or_insert(format!(
                        "the {} of {} sequences runs in chunks of {chunk} (workspace {} MiB \
                         for all at once)",
                        if backward { "backward" } else { "forward" },
                        shape.batch,
                        whole_batch_workspace(plan.workspace_bytes, chunk, shape.batch) >> 20
                    ));
                }
                self.plans.push((part, backward, plan));
                return Some((self.plans.len() - 1, chunk));
            }
            let per_sequence = plan.workspace_bytes.div_ceil(chunk);
            match smaller_chunk(shape.batch, chunk, per_sequence, self.budget) {
                Some(d) => chunk = d,
                None => {
                    break format!(
                        "its workspace of {} MiB is more than the {} MiB the plan leaves free, \
                         {} MiB for even one sequence",
                        whole_batch_workspace(plan.workspace_bytes, chunk, shape.batch) >> 20,
                        self.budget >> 20,
                        per_sequence >> 20
                    );
                }
            }
        };
        self.fallback.get_or_insert(format!("{shape:?}: {refused}"));
        None
    }

    /// The shared workspace: the largest of the plans'.
    pub fn workspace_bytes(&self) -> u64 {
        self.plans
            .iter()
            .map(|(_, _, p)| p.workspace_bytes)
            .max()
            .unwrap_or(0)
    }

    /// Which attention runs, for the user: cuDNN's version and plans, and why any step runs
    /// the own kernels.
    pub fn summary(&self) -> String {
        let v = self.cudnn.version();
        let (major, minor, patch) = (v / 10000, v / 100 % 100, v % 100);
        let mut s = match self.plans.len() {
            0 => format!(
                "attention: own kernels (cuDNN {major}.{minor}.{patch} loads, but serves no \
                 attention step of this plan)"
            ),
            n => format!(
                "attention: cuDNN {major}.{minor}.{patch} fused flash attention ({n} plan{}, \
                 workspace {} MiB)",
                if n == 1 { "" } else { "s" },
                self.workspace_bytes().div_ceil(1 << 20)
            ),
        };
        if let Some(how) = &self.chunked {
            s.push_str(&format!("; {how}"));
        }
        if let Some(why) = &self.fallback {
            s.push_str(&format!("; own kernels where cuDNN cannot serve ({why})"));
        }
        s
    }

    /// True when no step runs through cuDNN.
    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// Executes plan `index` on `tensors` (the order of [`Cudnn::attention_forward`] or
    /// [`Cudnn::attention_backward`]) with the shared workspace at `workspace`.
    ///
    /// # Safety
    /// As [`Cudnn::execute`]; `workspace` holds [`AttentionPlans::workspace_bytes`].
    pub unsafe fn execute(
        &self,
        index: usize,
        tensors: &[u64],
        workspace: u64,
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<(), String> {
        let plan = &self.plans[index].2;
        let pack = plan.bind(tensors, workspace)?;
        // SAFETY: as the caller vouches; the pack lives until cuDNN has enqueued the work.
        unsafe { self.cudnn.execute(plan, &pack, stream) }
    }
}

/// The next chunk of sequences to try after one of `chunk` whose workspace, `per_sequence`
/// bytes a sequence, outgrew `budget`: the largest divisor of `batch` below `chunk` whose share
/// fits (cuDNN's workspace is about proportional to the batch), `None` when not even one fits.
fn smaller_chunk(batch: u64, chunk: u64, per_sequence: u64, budget: u64) -> Option<u64> {
    let fits = (budget / per_sequence.max(1)).min(chunk - 1);
    (1..=fits).rev().find(|&d| batch.is_multiple_of(d))
}

/// A workspace of `bytes` for `chunk` sequences scaled to `batch` of them.
fn whole_batch_workspace(bytes: u64, chunk: u64, batch: u64) -> u64 {
    bytes / chunk * batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outgrown_workspace_tries_the_largest_dividing_chunk_that_fits() {
        // 7B FP8 in 16 GiB: 32 sequences, about 28 MiB of workspace each, 557 MiB left.
        let mib = 1u64 << 20;
        assert_eq!(smaller_chunk(32, 32, 28 * mib, 557 * mib), Some(16));
        assert_eq!(
            smaller_chunk(32, 16, 40 * mib, 557 * mib),
            Some(8),
            "underestimated"
        );
        assert_eq!(
            smaller_chunk(12, 12, 100 * mib, 500 * mib),
            Some(4),
            "5 does not divide"
        );
        assert_eq!(smaller_chunk(7, 7, 100 * mib, 500 * mib), Some(1));
        assert_eq!(smaller_chunk(8, 8, 600 * mib, 500 * mib), None);
        assert_eq!(
            smaller_chunk(8, 1, 400 * mib, 500 * mib),
            None,
            "one already tried"
        );
    }

    fn offset(strides: [i64; 4], index: [i64; 4]) -> i64 {
        strides.iter().zip(index).map(|(s, i)| s * i).sum()
    }

    /// cuDNN's `[B, H, T, D]` views address the elements of the `[B, T, H, D]` tensors the
    /// plans hold (ops/attention.rs: query head h of token t at ((b·T + t)·H + h)·D), the keys
    /// transposed, and the statistics `[B, H, T]` as the own kernels write them.
    #[test]
    fn the_views_address_the_plans_layouts() {
        let shape = AttentionShape {
            batch: 3,
            seq: 5,
            heads: 6,
            kv_heads: 2,
            head_dim: 4,
        };
        let [_, t_len, h_len, d_len] = [3, 5, 6, 4];
        let bshd = |heads: i64, [b, h, t, d]: [i64; 4]| ((b * t_len + t) * heads + h) * d_len + d;
        for (b, h, t, d) in [(0, 0, 0, 0), (2, 5, 4, 3), (1, 3, 2, 1)] {
            let (dims, strides) = shape.rows_of(6);
            assert_eq!(dims, [3, 6, 5, 4]);
            assert_eq!(offset(strides, [b, h, t, d]), bshd(h_len, [b, h, t, d]));
            let kh = h % 2;
            let (dims, strides) = shape.columns_of(2);
            assert_eq!(dims, [3, 2, 4, 5]);
            assert_eq!(offset(strides, [b, kh, d, t]), bshd(2, [b, kh, t, d]));
            let (dims, strides) = shape.per_row();
            assert_eq!(dims, [3, 6, 5, 1]);
            assert_eq!(offset(strides, [b, h, t, 0]), (b * h_len + h) * t_len + t);
        }
        assert_eq!(shape.scores(), [3, 6, 5, 5]);
        assert_eq!(packed([3, 6, 5, 5]), [150, 25, 5, 1]);
    }

    /// Workspace buffers start 256-byte aligned.
    #[test]
    fn buffers_are_rounded_up_to_256_bytes() {
        assert_eq!([0, 1, 256, 257].map(aligned), [0, 256, 256, 512]);
    }
}
