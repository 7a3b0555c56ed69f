//! `ClipScale`: from the squared global norm, the norm itself and the factor that clips it to
//! `max_norm` (PyTorch's `clip_grad_norm_`: `min(1, max_norm / (norm + 1e-6))`).
//!
//! A non-finite norm gives the factor 0, which [`AdamW`](super::AdamW) reads as "skip this
//! step": the update is skipped on the device, and the host sees the norm and counts the step.

use crate::op::check;
use crate::{DType, OpError, OpSpec, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `norm = √s`, `scale = min(1, max_norm / (norm + 1e-6))`; `max_norm ≤ 0` disables clipping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipScale {
    /// The largest global gradient norm let through unscaled.
    pub max_norm: f32,
}

impl OpSpec for ClipScale {
    fn name(&self) -> &'static str {
        "clip_scale"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["sum_squares"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["norm", "scale"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        check::dtype("clip_scale", "sum_squares", &inputs[0], DType::F32)?;
        let scalar = TensorType::new([1], DType::F32);
        Ok(vec![scalar.clone(), scalar])
    }
    fn flops(&self, _: &[TensorType], _: &[TensorType]) -> f64 {
        3.0
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let norm = inputs[0].data[0].sqrt();
        outputs[0].data[0] = norm;
        outputs[1].data[0] = if self.max_norm > 0.0 {
            (self.max_norm / (norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("max_norm", self.max_norm.to_string())]
    }
}
