//! `Copy`: the identity, moving a tensor between the device and the pinned host arena.
//!
//! The memory planner inserts it for offloads (device → host), prefetches (host → device)
//! and the streaming of state through device buffers. Which way it goes follows from where
//! its operand and result live; the CUDA backend runs it as an asynchronous memcpy on a copy
//! stream, the CPU reference copies the values (exact: the dtype is unchanged).

use crate::{OpError, OpSpec, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `y = x`, possibly in another arena.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Copy;

impl OpSpec for Copy {
    fn name(&self) -> &'static str {
        "copy"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["y"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, _: &[TensorType], _: &[TensorType]) -> f64 {
        0.0
    }
    /// The bytes that cross the link, once.
    fn bytes(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        inputs[0].bytes() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        outputs[0].data.copy_from_slice(inputs[0].data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    #[test]
    fn copies_values_and_keeps_the_type() {
        let ty = TensorType::new([2, 3], DType::BF16);
        assert_eq!(Copy.infer(std::slice::from_ref(&ty)).unwrap(), vec![ty]);
        let x = [1.0, -2.5, 3.25, 0.0, 7.0, -0.125];
        let mut y = [0.0f32; 6];
        Copy.cpu(
            &[View {
                shape: &[2, 3],
                data: &x,
            }],
            &mut [ViewMut {
                shape: &[2, 3],
                data: &mut y,
            }],
        )
        .unwrap();
        assert_eq!(x, y);
    }
}
