//! The type of a tensor: a concrete shape and a storage dtype.

use crate::DType;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A tensor's concrete shape (row-major, last dimension contiguous) and storage dtype.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    /// Extent of each dimension, outermost first.
    pub shape: Vec<u64>,
    /// How each element is stored.
    pub dtype: DType,
}

impl TensorType {
    /// A tensor type from any list of extents.
    pub fn new(shape: impl Into<Vec<u64>>, dtype: DType) -> Self {
        TensorType {
            shape: shape.into(),
            dtype,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    /// Bytes the tensor occupies.
    pub fn bytes(&self) -> u64 {
        self.numel() * self.dtype.size_bytes()
    }

    /// The last dimension (1 for a scalar).
    pub fn last_dim(&self) -> u64 {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Number of rows when the tensor is viewed as `[rows, last_dim]`.
    pub fn rows(&self) -> u64 {
        self.numel() / self.last_dim().max(1)
    }

    /// The same type with another dtype.
    pub fn with_dtype(&self, dtype: DType) -> Self {
        TensorType {
            shape: self.shape.clone(),
            dtype,
        }
    }

    /// The same type with the last dimension replaced.
    pub fn with_last_dim(&self, last: u64) -> Self {
        let mut shape = self.shape.clone();
        match shape.last_mut() {
            Some(l) => *l = last,
            None => shape.push(last),
        }
        TensorType {
            shape,
            dtype: self.dtype,
        }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}
