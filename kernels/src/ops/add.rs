//! `Add`: the elementwise sum of two tensors of one shape (residual connections, gradient sums).

use crate::op::check;
use crate::{BackwardStep, OpError, OpSpec, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `c = a + b`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Add;

impl OpSpec for Add {
    fn name(&self) -> &'static str {
        "add"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["a", "b"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["c"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let (a, b) = (&inputs[0], &inputs[1]);
        check::float("add", "a", a)?;
        check::same_dtype("add", "b", a, b)?;
        check::same_shape("add", "a and b", a, b)?;
        Ok(vec![a.clone()])
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
            BackwardStep::PassThrough {
                output: 0,
                input: 1,
            },
        ])
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        for ((c, a), b) in outputs[0]
            .data
            .iter_mut()
            .zip(inputs[0].data)
            .zip(inputs[1].data)
        {
            *c = a + b;
        }
        Ok(())
    }
}
