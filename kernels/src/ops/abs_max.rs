//! `AbsMax`: the largest absolute value of a tensor, the input of a per-tensor FP8 scale.
//!
//! The fusion pass folds it into the op that produces its input where the catalogue has a
//! variant emitting the abs-max as one more output (`swiglu_abs_max`, `rms_norm_abs_max`,
//! `add_rms_norm_abs_max`, `swiglu_backward_abs_max`, `rms_norm_backward_add_abs_max`); those
//! variants use [`abs_max_as_stored`] and [`with_abs_max`] below, so their abs-max is this
//! op's, bit for bit.

use crate::numerics::round_to;
use crate::op::check;
use crate::{DType, OpError, OpSpec, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `amax = max |x|`; any NaN in `x` makes it NaN.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AbsMax;

/// The largest absolute value; NaN when any value is NaN, so a broken tensor cannot hide
/// behind a scale.
fn abs_max_of(values: impl IntoIterator<Item = f32>) -> f32 {
    let mut amax = 0.0f32;
    for v in values {
        if v.is_nan() {
            return f32::NAN;
        }
        amax = amax.max(v.abs());
    }
    amax
}

/// The abs-max of an output as it is stored in `dtype`: what an `abs_max` reading it back from
/// memory computes (a CPU reference returns FP32 values that the backend rounds on store).
pub(crate) fn abs_max_as_stored(dtype: DType, values: &[f32]) -> f32 {
    abs_max_of(values.iter().map(|&v| round_to(dtype, v)))
}

/// The output types of an op that also emits the abs-max of its output `of`, stored as
/// `dtype`: `outputs` with the FP32 scalar appended, after checking that `dtype` is that
/// output's dtype (the abs-max is taken of the stored values).
pub(crate) fn with_abs_max(
    op: &'static str,
    dtype: DType,
    mut outputs: Vec<TensorType>,
    of: usize,
) -> Result<Vec<TensorType>, OpError> {
    check::shape(op, outputs[of].dtype == dtype, || {
        format!(
            "dtype {} must be the abs-max's source dtype {}",
            dtype.name(),
            outputs[of].dtype.name()
        )
    })?;
    outputs.push(TensorType::new([1], DType::F32));
    Ok(outputs)
}

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
        outputs[0].data[0] = abs_max_of(inputs[0].data.iter().copied());
        Ok(())
    }
}
