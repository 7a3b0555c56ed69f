//! `RmsNorm`: `y = x / sqrt(mean(x²) + eps) · w` over groups of the last dimension.
//!
//! The weight's length is the group size: `[hidden]` for the block norms, `[head_dim]` for
//! Qwen3's per-head QK-norm. The inverse RMS of every group is an output, kept for backward.
//!
//! `RmsNormAbsMax` also emits `max |y|` of `y` as stored, the scale input of the FP8 operand
//! of the matmuls it feeds (q/k/v after the first block's input norm): the fusion pass puts it
//! where an `abs_max` reads an `rms_norm`'s output. Made after autodiff, it has no backward rule.
//!
//! `RmsNormBackwardAdd` adds the norm's input gradient into the residual stream's gradient in
//! the same pass, `d = r + dx` (a pre-norm block's residual input has two readers: the norm and
//! the residual add), as LLMQ does; the fusion pass puts it where an `add` reads the `dx` of an
//! `rms_norm_backward` and nothing else does. `dx` is rounded to its storage dtype (`dtype`)
//! before the add, as the unfused `add` reads it back, so `d` is bit for bit the pair's.
//! `RmsNormBackwardAddAbsMax` also emits `max |d|` of `d` as stored, the scale of the FP8
//! gradient the block's output projection's backward reads.

use super::abs_max::{abs_max_as_stored, with_abs_max};
use crate::numerics::round_to;
use crate::op::check;
use crate::{BackwardStep, DType, OpError, OpSpec, Ref, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// RMS normalisation with a learned scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RmsNorm {
    /// Added to the mean square before the square root.
    pub eps: f32,
}

/// `(y, rstd) = rms_norm(x, w)`, `amax = max |y|` once `y` is rounded to `dtype`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RmsNormAbsMax {
    /// Added to the mean square before the square root.
    pub eps: f32,
    /// The storage dtype of `y` (that of `x`).
    pub dtype: DType,
}

/// Gradients of [`RmsNorm`] for `x` and `w`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RmsNormBackward;

/// `(dx, dw) = rms_norm_backward(dy, x, w, rstd)`, `d = r + dx` once `dx` is rounded to `dtype`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RmsNormBackwardAdd {
    /// The storage dtype of `dx` and `d` (that of `dy` and `r`).
    pub dtype: DType,
}

/// `(d, dw) = rms_norm_backward_add(dy, x, w, rstd, r)`, `amax = max |d|` once `d` is rounded
/// to `dtype`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RmsNormBackwardAddAbsMax {
    /// The storage dtype of `dx` and `d` (that of `dy` and `r`).
    pub dtype: DType,
}

impl OpSpec for RmsNorm {
    fn name(&self) -> &'static str {
        "rms_norm"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x", "w"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["y", "rstd"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let (x, w) = (&inputs[0], &inputs[1]);
        check::float("rms_norm", "x", x)?;
        check::same_dtype("rms_norm", "w", x, w)?;
        check::shape(
            "rms_norm",
            w.shape.len() == 1 && x.last_dim() % w.shape[0] == 0,
            || {
                format!(
                    "weight {:?} must be 1-D and divide x's last dimension ({})",
                    w.shape,
                    x.last_dim()
                )
            },
        )?;
        let groups = x.numel() / w.shape[0];
        Ok(vec![x.clone(), TensorType::new([groups], DType::F32)])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        4.0 * inputs[0].numel() as f64
    }
    fn backward(&self, _: &[TensorType]) -> Option<Vec<BackwardStep>> {
        use Ref::*;
        Some(vec![BackwardStep::new(
            RmsNormBackward,
            &[GradOutput(0), Input(0), Input(1), Output(1)],
            &[GradInput(0), GradInput(1)],
        )])
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (x, w) = (inputs[0], inputs[1]);
        let g = w.data.len();
        let (y, rest) = outputs.split_at_mut(1);
        for ((yg, xg), rstd) in y[0]
            .data
            .chunks_mut(g)
            .zip(x.data.chunks(g))
            .zip(rest[0].data.iter_mut())
        {
            let mean_sq = xg.iter().map(|v| v * v).sum::<f32>() / g as f32;
            *rstd = 1.0 / (mean_sq + self.eps).sqrt();
            for ((yv, xv), wv) in yg.iter_mut().zip(xg).zip(w.data) {
                *yv = xv * *rstd * wv;
            }
        }
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("eps", format!("{:e}", self.eps))]
    }
}

impl OpSpec for RmsNormAbsMax {
    fn name(&self) -> &'static str {
        "rms_norm_abs_max"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x", "w"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["y", "rstd", "amax"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let norm = RmsNorm { eps: self.eps };
        with_abs_max("rms_norm_abs_max", self.dtype, norm.infer(inputs)?, 0)
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        5.0 * inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (norm, amax) = outputs.split_at_mut(2);
        RmsNorm { eps: self.eps }.cpu(inputs, norm)?;
        amax[0].data[0] = abs_max_as_stored(self.dtype, norm[0].data);
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("eps", format!("{:e}", self.eps)),
            ("dtype", self.dtype.name().to_string()),
        ]
    }
}

impl OpSpec for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms_norm_backward"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["dy", "x", "w", "rstd"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["dx", "dw"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let (dy, x, w) = (&inputs[0], &inputs[1], &inputs[2]);
        check::same_shape("rms_norm_backward", "dy and x", dy, x)?;
        Ok(vec![dy.clone(), w.with_dtype(dy.dtype)])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        8.0 * inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (dy, x, w, rstd) = (inputs[0], inputs[1], inputs[2], inputs[3]);
        let g = w.data.len();
        let (dx, dw) = outputs.split_at_mut(1);
        let dw = &mut dw[0].data;
        dw.fill(0.0);
        for (((dxg, dyg), xg), &r) in dx[0]
            .data
            .chunks_mut(g)
            .zip(dy.data.chunks(g))
            .zip(x.data.chunks(g))
            .zip(rstd.data)
        {
            // With x̂ = x·r and ĝ = dy·w: dx = r·(ĝ − x̂·mean(ĝ·x̂)), dw = Σ dy·x̂.
            let mut dot = 0.0f32;
            for i in 0..g {
                dot += dyg[i] * w.data[i] * xg[i] * r;
                dw[i] += dyg[i] * xg[i] * r;
            }
            let mean = dot / g as f32;
            for i in 0..g {
                dxg[i] = r * (dyg[i] * w.data[i] - xg[i] * r * mean);
            }
        }
        Ok(())
    }
}

impl OpSpec for RmsNormBackwardAdd {
    fn name(&self) -> &'static str {
        "rms_norm_backward_add"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["dy", "x", "w", "rstd", "r"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["d", "dw"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let op = "rms_norm_backward_add";
        let (dy, r) = (&inputs[0], &inputs[4]);
        check::same_dtype(op, "r", dy, r)?;
        check::same_shape(op, "dy and r", dy, r)?;
        check::shape(op, dy.dtype == self.dtype, || {
            format!(
                "dtype {} must be dy's dtype {}",
                self.dtype.name(),
                dy.dtype.name()
            )
        })?;
        RmsNormBackward.infer(&inputs[..4])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        9.0 * inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        RmsNormBackward.cpu(&inputs[..4], outputs)?;
        for (d, r) in outputs[0].data.iter_mut().zip(inputs[4].data) {
            *d = r + round_to(self.dtype, *d);
        }
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("dtype", self.dtype.name().to_string())]
    }
}

impl OpSpec for RmsNormBackwardAddAbsMax {
    fn name(&self) -> &'static str {
        "rms_norm_backward_add_abs_max"
    }
    fn input_names(&self) -> &'static [&'static str] {
        self.base().input_names()
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["d", "dw", "amax"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let outputs = self.base().infer(inputs)?;
        with_abs_max("rms_norm_backward_add_abs_max", self.dtype, outputs, 0)
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        10.0 * inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (grads, amax) = outputs.split_at_mut(2);
        self.base().cpu(inputs, grads)?;
        amax[0].data[0] = abs_max_as_stored(self.dtype, grads[0].data);
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        self.base().attrs()
    }
}

impl RmsNormBackwardAddAbsMax {
    fn base(&self) -> RmsNormBackwardAdd {
        RmsNormBackwardAdd { dtype: self.dtype }
    }
}
