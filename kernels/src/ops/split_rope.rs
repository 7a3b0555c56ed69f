//! `SplitRope`: `split` of the packed q|k|v output of the one q/k/v matmul, with RoPE applied
//! to q and k on the way (and, optionally, the packed bias added first), in one pass over
//! memory instead of a `bias_add`, a `split` and two `rope`s. Its backward `SplitRopeBackward`
//! is the inverse rotation of dq and dk and the concatenation of dq, dk, dv into the packed
//! gradient `dqkv`; `SplitRopeBackwardAbsMax` also emits `max |dqkv|` as stored, the scale of
//! the FP8 `dy` of the packed q/k/v backward matmuls (the fusion pass makes it where an
//! `abs_max` reads the backward's output).
//!
//! Horizontal fusion makes `SplitRope` on the forward graph where q and k each go only into
//! a `rope` (Llama, Qwen2; not Qwen3, whose q/k norms sit between), so autodiff derives the
//! backward from its rule. The numbers are those of the unfused ops, bit for bit: the biased
//! values are rounded to their storage dtype (`bias`) before they are rotated, as `bias_add`
//! would store them for `rope` to read back, and the rotation is `rope`'s own code.

use super::abs_max::{abs_max_as_stored, with_abs_max};
use super::rope::{infer_rope, rotate};
use super::{BiasAdd, BiasBackward, Concat, Split};
use crate::op::check;
use crate::{BackwardStep, DType, OpError, OpSpec, Ref, TensorType, View, ViewMut, numerics};
use serde::{Deserialize, Serialize};

/// `(q, k, v) = split(qkv [+ b])`, then q and k rotated as [`Rope`](super::Rope) does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitRope {
    /// The widths of q, k and v in each packed row.
    pub cols: [u64; 3],
    /// Size of one head.
    pub head_dim: u64,
    /// Base of the frequencies (`rope_theta`).
    pub theta: f32,
    /// With a packed bias input `b`: the storage dtype of `qkv`, to which `qkv + b` is rounded
    /// before q and k are rotated.
    pub bias: Option<DType>,
}

/// `dqkv = concat(rope_backward(dq), rope_backward(dk), dv)`: the gradient of [`SplitRope`]'s
/// packed input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitRopeBackward {
    /// The widths of q, k and v in each packed row.
    pub cols: [u64; 3],
    /// Size of one head.
    pub head_dim: u64,
    /// Base of the frequencies.
    pub theta: f32,
}

/// `dqkv = split_rope_backward(dq, dk, dv)`, `amax = max |dqkv|` once rounded to `dtype`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitRopeBackwardAbsMax {
    /// The widths of q, k and v in each packed row.
    pub cols: [u64; 3],
    /// Size of one head.
    pub head_dim: u64,
    /// Base of the frequencies.
    pub theta: f32,
    /// The storage dtype of `dqkv`.
    pub dtype: DType,
}

fn split(cols: [u64; 3]) -> Split {
    Split {
        cols: cols.to_vec(),
    }
}

fn concat(cols: [u64; 3]) -> Concat {
    Concat {
        cols: cols.to_vec(),
    }
}

/// Checks that q and k (the first two of `parts`) are whole heads RoPE can rotate.
fn check_rotated(op: &'static str, head_dim: u64, parts: &[TensorType]) -> Result<(), OpError> {
    for part in &parts[..2] {
        infer_rope(op, head_dim, part)?;
    }
    Ok(())
}

/// Rotates q and k (`parts[0]`, `parts[1]`) in place by `sign · angle`.
fn rotate_qk(head_dim: u64, theta: f32, sign: f32, parts: &mut [ViewMut]) {
    for part in &mut parts[..2] {
        let unrotated = part.data.to_vec();
        let x = View {
            shape: part.shape,
            data: &unrotated,
        };
        rotate(head_dim, theta, sign, x, part.data);
    }
}

fn rope_attrs(cols: [u64; 3], head_dim: u64, theta: f32) -> Vec<(&'static str, String)> {
    vec![
        ("cols", format!("{cols:?}")),
        ("head_dim", head_dim.to_string()),
        ("theta", theta.to_string()),
    ]
}

impl SplitRope {
    fn backward_op(&self) -> SplitRopeBackward {
        SplitRopeBackward {
            cols: self.cols,
            head_dim: self.head_dim,
            theta: self.theta,
        }
    }
}

impl OpSpec for SplitRope {
    fn name(&self) -> &'static str {
        "split_rope"
    }
    fn input_names(&self) -> &'static [&'static str] {
        match self.bias {
            Some(_) => &["qkv", "b"],
            None => &["qkv"],
        }
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["q", "k", "v"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let qkv = &inputs[0];
        check::float("split_rope", "qkv", qkv)?;
        if let Some(dtype) = self.bias {
            BiasAdd.infer(inputs)?;
            check::shape("split_rope", qkv.dtype == dtype, || {
                format!(
                    "bias dtype {} must be qkv's dtype {}",
                    dtype.name(),
                    qkv.dtype.name()
                )
            })?;
        }
        let parts = split(self.cols).infer(&inputs[..1])?;
        check_rotated("split_rope", self.head_dim, &parts)?;
        Ok(parts)
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        let [q, k, _] = self.cols;
        let rows = (inputs[0].numel() / inputs[0].last_dim()) as f64;
        let bias = if self.bias.is_some() { 1.0 } else { 0.0 };
        3.0 * rows * (q + k) as f64 + bias * inputs[0].numel() as f64
    }
    fn backward(&self, _: &[TensorType]) -> Option<Vec<BackwardStep>> {
        use Ref::*;
        let grads = [GradOutput(0), GradOutput(1), GradOutput(2)];
        let mut rule = vec![BackwardStep::new(
            self.backward_op(),
            &grads,
            &[GradInput(0)],
        )];
        if self.bias.is_some() {
            rule.push(BackwardStep::new(
                BiasBackward,
                &[GradInput(0)],
                &[GradInput(1)],
            ));
        }
        Some(rule)
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let qkv = inputs[0];
        let mut biased = Vec::new();
        let packed = match self.bias {
            Some(dtype) => {
                biased.resize(qkv.data.len(), 0.0);
                let mut out = [ViewMut {
                    shape: qkv.shape,
                    data: &mut biased,
                }];
                BiasAdd.cpu(inputs, &mut out)?;
                for v in &mut biased {
                    *v = numerics::round_to(dtype, *v);
                }
                View {
                    shape: qkv.shape,
                    data: &biased,
                }
            }
            None => qkv,
        };
        split(self.cols).cpu(&[packed], outputs)?;
        rotate_qk(self.head_dim, self.theta, 1.0, outputs);
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        let mut attrs = rope_attrs(self.cols, self.head_dim, self.theta);
        if let Some(dtype) = self.bias {
            attrs.push(("bias", dtype.name().to_string()));
        }
        attrs
    }
}

impl OpSpec for SplitRopeBackward {
    fn name(&self) -> &'static str {
        "split_rope_backward"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["dq", "dk", "dv"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["dqkv"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        check::float("split_rope_backward", "dq", &inputs[0])?;
        check_rotated("split_rope_backward", self.head_dim, inputs)?;
        concat(self.cols).infer(inputs)
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        3.0 * (inputs[0].numel() + inputs[1].numel()) as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let mut rotated: Vec<Vec<f32>> = inputs.iter().map(|x| x.data.to_vec()).collect();
        let mut parts: Vec<ViewMut> = rotated
            .iter_mut()
            .zip(inputs)
            .map(|(data, x)| ViewMut {
                shape: x.shape,
                data,
            })
            .collect();
        rotate_qk(self.head_dim, self.theta, -1.0, &mut parts);
        let parts: Vec<View> = parts
            .iter()
            .map(|p| View {
                shape: p.shape,
                data: p.data,
            })
            .collect();
        concat(self.cols).cpu(&parts, outputs)
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        rope_attrs(self.cols, self.head_dim, self.theta)
    }
}

impl SplitRopeBackwardAbsMax {
    fn base(&self) -> SplitRopeBackward {
        SplitRopeBackward {
            cols: self.cols,
            head_dim: self.head_dim,
            theta: self.theta,
        }
    }
}

impl OpSpec for SplitRopeBackwardAbsMax {
    fn name(&self) -> &'static str {
        "split_rope_backward_abs_max"
    }
    fn input_names(&self) -> &'static [&'static str] {
        self.base().input_names()
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["dqkv", "amax"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let outputs = self.base().infer(inputs)?;
        with_abs_max("split_rope_backward_abs_max", self.dtype, outputs, 0)
    }
    fn flops(&self, inputs: &[TensorType], outputs: &[TensorType]) -> f64 {
        self.base().flops(inputs, outputs) + outputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (dqkv, amax) = outputs.split_at_mut(1);
        self.base().cpu(inputs, dqkv)?;
        amax[0].data[0] = abs_max_as_stored(self.dtype, dqkv[0].data);
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        let mut attrs = self.base().attrs();
        attrs.push(("dtype", self.dtype.name().to_string()));
        attrs
    }
}
