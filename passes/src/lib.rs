//! The passes of the LLMQ-rs compiler, the pipeline that orders them for a target, and
//! [`compile`], the whole way from a model spec to a plan.
#![warn(missing_docs)]

mod compile;
mod fusion;
mod pipeline;

pub use compile::{CompileError, CompileOptions, Compiled, compile};
pub use fusion::Fusion;
pub use pipeline::{pass_names, pipeline};
