//! The passes of the LLMQ-rs compiler, the pipeline that orders them for a target, and
//! [`compile`], the whole way from a model spec to a plan.
#![warn(missing_docs)]

pub mod chunk_lm_head;
mod compile;
mod fusion;
pub mod memory_edit;
pub mod memory_plan;
pub mod offload_activations;
mod pipeline;
pub mod recompute;
pub mod stream_state;

pub use compile::{
    CompileError, CompileOptions, Compiled, CurvePoint, compile, compile_auto_batch,
    compile_with_choice, plan_choices, tradeoff_curve,
};
pub use fusion::Fusion;
pub use pipeline::{pass_names, pipeline};
