//! `SwiGlu`: `h = silu(gate) · up`, the gated activation of the Llama/Qwen MLP.
//!
//! `SwiGluAbsMax` also emits `max |h|` of `h` as stored, the scale input of the down
//! projection's FP8 operand: the fusion pass puts it where an `abs_max` reads a `swiglu`'s
//! output, saving a read of `h`. `SwiGluBackwardAbsMax` does the same for both gradients (the
//! FP8 `dy` of the gate and up projections' backward). Made after autodiff, neither has a
//! backward rule.

use super::abs_max::{abs_max_as_stored, with_abs_max};
use crate::op::check;
use crate::{BackwardStep, DType, OpError, OpSpec, Ref, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `h = gate·σ(gate)·up`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwiGlu;

/// `h = swiglu(gate, up)`, `amax = max |h|` once `h` is rounded to `dtype`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwiGluAbsMax {
    /// The storage dtype of `h` (that of `gate` and `up`).
    pub dtype: DType,
}

/// Gradients of [`SwiGlu`] for gate and up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwiGluBackward;

/// `(dgate, dup) = swiglu_backward(gate, up, dh)` and the abs-max of each once rounded to
/// `dtype`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwiGluBackwardAbsMax {
    /// The storage dtype of `dgate` and `dup` (that of `dh`).
    pub dtype: DType,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl OpSpec for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["gate", "up"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["h"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        check::float("swiglu", "gate", &inputs[0])?;
        check::same_dtype("swiglu", "up", &inputs[0], &inputs[1])?;
        check::same_shape("swiglu", "gate and up", &inputs[0], &inputs[1])?;
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        5.0 * inputs[0].numel() as f64
    }
    fn backward(&self, _: &[TensorType]) -> Option<Vec<BackwardStep>> {
        use Ref::*;
        Some(vec![BackwardStep::new(
            SwiGluBackward,
            &[Input(0), Input(1), GradOutput(0)],
            &[GradInput(0), GradInput(1)],
        )])
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        for ((h, g), u) in outputs[0]
            .data
            .iter_mut()
            .zip(inputs[0].data)
            .zip(inputs[1].data)
        {
            *h = g * sigmoid(*g) * u;
        }
        Ok(())
    }
}

impl OpSpec for SwiGluAbsMax {
    fn name(&self) -> &'static str {
        "swiglu_abs_max"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["gate", "up"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["h", "amax"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        with_abs_max("swiglu_abs_max", self.dtype, SwiGlu.infer(inputs)?, 0)
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        6.0 * inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (h, amax) = outputs.split_at_mut(1);
        SwiGlu.cpu(inputs, h)?;
        amax[0].data[0] = abs_max_as_stored(self.dtype, h[0].data);
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("dtype", self.dtype.name().to_string())]
    }
}

impl OpSpec for SwiGluBackward {
    fn name(&self) -> &'static str {
        "swiglu_backward"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["gate", "up", "dh"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["dgate", "dup"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        check::same_shape("swiglu_backward", "gate and dh", &inputs[0], &inputs[2])?;
        Ok(vec![inputs[2].clone(), inputs[2].clone()])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        10.0 * inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (gate, up, dh) = (inputs[0].data, inputs[1].data, inputs[2].data);
        let (dg, du) = outputs.split_at_mut(1);
        for i in 0..gate.len() {
            let s = sigmoid(gate[i]);
            du[0].data[i] = dh[i] * gate[i] * s;
            dg[0].data[i] = dh[i] * up[i] * s * (1.0 + gate[i] * (1.0 - s));
        }
        Ok(())
    }
}

impl OpSpec for SwiGluBackwardAbsMax {
    fn name(&self) -> &'static str {
        "swiglu_backward_abs_max"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["gate", "up", "dh"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["dgate", "dup", "dgate_amax", "dup_amax"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let op = "swiglu_backward_abs_max";
        let outputs = with_abs_max(op, self.dtype, SwiGluBackward.infer(inputs)?, 0)?;
        with_abs_max(op, self.dtype, outputs, 1)
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        12.0 * inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (grads, amaxes) = outputs.split_at_mut(2);
        SwiGluBackward.cpu(inputs, grads)?;
        for (amax, grad) in amaxes.iter_mut().zip(grads.iter()) {
            amax.data[0] = abs_max_as_stored(self.dtype, grad.data);
        }
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("dtype", self.dtype.name().to_string())]
    }
}
