//! `BiasAdd`: `y = x + b` with the bias broadcast over rows, and `BiasBackward`: `db = Σ_rows dy`.

use crate::op::check;
use crate::{BackwardStep, OpError, OpSpec, Ref, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `y[r, :] = x[r, :] + b`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BiasAdd;

/// `db = Σ_r dy[r, :]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BiasBackward;

impl OpSpec for BiasAdd {
    fn name(&self) -> &'static str {
        "bias_add"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x", "b"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["y"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let (x, b) = (&inputs[0], &inputs[1]);
        check::float("bias_add", "x", x)?;
        check::same_dtype("bias_add", "b", x, b)?;
        check::shape("bias_add", b.shape == [x.last_dim()], || {
            format!(
                "bias must be [{}] to match x {:?}, got {:?}",
                x.last_dim(),
                x.shape,
                b.shape
            )
        })?;
        Ok(vec![x.clone()])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        inputs[0].numel() as f64
    }
    fn backward(&self, _: &[TensorType]) -> Option<Vec<BackwardStep>> {
        Some(vec![
            BackwardStep::PassThrough {
                output: 0,
                input: 0,
            },
            BackwardStep::new(BiasBackward, &[Ref::GradOutput(0)], &[Ref::GradInput(1)]),
        ])
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (x, b) = (inputs[0], inputs[1]);
        let c = b.data.len();
        for (yr, xr) in outputs[0].data.chunks_mut(c).zip(x.data.chunks(c)) {
            for ((y, x), b) in yr.iter_mut().zip(xr).zip(b.data) {
                *y = x + b;
            }
        }
        Ok(())
    }
}

impl OpSpec for BiasBackward {
    fn name(&self) -> &'static str {
        "bias_backward"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["dy"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["db"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        check::float("bias_backward", "dy", &inputs[0])?;
        Ok(vec![TensorType::new(
            [inputs[0].last_dim()],
            inputs[0].dtype,
        )])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let db = &mut outputs[0].data;
        let c = db.len();
        db.fill(0.0);
        for row in inputs[0].data.chunks(c) {
            for (d, g) in db.iter_mut().zip(row) {
                *d += g;
            }
        }
        Ok(())
    }
}
