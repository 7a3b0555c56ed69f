//! `SumSquares`: `Σ x²` of one tensor, in FP32. Run over every gradient with its output
//! accumulated, it gives the squared global norm for clipping.

use crate::op::check;
use crate::{DType, OpError, OpSpec, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `s = Σ x²`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SumSquares;

impl OpSpec for SumSquares {
    fn name(&self) -> &'static str {
        "sum_squares"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["s"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        check::float("sum_squares", "x", &inputs[0])?;
        Ok(vec![TensorType::new([1], DType::F32)])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        2.0 * inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        // FP64 partial sum so the reference does not depend on summation order.
        outputs[0].data[0] = inputs[0]
            .data
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>() as f32;
        Ok(())
    }
}
