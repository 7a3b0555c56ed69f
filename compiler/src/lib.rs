//! The LLMQ-rs compiler: from a RON model spec to a static training plan.
//!
//! `spec` reads and checks a model file into a forward [`ir::Graph`]; `autodiff` appends the
//! backward pass and the optimizer; the passes (crate `llmq-passes`) annotate the graph;
//! `lower` orders it, assigns every buffer a fixed offset and writes a [`plan::Plan`], the
//! contract with the runtime.
#![warn(missing_docs)]

pub mod autodiff;
pub mod ir;
pub mod lower;
pub mod pass;
pub mod plan;
pub mod spec;
pub mod target;

pub use llmq_kernels as kernels;
