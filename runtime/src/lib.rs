//! The LLMQ-rs runtime: executes a [`Plan`](llmq_compiler::plan::Plan) step after step on a
//! backend (the CPU reference, or CUDA), and the trainer around it: data, schedules, logging,
//! checkpoints.
#![warn(missing_docs)]

pub mod backend;
pub mod storage;
pub mod train;
pub mod trainer;

pub use backend::{Backend, BackendError};
