//! `Zero`: sets a tensor to zero in place (gradients after the optimizer step).

use crate::{OpError, OpSpec, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `x = 0`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Zero;

impl OpSpec for Zero {
    fn name(&self) -> &'static str {
        "zero"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["x"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, _: &[TensorType], _: &[TensorType]) -> f64 {
        0.0
    }
    fn bytes(&self, _: &[TensorType], outputs: &[TensorType]) -> f64 {
        outputs[0].bytes() as f64
    }
    fn cpu(&self, _: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        outputs[0].data.fill(0.0);
        Ok(())
    }
}
