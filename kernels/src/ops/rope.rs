//! `Rope`: rotary position embedding in the rotate-half convention of Llama and Qwen
//! (element `i` of a head pairs with `i + head_dim/2`), position = index along the sequence.

use crate::op::check;
use crate::{BackwardStep, OpError, OpSpec, Ref, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// Rotates each head of `x [.., seq, heads·head_dim]` by its position's angles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rope {
    /// Size of one head.
    pub head_dim: u64,
    /// Base of the frequencies (`rope_theta`).
    pub theta: f32,
}

/// The inverse rotation: the gradient of [`Rope`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeBackward {
    /// Size of one head.
    pub head_dim: u64,
    /// Base of the frequencies.
    pub theta: f32,
}

pub(super) fn infer_rope(
    op: &'static str,
    head_dim: u64,
    x: &TensorType,
) -> Result<Vec<TensorType>, OpError> {
    check::float(op, "x", x)?;
    check::shape(op, x.shape.len() >= 2, || {
        format!("x must be [.., seq, heads·head_dim], got {:?}", x.shape)
    })?;
    check::shape(
        op,
        head_dim.is_multiple_of(2) && x.last_dim().is_multiple_of(head_dim),
        || {
            format!(
                "head_dim {head_dim} must be even and divide x's last dimension ({})",
                x.last_dim()
            )
        },
    )?;
    Ok(vec![x.clone()])
}

/// Rotates every head of every position by `sign · angle` (`sign` = −1 undoes [`Rope`]).
pub(super) fn rotate(head_dim: u64, theta: f32, sign: f32, x: View, y: &mut [f32]) {
    let d = head_dim as usize;
    let half = d / 2;
    let c = *x.shape.last().unwrap() as usize;
    let seq = x.shape[x.shape.len() - 2] as usize;
    // Frequencies as transformers computes them: FP32 inverse frequencies times FP32 positions.
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| (1.0 / (theta as f64).powf(2.0 * i as f64 / d as f64)) as f32)
        .collect();
    for (row, (xr, yr)) in x.data.chunks(c).zip(y.chunks_mut(c)).enumerate() {
        let pos = (row % seq) as f32;
        for (xh, yh) in xr.chunks(d).zip(yr.chunks_mut(d)) {
            for i in 0..half {
                let angle = pos * inv_freq[i];
                let (sin, cos) = (
                    (angle as f64).sin() as f32 * sign,
                    (angle as f64).cos() as f32,
                );
                let (a, b) = (xh[i], xh[i + half]);
                yh[i] = a * cos - b * sin;
                yh[i + half] = b * cos + a * sin;
            }
        }
    }
}

impl OpSpec for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["y"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        infer_rope("rope", self.head_dim, &inputs[0])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        3.0 * inputs[0].numel() as f64
    }
    fn backward(&self, _: &[TensorType]) -> Option<Vec<BackwardStep>> {
        let op = RopeBackward {
            head_dim: self.head_dim,
            theta: self.theta,
        };
        Some(vec![BackwardStep::new(
            op,
            &[Ref::GradOutput(0)],
            &[Ref::GradInput(0)],
        )])
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        rotate(self.head_dim, self.theta, 1.0, inputs[0], outputs[0].data);
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("head_dim", self.head_dim.to_string()),
            ("theta", self.theta.to_string()),
        ]
    }
}

impl OpSpec for RopeBackward {
    fn name(&self) -> &'static str {
        "rope_backward"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["dy"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["dx"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        infer_rope("rope_backward", self.head_dim, &inputs[0])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        3.0 * inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        rotate(self.head_dim, self.theta, -1.0, inputs[0], outputs[0].data);
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("head_dim", self.head_dim.to_string()),
            ("theta", self.theta.to_string()),
        ]
    }
}
