//! The `Pass` trait and the pass manager that runs a pipeline over a training graph.
//!
//! The manager owns the cross-cutting work: it verifies the graph after every pass (naming the
//! pass that broke it), records each pass's time, and hands the text of the graph after a pass
//! to whoever asked for it (`llmqc plan --dump-after NAME`). Passes themselves print nothing.

use crate::ir::{Graph, GraphError, write_graph};
use crate::kernels::DType;
use crate::target::Precision;
use std::time::{Duration, Instant};

/// What passes may look at when deciding what to do.
#[derive(Clone, Debug, PartialEq)]
pub struct PassContext {
    /// The numeric recipe.
    pub precision: Precision,
    /// The master weights' dtype, or `None` where AdamW updates the weights themselves.
    pub master_dtype: Option<DType>,
    /// The Adam moments' dtype.
    pub moment_dtype: DType,
    /// The FP8 format of gradients in FP8 matmuls (e4m3 or e5m2), under `Precision::Fp8`.
    pub grad_fp8: DType,
    /// Device memory budget in bytes.
    pub vram_bytes: u64,
    /// Number of GPUs.
    pub gpus: u32,
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The pass refused the graph.
    #[error("pass {pass}: {message}")]
    Failed {
        /// The pass.
        pass: &'static str,
        /// Why.
        message: String,
    },
    /// The graph was inconsistent after the pass.
    #[error("the graph is invalid after pass {pass}: {source}")]
    Invalid {
        /// The pass that ran last.
        pass: &'static str,
        /// What is wrong.
        source: GraphError,
    },
}

/// A transformation of the training graph.
pub trait Pass {
    /// The pass's name, used by `--dump-after` and in messages.
    fn name(&self) -> &'static str;
    /// Whether the plan would be wrong without it (such passes cannot be switched off).
    fn is_required(&self) -> bool {
        false
    }
    /// Whether it applies to this target at all.
    fn is_enabled(&self, ctx: &PassContext) -> bool {
        let _ = ctx;
        true
    }
    /// Transforms the graph.
    fn run(&self, graph: &mut Graph, ctx: &PassContext) -> Result<(), PassError>;
}

/// How long each pass took, and the graph after the one asked for.
#[derive(Debug, Default)]
pub struct PassReport {
    /// `(pass, time)` in run order.
    pub timings: Vec<(&'static str, Duration)>,
    /// The text of the graph after the pass named in `dump_after`.
    pub dump: Option<String>,
}

/// Runs `pipeline` in order, verifying after each pass.
pub fn run_passes(
    graph: &mut Graph,
    pipeline: &[&dyn Pass],
    ctx: &PassContext,
    dump_after: Option<&str>,
) -> Result<PassReport, PassError> {
    let mut report = PassReport::default();
    for pass in pipeline.iter().filter(|p| p.is_enabled(ctx)) {
        let start = Instant::now();
        pass.run(graph, ctx)?;
        report.timings.push((pass.name(), start.elapsed()));
        graph.verify().map_err(|source| PassError::Invalid {
            pass: pass.name(),
            source,
        })?;
        if dump_after == Some(pass.name()) {
            report.dump = Some(write_graph(graph));
        }
    }
    Ok(report)
}
