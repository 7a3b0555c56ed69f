//! The passes of the LLMQ-rs compiler, the pipeline that orders them for a target, and
//! [`compile`], the whole way from a model spec to a plan.
#![warn(missing_docs)]

pub mod chunk_lm_head;
mod compile;
mod fp8_casts;
mod fusion;
mod horizontal_fusion;
pub mod memory_edit;
pub mod memory_plan;
pub mod offload_activations;
pub mod persist_weight_quants;
mod pipeline;
pub mod recompute;
mod stochastic_rounding;
pub mod stream_state;

pub use compile::{
    CompileError, CompileOptions, Compiled, CurvePoint, TrainGraph, compile, compile_auto_batch,
    compile_with_choice, forward_graph, pass_context, plan_choices, tradeoff_curve, train_graph,
};
pub use fp8_casts::Fp8Casts;
pub use fusion::Fusion;
pub use horizontal_fusion::HorizontalFusion;
pub use pipeline::{forward_pipeline, pass_names, pipeline};
pub use stochastic_rounding::StochasticRounding;
