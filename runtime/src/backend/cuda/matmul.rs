//! `linear` and its two backward ops through cuBLASLt (BF16 or FP32 operands, FP32 compute).
//!
//! Tensors are row-major; cuBLASLt is column-major, and a row-major `[r, c]` matrix is the
//! column-major `[c, r]` matrix with leading dimension `c`. So each op is written for the
//! transposed result (rows = the rows of the plan's tensors):
//!
//! | op                       | row-major                  | column-major, as cuBLASLt runs it   |
//! |--------------------------|----------------------------|-------------------------------------|
//! | `linear`                 | `y[r,M] = x[r,K]·W[M,K]ᵀ`  | `yᵀ[M,r] = op_T(W)[M,K] · xᵀ[K,r]`  |
//! | `linear_backward_data`   | `dx[r,K] = dy[r,M]·W[M,K]` | `dxᵀ[K,r] = Wᵀ[K,M] · dyᵀ[M,r]`     |
//! | `linear_backward_weight` | `dW[M,K] = dy[r,M]ᵀ·x[r,K]`| `dWᵀ[K,M] = xᵀ[K,r] · op_T(dyᵀ)[r,M]` |
//!
//! Accumulation (`+=`, gradient accumulation) is `beta = 1` with C = D. Every distinct shape gets
//! its descriptors and up to [`CANDIDATES`] of cuBLASLt's heuristic algorithms once, at start-up;
//! it runs the heuristics' first unless `autotune.rs` times them all and chooses another.
//! In all three, cuBLASLt's A is the op's second operand and B its first.
//!
//! `fp8_matmul` (`c[r,n] = a[r,K]·b[n,K]ᵀ · a_descale · b_descale`) has `linear`'s mapping, which
//! is the "TN" form cuBLASLt's FP8 GEMM requires (A transposed, B not): A is `b`, B is `a`, D is
//! BF16 (or FP32), accumulation in FP32. The two descales stay on the device: their addresses go
//! to `CUBLASLT_MATMUL_DESC_A_SCALE_POINTER` (`b`'s) and `..._B_SCALE_POINTER` (`a`'s) just
//! before each call (the descriptor is shared by the steps of one shape; setting an attribute
//! is a host-side write, read when the call is enqueued, so captured graphs keep each step's).
//! On Hopper cuBLASLt takes e4m3×e4m3, e4m3×e5m2 and e5m2×e4m3; e5m2×e5m2 is refused at start.

use cudarc::cublaslt::{result, sys};
use cudarc::driver::sys::CUstream;
use llmq_kernels::{DType, Op};
use std::ffi::c_void;

/// The workspace cuBLASLt may use (32 MiB, its recommendation for Hopper).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// How many of the heuristics' algorithms each shape keeps, best first, for autotuning.
pub const CANDIDATES: usize = 8;

/// A shape of one of the three matmul ops, the key of its prepared descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    /// Column-major result rows, result columns, and the reduced dimension.
    m: u64,
    n: u64,
    k: u64,
    /// Transpose flags of A and B.
    trans_a: bool,
    trans_b: bool,
    /// Leading dimensions of A, B and C/D.
    lda: u64,
    ldb: u64,
    ldc: u64,
    /// The dtypes of A, B and C/D (all BF16 or all F32; FP8 A and B with a BF16 or F32 D).
    types: [DType; 3],
    /// `D += A·B` instead of `D = A·B`.
    accumulate: bool,
}

impl GemmShape {
    /// The shape of a matmul step: `inputs` are the two operands' shapes in the op's order
    /// (for `fp8_matmul`, `a` and `b`), or `None` when the op is not a matmul. Every matrix has
    /// dtype `dtype`; [`GemmShape::with_types`] sets others.
    pub fn of(op: &Op, inputs: [&[u64]; 2], dtype: DType, accumulate: bool) -> Option<Self> {
        let rows = |s: &[u64]| s[..s.len() - 1].iter().product::<u64>();
        let last = |s: &[u64]| *s.last().unwrap_or(&1);
        let (m, n, k, trans_a, trans_b, lda, ldb, ldc) = match op {
            // inputs: x [r, K], W [M, K] (fp8_matmul: a [r, K], b [M, K])
            Op::Linear(_) | Op::Fp8Matmul(_) => {
                let (big_m, big_k) = (inputs[1][0], inputs[1][1]);
                let r = rows(inputs[0]);
                (big_m, r, big_k, true, false, big_k, big_k, big_m)
            }
            // inputs: dy [r, M], W [M, K]
            Op::LinearBackwardData(_) => {
                let (big_m, big_k) = (inputs[1][0], inputs[1][1]);
                let r = rows(inputs[0]);
                (big_k, r, big_m, false, false, big_k, big_m, big_k)
            }
            // inputs: dy [r, M], x [r, K]
            Op::LinearBackwardWeight(_) => {
                let (big_m, big_k) = (last(inputs[0]), last(inputs[1]));
                let r = rows(inputs[0]);
                (big_k, big_m, r, false, true, big_k, big_m, big_k)
            }
            _ => return None,
        };
        Some(GemmShape {
            m,
            n,
            k,
            trans_a,
            trans_b,
            lda,
            ldb,
            ldc,
            types: [dtype; 3],
            accumulate,
        })
    }

    /// The same shape with these dtypes of cuBLASLt's A, B and D.
    pub fn with_types(self, a: DType, b: DType, d: DType) -> Self {
        GemmShape {
            types: [a, b, d],
            ..self
        }
    }

    /// True when A and B are FP8 (the scaled FP8 GEMM).
    fn is_fp8(&self) -> bool {
        self.types[0].is_fp8() && self.types[1].is_fp8()
    }

    /// Why cuBLASLt cannot run this combination of dtypes and transposes, if it cannot.
    fn unsupported(&self) -> Option<String> {
        let [a, b, d] = self.types;
        if a.is_fp8() != b.is_fp8() {
            return Some(format!(
                "one FP8 operand and one {}",
                if a.is_fp8() { b } else { a }
            ));
        }
        if !self.is_fp8() {
            let same = a == b && b == d && matches!(a, DType::BF16 | DType::F32);
            return (!same).then(|| format!("{a}×{b}→{d}: BF16 or F32 throughout only"));
        }
        if a == DType::F8E5M2 && b == DType::F8E5M2 {
            return Some("e5m2×e5m2 (cuBLASLt takes e4m3×e4m3, e4m3×e5m2, e5m2×e4m3)".into());
        }
        if !matches!(d, DType::BF16 | DType::F32) {
            return Some(format!("an FP8 matmul into {d} (BF16 or F32 only here)"));
        }
        if !self.trans_a || self.trans_b {
            return Some("an FP8 matmul not in the TN form".into());
        }
        None
    }
}

/// cuBLASLt's name of a storage dtype.
fn cuda_data_type(dtype: DType) -> sys::cudaDataType {
    match dtype {
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F8E4M3 => sys::cudaDataType::CUDA_R_8F_E4M3,
        DType::F8E5M2 => sys::cudaDataType::CUDA_R_8F_E5M2,
        _ => sys::cudaDataType::CUDA_R_32F,
    }
}

/// Why cuBLASLt could not prepare or run a matmul.
#[derive(Debug, thiserror::Error)]
#[error("cuBLASLt {stage} for {shape:?}: {error}")]
pub struct GemmError {
    stage: &'static str,
    shape: Option<GemmShape>,
    error: String,
}

fn err(
    stage: &'static str,
    shape: Option<GemmShape>,
) -> impl FnOnce(result::CublasError) -> GemmError {
    move |error| GemmError {
        stage,
        shape,
        error: format!("{error:?}"),
    }
}

/// The descriptors, the heuristics' algorithms and the chosen one of one shape.
struct Prepared {
    shape: GemmShape,
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    /// The heuristics' algorithms, in their order (at least one).
    candidates: Vec<sys::cublasLtMatmulAlgo_t>,
    /// The index into `candidates` that [`Gemms::run`] uses.
    chosen: usize,
}

/// The cuBLASLt handle, the workspace, and one prepared matmul per distinct shape.
pub struct Gemms {
    handle: sys::cublasLtHandle_t,
    workspace: u64,
    prepared: Vec<Prepared>,
}

impl Gemms {
    /// A handle; `workspace` is a device allocation of [`WORKSPACE_BYTES`].
    pub fn new(workspace: u64) -> Result<Self, GemmError> {
        let handle = result::create_handle().map_err(err("creating the handle", None))?;
        Ok(Gemms {
            handle,
            workspace,
            prepared: Vec::new(),
        })
    }

    /// The index of `shape`'s prepared matmul, preparing it (and asking the heuristics for its
    /// algorithms) the first time.
    pub fn prepare(&mut self, shape: GemmShape) -> Result<usize, GemmError> {
        if let Some(i) = self.prepared.iter().position(|p| p.shape == shape) {
            return Ok(i);
        }
        let e = |stage| err(stage, Some(shape));
        if let Some(why) = shape.unsupported() {
            return Err(GemmError {
                stage: "checking the dtypes",
                shape: Some(shape),
                error: format!("not supported: {why}"),
            });
        }
        let desc = result::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(e("creating the descriptor"))?;
        for (attr, trans) in [
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                shape.trans_a,
            ),
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                shape.trans_b,
            ),
        ] {
            let op: i32 = trans.into(); // CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
            // SAFETY: `desc` is live; the attribute is an i32 read during the call.
            unsafe {
                result::set_matmul_desc_attribute(
                    desc,
                    attr,
                    (&op) as *const i32 as *const c_void,
                    4,
                )
            }
            .map_err(e("setting a transpose"))?;
        }
        // Stored (column-major) extents: A is m×k, or k×m when transposed; likewise B.
        let (a_rows, a_cols) = if shape.trans_a {
            (shape.k, shape.m)
        } else {
            (shape.m, shape.k)
        };
        let (b_rows, b_cols) = if shape.trans_b {
            (shape.n, shape.k)
        } else {
            (shape.k, shape.n)
        };
        let layout = |dtype, rows, cols, ld| {
            result::create_matrix_layout(cuda_data_type(dtype), rows, cols, ld as i64)
                .map_err(e("creating a layout"))
        };
        let [a_type, b_type, d_type] = shape.types;
        let layouts = [
            layout(a_type, a_rows, a_cols, shape.lda)?,
            layout(b_type, b_rows, b_cols, shape.ldb)?,
            layout(d_type, shape.m, shape.n, shape.ldc)?,
        ];
        let pref = result::create_matmul_pref().map_err(e("creating the preference"))?;
        // SAFETY: `pref` is live; the attribute is a usize read during the call.
        unsafe {
            result::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&WORKSPACE_BYTES) as *const usize as *const c_void,
                std::mem::size_of::<usize>(),
            )
        }
        .map_err(e("setting the workspace"))?;
        let mut results = [sys::cublasLtMatmulHeuristicResult_t {
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
            workspaceSize: 0,
            state: sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS,
            wavesCount: 0.0,
            reserved: [0; 4],
        }; CANDIDATES];
        let mut returned = 0i32;
        // SAFETY: every descriptor was created above and is live; `results` has room for the
        // CANDIDATES results requested, and `returned` receives how many were written.
        let heuristic = unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(
                self.handle,
                desc,
                layouts[0],
                layouts[1],
                layouts[2],
                layouts[2],
                pref,
                CANDIDATES as i32,
                results.as_mut_ptr(),
                &mut returned,
            )
        }
        .result();
        // SAFETY: `pref` is live and destroyed once.
        unsafe { result::destroy_matmul_pref(pref) }.map_err(e("destroying the preference"))?;
        heuristic.map_err(e("choosing an algorithm"))?;
        let candidates: Vec<_> = results[..returned.clamp(0, CANDIDATES as i32) as usize]
            .iter()
            .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
            .map(|r| r.algo)
            .collect();
        if candidates.is_empty() {
            return Err(e("choosing an algorithm")(result::CublasError(
                sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
            )));
        }
        self.prepared.push(Prepared {
            shape,
            desc,
            layouts,
            candidates,
            chosen: 0,
        });
        Ok(self.prepared.len() - 1)
    }

    /// How many algorithms prepared matmul `index` may choose from.
    pub fn candidates(&self, index: usize) -> usize {
        self.prepared[index].candidates.len()
    }

    /// Makes [`Gemms::run`] use candidate `candidate` (below [`Gemms::candidates`]) of `index`.
    pub fn choose(&mut self, index: usize, candidate: usize) {
        assert!(candidate < self.candidates(index), "no such candidate");
        self.prepared[index].chosen = candidate;
    }

    /// Enqueues prepared matmul `index` on `stream` with its chosen algorithm: `d = a·b` (or
    /// `d += a·b`); an FP8 matmul multiplies by the FP32 values at the device addresses
    /// `scales` (A's, then B's).
    pub fn run(
        &self,
        index: usize,
        a: u64,
        b: u64,
        d: u64,
        scales: Option<[u64; 2]>,
        stream: CUstream,
    ) -> Result<(), GemmError> {
        let chosen = self.prepared[index].chosen;
        self.run_candidate(index, chosen, a, b, d, scales, stream)
    }

    /// [`Gemms::run`] with candidate `candidate` of `index` instead of the chosen one.
    #[allow(clippy::too_many_arguments)]
    pub fn run_candidate(
        &self,
        index: usize,
        candidate: usize,
        a: u64,
        b: u64,
        d: u64,
        scales: Option<[u64; 2]>,
        stream: CUstream,
    ) -> Result<(), GemmError> {
        let p = &self.prepared[index];
        if let Some(scales) = scales {
            let attrs = [
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
            ];
            for (attr, ptr) in attrs.into_iter().zip(scales) {
                // SAFETY: `desc` is live; the attribute is a device pointer, read during the
                // call; it addresses one FP32 value of the arena.
                unsafe {
                    result::set_matmul_desc_attribute(
                        p.desc,
                        attr,
                        (&ptr) as *const u64 as *const c_void,
                        std::mem::size_of::<u64>(),
                    )
                }
                .map_err(err("setting a scale pointer", Some(p.shape)))?;
            }
        }
        let alpha = 1.0f32;
        let beta = if p.shape.accumulate { 1.0f32 } else { 0.0 };
        // SAFETY: the descriptors and algorithm were prepared for exactly these extents; `a`,
        // `b` and `d` address tensors of the plan's arena of those extents (checked when the
        // launches were built); alpha and beta are read during the call (host pointer mode).
        unsafe {
            result::matmul(
                self.handle,
                p.desc,
                (&alpha) as *const f32 as *const c_void,
                (&beta) as *const f32 as *const c_void,
                a as *const c_void,
                p.layouts[0],
                b as *const c_void,
                p.layouts[1],
                d as *const c_void,
                p.layouts[2],
                d as *mut c_void,
                p.layouts[2],
                &p.candidates[candidate],
                self.workspace as *mut c_void,
                WORKSPACE_BYTES,
                stream as sys::cudaStream_t,
            )
        }
        .map_err(err("matmul", Some(p.shape)))
    }
}

impl Drop for Gemms {
    fn drop(&mut self) {
        // SAFETY: every object was created by this struct and is destroyed once; errors while
        // tearing down are ignored (nothing can be done about them in a destructor).
        unsafe {
            for p in &self.prepared {
                for l in p.layouts {
                    let _ = result::destroy_matrix_layout(l);
                }
                let _ = result::destroy_matmul_desc(p.desc);
            }
            let _ = result::destroy_handle(self.handle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmq_kernels::ops::{Linear, LinearBackwardData, LinearBackwardWeight};
    use llmq_kernels::{View, ViewMut};

    /// What cuBLASLt computes for `shape`: `D = op(A)·op(B) (+ D)`, every matrix column-major
    /// with the shape's leading dimensions, `op` a transpose where the shape says so.
    fn column_major_gemm(s: &GemmShape, a: &[f32], b: &[f32], d: &mut [f32]) {
        let at = |i: u64, k: u64| {
            if s.trans_a {
                a[(i * s.lda + k) as usize]
            } else {
                a[(k * s.lda + i) as usize]
            }
        };
        let bt = |k: u64, j: u64| {
            if s.trans_b {
                b[(k * s.ldb + j) as usize]
            } else {
                b[(j * s.ldb + k) as usize]
            }
        };
        for i in 0..s.m {
            for j in 0..s.n {
                let sum: f32 = (0..s.k).map(|k| at(i, k) * bt(k, j)).sum();
                let out = &mut d[(j * s.ldc + i) as usize];
                *out = if s.accumulate { *out + sum } else { sum };
            }
        }
    }

    /// Each matmul op, run as the launcher runs it (A = its second operand, B = its first,
    /// D = its output, all row-major in memory), equals the catalogue's CPU reference.
    #[test]
    fn the_column_major_mapping_of_each_matmul_matches_the_cpu_reference() {
        let (rows, m, k) = (3u64, 5u64, 4u64);
        let cases: [(Op, [Vec<u64>; 2]); 3] = [
            (Linear.into(), [vec![rows, k], vec![m, k]]),
            (LinearBackwardData.into(), [vec![rows, m], vec![m, k]]),
            (LinearBackwardWeight.into(), [vec![rows, m], vec![rows, k]]),
        ];
        for (op, shapes) in cases {
            let values = |shape: &[u64], salt: u64| -> Vec<f32> {
                let n: u64 = shape.iter().product();
                (0..n)
                    .map(|i| ((i * 7 + salt * 3) % 11) as f32 - 5.0)
                    .collect()
            };
            let (x0, x1) = (values(&shapes[0], 1), values(&shapes[1], 2));
            let types: Vec<_> = shapes
                .iter()
                .map(|s| llmq_kernels::TensorType::new(s.clone(), DType::F32))
                .collect();
            let out_shape = op.infer(&types).unwrap()[0].shape.clone();
            let mut expected = vec![0f32; out_shape.iter().product::<u64>() as usize];
            let inputs = [
                View {
                    shape: &shapes[0],
                    data: &x0,
                },
                View {
                    shape: &shapes[1],
                    data: &x1,
                },
            ];
            let mut outputs = [ViewMut {
                shape: &out_shape,
                data: &mut expected,
            }];
            op.spec().cpu(&inputs, &mut outputs).unwrap();

            for accumulate in [false, true] {
                let shape = GemmShape::of(&op, [&shapes[0], &shapes[1]], DType::F32, accumulate)
                    .expect("a matmul op");
                let mut d = vec![1f32; expected.len()];
                column_major_gemm(&shape, &x1, &x0, &mut d);
                let want: Vec<f32> = expected
                    .iter()
                    .map(|&e| if accumulate { e + 1.0 } else { e })
                    .collect();
                assert_eq!(d, want, "{op} (accumulate {accumulate}) as {shape:?}");
            }
        }
    }

    /// `fp8_matmul` in `linear`'s mapping (A = `b`, B = `a`) equals its CPU reference once the
    /// two descales multiply the sum, and the shape is the TN form with FP8 A and B.
    #[test]
    fn the_fp8_matmul_maps_onto_the_tn_gemm_and_its_descales() {
        use llmq_kernels::ops::Fp8Matmul;
        let (rows, n, k) = (3u64, 5u64, 4u64);
        let op: Op = Fp8Matmul { out: DType::BF16 }.into();
        let a: Vec<f32> = (0..rows * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 - 2.0).collect();
        let (a_descale, b_descale) = ([0.5f32], [0.25f32]);
        let shapes: [&[u64]; 4] = [&[rows, k], &[1], &[n, k], &[1]];
        let data: [&[f32]; 4] = [&a, &a_descale, &b, &b_descale];
        let inputs: Vec<View> = shapes
            .iter()
            .zip(data)
            .map(|(&shape, data)| View { shape, data })
            .collect();
        let mut expected = vec![0f32; (rows * n) as usize];
        let mut outputs = [ViewMut {
            shape: &[rows, n],
            data: &mut expected,
        }];
        op.spec().cpu(&inputs, &mut outputs).unwrap();

        let shape = GemmShape::of(&op, [shapes[0], shapes[2]], DType::BF16, false)
            .expect("a matmul op")
            .with_types(DType::F8E4M3, DType::F8E5M2, DType::BF16);
        assert!(shape.is_fp8() && shape.trans_a && !shape.trans_b);
        assert_eq!(shape.unsupported(), None);
        let mut d = vec![0f32; expected.len()];
        column_major_gemm(&shape, &b, &a, &mut d);
        let scaled: Vec<f32> = d.iter().map(|v| v * b_descale[0] * a_descale[0]).collect();
        assert_eq!(scaled, expected);

        let e5m2 = shape.with_types(DType::F8E5M2, DType::F8E5M2, DType::BF16);
        assert!(e5m2.unsupported().unwrap().contains("e5m2×e5m2"));
        let mixed = shape.with_types(DType::F8E4M3, DType::BF16, DType::BF16);
        assert!(mixed.unsupported().is_some());
    }
}
