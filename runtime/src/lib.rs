//! The LLMQ-rs runtime: replays a compiled plan on a backend, and the trainer around it.
#![warn(missing_docs)]

pub mod train;
