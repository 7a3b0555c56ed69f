//! `SwiGlu`: `h = silu(gate) · up`, the gated activation of the Llama/Qwen MLP.
//!
//! `packed` reads gate and up from one tensor `gu [.., 2F]` (gate in columns `0..F` of each
//! row, up in `F..2F`: the output of the one matmul that horizontal fusion makes of the gate
//! and up projections), and its backward writes their gradients the same way, as one
//! `dgu [.., 2F]` (with one abs-max in the abs-max variant: the scale of the packed FP8
//! gradient). Each element is computed exactly as unpacked.
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
pub struct SwiGlu {
    /// Gate and up packed in one input `gu [.., 2F]`.
    pub packed: bool,
}

/// `h = swiglu(gate, up)`, `amax = max |h|` once `h` is rounded to `dtype`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwiGluAbsMax {
    /// The storage dtype of `h` (that of `gate` and `up`).
    pub dtype: DType,
    /// Gate and up packed in one input, as in [`SwiGlu`].
    pub packed: bool,
}

/// Gradients of [`SwiGlu`] for gate and up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwiGluBackward {
    /// Reads `gu` and writes `dgu`, packed as in [`SwiGlu`].
    pub packed: bool,
}

/// `(dgate, dup) = swiglu_backward(gate, up, dh)` and the abs-max of each once rounded to
/// `dtype`; packed, `dgu` and its one abs-max.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwiGluBackwardAbsMax {
    /// The storage dtype of `dgate` and `dup` (that of `dh`).
    pub dtype: DType,
    /// Reads `gu` and writes `dgu`, packed as in [`SwiGlu`].
    pub packed: bool,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Where gate and up are: two tensors of `h`'s shape, or the two halves of each row of one.
struct GateUp<'a> {
    gate: &'a [f32],
    up: &'a [f32],
    /// Columns of `h` per row (`F`).
    width: usize,
    /// Elements per row of the gate and up inputs: `F`, or `2F` packed.
    stride: usize,
}

impl<'a> GateUp<'a> {
    fn new(packed: bool, inputs: &[View<'a>]) -> Self {
        if packed {
            let gu = inputs[0];
            let width = (gu.shape[gu.shape.len() - 1] / 2) as usize;
            GateUp {
                gate: gu.data,
                up: &gu.data[width..],
                width,
                stride: 2 * width,
            }
        } else {
            let width = inputs[0].shape[inputs[0].shape.len() - 1] as usize;
            GateUp {
                gate: inputs[0].data,
                up: inputs[1].data,
                width,
                stride: width,
            }
        }
    }

    /// Where element `i` of `h` (row-major) reads its gate and up.
    fn at(&self, i: usize) -> usize {
        (i / self.width) * self.stride + i % self.width
    }
}

/// The packed input's type checked (`[.., 2F]`, a float dtype), and `h`'s type `[.., F]`.
fn packed_half(op: &'static str, gu: &TensorType) -> Result<TensorType, OpError> {
    check::float(op, "gu", gu)?;
    let even = !gu.shape.is_empty() && gu.last_dim().is_multiple_of(2);
    check::shape(op, even, || {
        format!(
            "gu {:?}: the last dimension must hold gate and up, an even size",
            gu.shape
        )
    })?;
    let mut shape = gu.shape.clone();
    *shape.last_mut().expect("checked non-empty") = gu.last_dim() / 2;
    Ok(TensorType::new(shape, gu.dtype))
}

impl OpSpec for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }
    fn input_names(&self) -> &'static [&'static str] {
        if self.packed {
            &["gu"]
        } else {
            &["gate", "up"]
        }
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["h"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        if self.packed {
            return Ok(vec![packed_half("swiglu", &inputs[0])?]);
        }
        check::float("swiglu", "gate", &inputs[0])?;
        check::same_dtype("swiglu", "up", &inputs[0], &inputs[1])?;
        check::same_shape("swiglu", "gate and up", &inputs[0], &inputs[1])?;
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, _: &[TensorType], outputs: &[TensorType]) -> f64 {
        5.0 * outputs[0].numel() as f64
    }
    fn backward(&self, _: &[TensorType]) -> Option<Vec<BackwardStep>> {
        use Ref::*;
        let backward = SwiGluBackward {
            packed: self.packed,
        };
        Some(vec![if self.packed {
            BackwardStep::new(backward, &[Input(0), GradOutput(0)], &[GradInput(0)])
        } else {
            BackwardStep::new(
                backward,
                &[Input(0), Input(1), GradOutput(0)],
                &[GradInput(0), GradInput(1)],
            )
        }])
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let gu = GateUp::new(self.packed, inputs);
        for (i, h) in outputs[0].data.iter_mut().enumerate() {
            let (g, u) = (gu.gate[gu.at(i)], gu.up[gu.at(i)]);
            *h = g * sigmoid(g) * u;
        }
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        packed_attr(self.packed)
    }
}

/// `packed=true` in dumps; nothing when unpacked, so unfused dumps read as before.
fn packed_attr(packed: bool) -> Vec<(&'static str, String)> {
    if packed {
        vec![("packed", "true".to_string())]
    } else {
        Vec::new()
    }
}

impl OpSpec for SwiGluAbsMax {
    fn name(&self) -> &'static str {
        "swiglu_abs_max"
    }
    fn input_names(&self) -> &'static [&'static str] {
        self.base().input_names()
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["h", "amax"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        with_abs_max("swiglu_abs_max", self.dtype, self.base().infer(inputs)?, 0)
    }
    fn flops(&self, _: &[TensorType], outputs: &[TensorType]) -> f64 {
        6.0 * outputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (h, amax) = outputs.split_at_mut(1);
        self.base().cpu(inputs, h)?;
        amax[0].data[0] = abs_max_as_stored(self.dtype, h[0].data);
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        let mut attrs = vec![("dtype", self.dtype.name().to_string())];
        attrs.extend(packed_attr(self.packed));
        attrs
    }
}

impl SwiGluAbsMax {
    fn base(&self) -> SwiGlu {
        SwiGlu {
            packed: self.packed,
        }
    }
}

impl OpSpec for SwiGluBackward {
    fn name(&self) -> &'static str {
        "swiglu_backward"
    }
    fn input_names(&self) -> &'static [&'static str] {
        if self.packed {
            &["gu", "dh"]
        } else {
            &["gate", "up", "dh"]
        }
    }
    fn output_names(&self) -> &'static [&'static str] {
        if self.packed {
            &["dgu"]
        } else {
            &["dgate", "dup"]
        }
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let op = "swiglu_backward";
        let dh = inputs.last().expect("arity checked");
        if self.packed {
            let h = packed_half(op, &inputs[0])?;
            check::same_shape(op, "half of gu and dh", &h, dh)?;
            let mut dgu = inputs[0].clone();
            dgu.dtype = dh.dtype;
            return Ok(vec![dgu]);
        }
        check::same_shape(op, "gate and dh", &inputs[0], dh)?;
        Ok(vec![dh.clone(), dh.clone()])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        10.0 * inputs.last().expect("arity checked").numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let gu = GateUp::new(self.packed, inputs);
        let dh = inputs[inputs.len() - 1].data;
        // (dgate, dup) of element i of h.
        let grad = |i: usize| {
            let (g, u, d) = (gu.gate[gu.at(i)], gu.up[gu.at(i)], dh[i]);
            let s = sigmoid(g);
            (d * u * s * (1.0 + g * (1.0 - s)), d * g * s)
        };
        if self.packed {
            // Each gradient goes where its value was read.
            let dgu = &mut *outputs[0].data;
            for i in 0..dh.len() {
                (dgu[gu.at(i)], dgu[gu.at(i) + gu.width]) = grad(i);
            }
        } else {
            let (dg, du) = outputs.split_at_mut(1);
            for i in 0..dh.len() {
                (dg[0].data[i], du[0].data[i]) = grad(i);
            }
        }
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        packed_attr(self.packed)
    }
}

impl OpSpec for SwiGluBackwardAbsMax {
    fn name(&self) -> &'static str {
        "swiglu_backward_abs_max"
    }
    fn input_names(&self) -> &'static [&'static str] {
        self.base().input_names()
    }
    fn output_names(&self) -> &'static [&'static str] {
        if self.packed {
            &["dgu", "dgu_amax"]
        } else {
            &["dgate", "dup", "dgate_amax", "dup_amax"]
        }
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let op = "swiglu_backward_abs_max";
        let grads = self.base().infer(inputs)?;
        let n = grads.len();
        (0..n).try_fold(grads, |outputs, k| with_abs_max(op, self.dtype, outputs, k))
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        12.0 * inputs.last().expect("arity checked").numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (grads, amaxes) = outputs.split_at_mut(outputs.len() / 2);
        self.base().cpu(inputs, grads)?;
        for (amax, grad) in amaxes.iter_mut().zip(grads.iter()) {
            amax.data[0] = abs_max_as_stored(self.dtype, grad.data);
        }
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        let mut attrs = vec![("dtype", self.dtype.name().to_string())];
        attrs.extend(packed_attr(self.packed));
        attrs
    }
}

impl SwiGluBackwardAbsMax {
    fn base(&self) -> SwiGluBackward {
        SwiGluBackward {
            packed: self.packed,
        }
    }
}
