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
//! its descriptors and its algorithm (cuBLASLt's first heuristic choice) once, at start-up.
//! In all three, cuBLASLt's A is the op's second operand and B its first.

use cudarc::cublaslt::{result, sys};
use cudarc::driver::sys::CUstream;
use llmq_kernels::{DType, Op};
use std::ffi::c_void;

/// The workspace cuBLASLt may use (32 MiB, its recommendation for Hopper).
pub const WORKSPACE_BYTES: usize = 32 << 20;

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
    /// The operands' dtype (BF16 or F32).
    dtype: DType,
    /// `D += A·B` instead of `D = A·B`.
    accumulate: bool,
}

impl GemmShape {
    /// The shape of a matmul step: `inputs` are the two operands' shapes in the op's order,
    /// or `None` when the op is not one of the three matmuls.
    pub fn of(op: &Op, inputs: [&[u64]; 2], dtype: DType, accumulate: bool) -> Option<Self> {
        let rows = |s: &[u64]| s[..s.len() - 1].iter().product::<u64>();
        let last = |s: &[u64]| *s.last().unwrap_or(&1);
        let (m, n, k, trans_a, trans_b, lda, ldb, ldc) = match op {
            // inputs: x [r, K], W [M, K]
            Op::Linear(_) => {
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
            dtype,
            accumulate,
        })
    }
}

/// Why cuBLASLt could not prepare or run a matmul.
#[derive(Debug, thiserror::Error)]
#[error("cuBLASLt {stage} for {shape:?}: {error:?}")]
pub struct GemmError {
    stage: &'static str,
    shape: Option<GemmShape>,
    error: result::CublasError,
}

fn err(
    stage: &'static str,
    shape: Option<GemmShape>,
) -> impl FnOnce(result::CublasError) -> GemmError {
    move |error| GemmError {
        stage,
        shape,
        error,
    }
}

/// The descriptors and the chosen algorithm of one shape.
struct Prepared {
    shape: GemmShape,
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
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

    /// The index of `shape`'s prepared matmul, preparing it (and choosing its algorithm) the
    /// first time.
    pub fn prepare(&mut self, shape: GemmShape) -> Result<usize, GemmError> {
        if let Some(i) = self.prepared.iter().position(|p| p.shape == shape) {
            return Ok(i);
        }
        let e = |stage| err(stage, Some(shape));
        let data_type = match shape.dtype {
            DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
            _ => sys::cudaDataType::CUDA_R_32F,
        };
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
        let layout = |rows, cols, ld| {
            result::create_matrix_layout(data_type, rows, cols, ld as i64)
                .map_err(e("creating a layout"))
        };
        let layouts = [
            layout(a_rows, a_cols, shape.lda)?,
            layout(b_rows, b_cols, shape.ldb)?,
            layout(shape.m, shape.n, shape.ldc)?,
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
        // SAFETY: every descriptor was created above and is live.
        let heuristic = unsafe {
            result::get_matmul_algo_heuristic(
                self.handle,
                desc,
                layouts[0],
                layouts[1],
                layouts[2],
                layouts[2],
                pref,
            )
        };
        // SAFETY: `pref` is live and destroyed once.
        unsafe { result::destroy_matmul_pref(pref) }.map_err(e("destroying the preference"))?;
        let algo = heuristic.map_err(e("choosing an algorithm"))?.algo;
        self.prepared.push(Prepared {
            shape,
            desc,
            layouts,
            algo,
        });
        Ok(self.prepared.len() - 1)
    }

    /// Enqueues prepared matmul `index` on `stream`: `d = a·b` (or `d += a·b`).
    pub fn run(
        &self,
        index: usize,
        a: u64,
        b: u64,
        d: u64,
        stream: CUstream,
    ) -> Result<(), GemmError> {
        let p = &self.prepared[index];
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
                &p.algo,
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
}
