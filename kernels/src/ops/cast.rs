//! `Cast`: conversion to another storage dtype. The value is unchanged; the rounding to the
//! target dtype (nearest even, saturating for FP8) happens when the result is stored.
//!
//! `CastStochastic` converts to BF16 with stochastic rounding, for the BF16 copy of a weight
//! written from its FP32 master after each optimizer step (nearest rounding would lose every
//! update smaller than half a BF16 spacing). The random bits come from the counter-based
//! generator: seed = the optimizer step (`hyper[1]`), stream = the `stream` attribute (one per
//! tensor, set by the compiler), counter = the element index; so the CPU backend reproduces
//! the GPU exactly and a resumed run rounds as the uninterrupted one did. The reference returns
//! values already representable in BF16, so the backend's nearest rounding on store keeps them.

use crate::numerics::round_bf16_stochastic_all;
use crate::op::check;
use crate::{DType, OpError, OpSpec, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `y = round_to(to, x)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cast {
    /// The dtype of the result.
    pub to: DType,
}

impl OpSpec for Cast {
    fn name(&self) -> &'static str {
        "cast"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["y"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        check::float("cast", "x", &inputs[0])?;
        Ok(vec![inputs[0].with_dtype(self.to)])
    }
    fn flops(&self, _: &[TensorType], _: &[TensorType]) -> f64 {
        0.0
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        outputs[0].data.copy_from_slice(inputs[0].data);
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("to", self.to.to_string())]
    }
}

/// `y = stochastic_round_bf16(x)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CastStochastic {
    /// The random stream: distinct for every tensor written this way.
    pub stream: u64,
}

impl OpSpec for CastStochastic {
    fn name(&self) -> &'static str {
        "cast_stochastic"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x", "hyper"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["y"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        check::float("cast_stochastic", "x", &inputs[0])?;
        check::shape("cast_stochastic", inputs[1].shape == [2], || {
            format!("hyper must be [2] (lr, step), got {:?}", inputs[1].shape)
        })?;
        Ok(vec![inputs[0].with_dtype(DType::BF16)])
    }
    fn flops(&self, _: &[TensorType], _: &[TensorType]) -> f64 {
        0.0
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let step = inputs[1].data[1] as u64;
        outputs[0].data.copy_from_slice(inputs[0].data);
        round_bf16_stochastic_all(outputs[0].data, step, self.stream);
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("stream", self.stream.to_string())]
    }
}
