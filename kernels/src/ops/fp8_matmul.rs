//! `Fp8Matmul`: `c = (a · bᵀ) · a_descale · b_descale` with both FP8 operands stored K-major,
//! FP32 accumulation, the result stored in `out` (BF16 in LLMQ's recipe).
//!
//! Layout contract (what the CUDA backend maps onto cuBLASLt's FP8 GEMM, which only accepts the
//! "TN" form): `a` is `[.., K]` viewed as `[m, K]`, `b` is `[n, K]`, both row-major, so both are
//! contiguous in the contraction dimension K; `c` is `[.., n]` (`[m, n]` row-major). In
//! cuBLASLt's column-major terms this is `cᵀ[n×m] = op(b)·op(a)` with `b` as matrix A
//! (`CUBLAS_OP_T`, stored K×n, ld K) and `a` as matrix B (`CUBLAS_OP_N`, stored K×m, ld K), and
//! `ldc = n`. `b_descale` and `a_descale` are single FP32 values in device memory: they go to
//! `CUBLASLT_MATMUL_DESC_A_SCALE_POINTER` and `..._B_SCALE_POINTER` respectively. A matmul that
//! contracts over another dimension gets its operands transposed: from `QuantizeDual`'s second
//! output, or `TransposeFp8` of the first layout.

use crate::op::check;
use crate::ops::linear::gemm;
use crate::{DType, OpError, OpSpec, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `c = (a · bᵀ) · a_descale · b_descale`, both operands FP8 and K-major.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fp8Matmul {
    /// The dtype of `c`.
    pub out: DType,
}

impl OpSpec for Fp8Matmul {
    fn name(&self) -> &'static str {
        "fp8_matmul"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["a", "a_descale", "b", "b_descale"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["c"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let (a, b) = (&inputs[0], &inputs[2]);
        for (name, t) in [("a", a), ("b", b)] {
            check::shape("fp8_matmul", t.dtype.is_fp8(), || {
                format!("operand {name} must be FP8, got {}", t.dtype)
            })?;
        }
        check::dtype("fp8_matmul", "a_descale", &inputs[1], DType::F32)?;
        check::dtype("fp8_matmul", "b_descale", &inputs[3], DType::F32)?;
        check::shape(
            "fp8_matmul",
            inputs[1].shape == [1] && inputs[3].shape == [1],
            || "descales must be single values ([1])".into(),
        )?;
        check::shape("fp8_matmul", self.out.is_float(), || {
            format!("output dtype {} is not a float dtype", self.out)
        })?;
        check::shape(
            "fp8_matmul",
            b.shape.len() == 2 && a.last_dim() == b.shape[1],
            || {
                format!(
                    "a {:?} and b {:?} must share their last (contraction) dimension, b being 2-D",
                    a.shape, b.shape
                )
            },
        )?;
        Ok(vec![a.with_last_dim(b.shape[0]).with_dtype(self.out)])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        2.0 * inputs[0].numel() as f64 * inputs[2].shape[0] as f64
    }
    fn uses_matrix_units(&self) -> bool {
        true
    }
    fn library_matmuls(&self, _: &[TensorType], _: &[TensorType]) -> f64 {
        1.0
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (a, b) = (inputs[0], inputs[2]);
        let descale = inputs[1].data[0] * inputs[3].data[0];
        let (n, k) = (b.shape[0] as usize, b.shape[1] as usize);
        let m = a.data.len() / k;
        let c = &mut outputs[0].data;
        // c[m×n] = a[m×k] · bᵀ, bᵀ read through strides (row stride 1, column stride k).
        gemm(m, k, n, a.data, (k as isize, 1), b.data, (1, k as isize), c);
        for v in c.iter_mut() {
            *v *= descale;
        }
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("out", self.out.to_string())]
    }
}
