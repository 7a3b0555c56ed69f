//! The op catalogue of LLMQ-rs.
//!
//! Every operation the compiler can put into a plan lives here, once: its signature, its shape
//! and dtype rule, its FLOP and byte cost, its backward rule, its CPU reference and the name of
//! its CUDA kernel (`kernels/cuda/<op>.cu`). The compiler, the passes and both backends read
//! ops from here; nothing else defines what an op means.
//!
//! ```
//! use llmq_kernels::{ops::Linear, DType, Op, TensorType};
//! let x = TensorType::new([4, 16], DType::BF16);
//! let w = TensorType::new([8, 16], DType::BF16);
//! let out = Op::from(Linear).infer(&[x, w]).unwrap();
//! assert_eq!(out[0].shape, vec![4, 8]);
//! ```
#![warn(missing_docs)]

pub mod dtype;
pub mod interpret;
pub mod numerics;
pub mod op;
pub mod ops;
pub mod rng;
pub mod tensor_type;

pub use dtype::DType;
pub use op::{BackwardStep, Cost, LongestBlock, Op, OpError, OpSpec, Ref, View, ViewMut};
pub use tensor_type::TensorType;
