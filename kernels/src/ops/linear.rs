//! `Linear`: `y = x · Wᵀ` with `x [.., K]`, `W [M, K]`, `y [.., M]` (PyTorch's layout), and its
//! two backward matmuls. The CPU reference uses `matrixmultiply`'s FP32 GEMM.

use crate::op::check;
use crate::{BackwardStep, OpError, OpSpec, Ref, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `y = x · Wᵀ`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Linear;

/// `dx = dy · W`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearBackwardData;

/// `dW = dyᵀ · x`, summed over all rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearBackwardWeight;

/// `c[m×n] = a[m×k] · b[k×n]`, each operand given by its row and column strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (a_rs, a_cs): (isize, isize),
    b: &[f32],
    (b_rs, b_cs): (isize, isize),
    c: &mut [f32],
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm operand too small"
    );
    // SAFETY: the strides address only elements inside `a`, `b` and `c`, whose lengths are
    // checked above; `c` is a unique borrow, so it aliases neither input.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            a_rs,
            a_cs,
            b.as_ptr(),
            b_rs,
            b_cs,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

fn matmul_flops(rows: u64, m: u64, k: u64) -> f64 {
    2.0 * rows as f64 * m as f64 * k as f64
}

impl OpSpec for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x", "w"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["y"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let (x, w) = (&inputs[0], &inputs[1]);
        check::float("linear", "x", x)?;
        check::same_dtype("linear", "w", x, w)?;
        check::shape("linear", w.shape.len() == 2, || {
            format!("weight must be 2-D [out, in], got {:?}", w.shape)
        })?;
        check::shape("linear", x.last_dim() == w.shape[1], || {
            format!(
                "x's last dimension ({}) must equal the weight's input dimension ({}) of weight {:?}",
                x.last_dim(),
                w.shape[1],
                w.shape
            )
        })?;
        Ok(vec![x.with_last_dim(w.shape[0])])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        matmul_flops(inputs[0].rows(), inputs[1].shape[0], inputs[1].shape[1])
    }
    fn uses_matrix_units(&self) -> bool {
        true
    }
    fn library_matmuls(&self, _: &[TensorType], _: &[TensorType]) -> f64 {
        1.0
    }
    fn backward(&self, _: &[TensorType]) -> Option<Vec<BackwardStep>> {
        use Ref::*;
        Some(vec![
            BackwardStep::new(
                LinearBackwardData,
                &[GradOutput(0), Input(1)],
                &[GradInput(0)],
            ),
            BackwardStep::new(
                LinearBackwardWeight,
                &[GradOutput(0), Input(0)],
                &[GradInput(1)],
            ),
        ])
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (x, w) = (inputs[0], inputs[1]);
        let (m, k) = (w.shape[0] as usize, w.shape[1] as usize);
        let rows = x.data.len() / k;
        // y[rows×m] = x[rows×k] · wᵀ, wᵀ read through strides (row stride 1, column stride k).
        gemm(
            rows,
            k,
            m,
            x.data,
            (k as isize, 1),
            w.data,
            (1, k as isize),
            outputs[0].data,
        );
        Ok(())
    }
}

impl OpSpec for LinearBackwardData {
    fn name(&self) -> &'static str {
        "linear_backward_data"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["dy", "w"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["dx"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let (dy, w) = (&inputs[0], &inputs[1]);
        check::float("linear_backward_data", "dy", dy)?;
        check::shape(
            "linear_backward_data",
            w.shape.len() == 2 && dy.last_dim() == w.shape[0],
            || format!("dy {:?} does not match weight {:?}", dy.shape, w.shape),
        )?;
        Ok(vec![dy.with_last_dim(w.shape[1])])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        matmul_flops(inputs[0].rows(), inputs[1].shape[0], inputs[1].shape[1])
    }
    fn uses_matrix_units(&self) -> bool {
        true
    }
    fn library_matmuls(&self, _: &[TensorType], _: &[TensorType]) -> f64 {
        1.0
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (dy, w) = (inputs[0], inputs[1]);
        let (m, k) = (w.shape[0] as usize, w.shape[1] as usize);
        let rows = dy.data.len() / m;
        gemm(
            rows,
            m,
            k,
            dy.data,
            (m as isize, 1),
            w.data,
            (k as isize, 1),
            outputs[0].data,
        );
        Ok(())
    }
}

impl OpSpec for LinearBackwardWeight {
    fn name(&self) -> &'static str {
        "linear_backward_weight"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["dy", "x"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["dw"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let (dy, x) = (&inputs[0], &inputs[1]);
        check::float("linear_backward_weight", "dy", dy)?;
        check::shape("linear_backward_weight", dy.rows() == x.rows(), || {
            format!(
                "dy {:?} and x {:?} have different row counts",
                dy.shape, x.shape
            )
        })?;
        Ok(vec![TensorType::new(
            [dy.last_dim(), x.last_dim()],
            dy.dtype,
        )])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        matmul_flops(inputs[0].rows(), inputs[0].last_dim(), inputs[1].last_dim())
    }
    fn uses_matrix_units(&self) -> bool {
        true
    }
    fn library_matmuls(&self, _: &[TensorType], _: &[TensorType]) -> f64 {
        1.0
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (dy, x) = (inputs[0], inputs[1]);
        let m = *dy.shape.last().unwrap_or(&1) as usize;
        let k = *x.shape.last().unwrap_or(&1) as usize;
        let rows = dy.data.len() / m;
        // dw[m×k] = dyᵀ[m×rows] · x[rows×k]
        gemm(
            m,
            rows,
            k,
            dy.data,
            (1, m as isize),
            x.data,
            (k as isize, 1),
            outputs[0].data,
        );
        Ok(())
    }
}
