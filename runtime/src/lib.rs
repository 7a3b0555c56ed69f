//! The LLMQ-rs runtime: replays a compiled plan on a backend, and the trainer around it.

pub mod train;
