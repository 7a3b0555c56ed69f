//! The model-spec front-end: a RON model file and the architecture file it names, read and
//! checked into the forward [`Graph`].
//!
//! A model file binds numbers (`dims`, `scalars`, `flags`) and names an architecture file; the
//! architecture file is a graph: inputs, weights, ops from the catalogue, `Repeat` blocks and a
//! `Loss`. The language is described in `docs/spec.md`.
//!
//! - [`syntax`]: the serde types of the two files;
//! - [`expr`]: dimension expressions (`heads*head_dim`);
//! - [`locate`]: source positions of the deserialised items, for errors;
//! - `build`: evaluation into the graph;
//! - [`error`]: [`SpecError`], a miette diagnostic with file, line, column and a label.
//!
//! ```
//! use llmq_compiler::spec::{self, SpecOptions};
//! use llmq_compiler::kernels::DType;
//! let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny.ron");
//! let opts = SpecOptions { batch: 2, seq: 8, weight_dtype: DType::BF16 };
//! let model = spec::load(&path, &opts).unwrap();
//! assert_eq!(model.dims["hidden"], 64);
//! assert!(model.param_count() > 0);
//! ```

mod build;
pub mod error;
pub mod expr;
pub mod locate;
pub mod syntax;

pub use error::{ErrorKind, SpecError};

use crate::ir::{Graph, Role, TensorId};
use indexmap::IndexMap;
use llmq_kernels::DType;
use std::path::{Path, PathBuf};

/// What the front-end needs beyond the files: the symbols bound at plan time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecOptions {
    /// Sequences per micro-batch (the symbol `batch`).
    pub batch: u64,
    /// Tokens per sequence (the symbol `seq`).
    pub seq: u64,
    /// Dtype of weights and activations: `BF16` or `F32`.
    pub weight_dtype: DType,
}

/// A model read from its spec: the forward graph and what later stages need to know about it.
#[derive(Clone, Debug)]
pub struct ForwardModel {
    /// The model's name (`qwen2.5-7b`).
    pub name: String,
    /// The forward graph, every node in [`Phase::Forward`](crate::ir::Phase::Forward).
    pub graph: Graph,
    /// Every bound dimension symbol, `batch` and `seq` included.
    pub dims: IndexMap<String, u64>,
    /// The token ids: `Role::Input`, `i32[batch, seq]`.
    pub tokens: TensorId,
    /// The target ids: `Role::Input`, `i32[batch, seq]`.
    pub targets: TensorId,
    /// The loss: `Role::Scalar`, `f32[1]`.
    pub loss: TensorId,
    /// Hex FNV-1a hash of the model file's bytes and the architecture file's bytes.
    pub fingerprint: String,
}

impl ForwardModel {
    /// Number of parameters: the sum of the elements of all weights.
    pub fn param_count(&self) -> u64 {
        self.graph
            .tensors()
            .filter(|(_, t)| t.role == Role::Weight)
            .map(|(_, t)| t.ty.numel())
            .sum()
    }
}

/// Loads a model file; its `arch` path is taken relative to the model file's folder.
pub fn load(path: &Path, opts: &SpecOptions) -> Result<ForwardModel, SpecError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        SpecError::without_source(
            ErrorKind::Io,
            &name,
            format!("cannot read model file `{name}`: {e}"),
        )
    })?;
    let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
    load_str(&name, &text, opts, |arch| {
        let p = dir.join(arch);
        let text = std::fs::read_to_string(&p)?;
        Ok((p, text))
    })
}

/// Loads a model from its text; `name` is the file name shown in errors, and `resolver` maps
/// the `arch` path to the architecture file's display path and text (tests use in-memory
/// files).
pub fn load_str(
    name: &str,
    source: &str,
    opts: &SpecOptions,
    resolver: impl Fn(&str) -> Result<(PathBuf, String), std::io::Error>,
) -> Result<ForwardModel, SpecError> {
    build::load(name, source, opts, &resolver)
}
