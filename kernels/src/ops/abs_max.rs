//! `AbsMax`: the largest absolute value of a tensor, the input of a per-tensor FP8 scale.

use crate::op::check;
use crate::{DType, OpError, OpSpec, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `amax = max |x|`; any NaN in `x` makes it NaN.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AbsMax;

impl OpSpec for AbsMax {
    fn name(&self) -> &'static str {
        "abs_max"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["amax"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        check::float("abs_max", "x", &inputs[0])?;
        Ok(vec![TensorType::new([1], DType::F32)])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        // A NaN anywhere makes the result NaN, so a broken tensor cannot hide behind a scale.
        let mut amax = 0.0f32;
        for &v in inputs[0].data {
            if v.is_nan() {
                amax = f32::NAN;
                break;
            }
            amax = amax.max(v.abs());
        }
        outputs[0].data[0] = amax;
        Ok(())
    }
}
