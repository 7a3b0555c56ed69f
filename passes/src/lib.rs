//! The passes of the LLMQ-rs compiler, the pipeline that orders them for a target, and
//! [`compile`], the whole way from a model spec to a plan.
#![warn(missing_docs)]

mod compile;
mod fp8_casts;
mod fusion;
mod pipeline;
mod stochastic_rounding;

pub use compile::{
    CompileError, CompileOptions, Compiled, TrainGraph, compile, pass_context, train_graph,
};
pub use fp8_casts::Fp8Casts;
pub use fusion::Fusion;
pub use pipeline::{pass_names, pipeline};
pub use stochastic_rounding::StochasticRounding;
