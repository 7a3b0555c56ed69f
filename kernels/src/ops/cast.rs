//! `Cast`: conversion to another storage dtype. The value is unchanged; the rounding to the
//! target dtype (nearest even, saturating for FP8) happens when the result is stored.

use crate::op::check;
use crate::{DType, OpError, OpSpec, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `y = round_to(to, x)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cast {
    /// The dtype of the result.
    pub to: DType,
}

impl OpSpec for Cast {
    fn name(&self) -> &'static str {
        "cast"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["y"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        check::float("cast", "x", &inputs[0])?;
        Ok(vec![inputs[0].with_dtype(self.to)])
    }
    fn flops(&self, _: &[TensorType], _: &[TensorType]) -> f64 {
        0.0
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        outputs[0].data.copy_from_slice(inputs[0].data);
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("to", self.to.to_string())]
    }
}
