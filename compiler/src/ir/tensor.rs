//! Tensors: a type, a role in training, and for weights their initialisation and checkpoint name.

use llmq_kernels::TensorType;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a tensor is for. The role decides its lifetime (state lives across steps) and its
/// memory category.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Written by the host before a step: tokens, targets, the loss gradient, `[lr, step]`.
    Input,
    /// A model parameter in its compute dtype.
    Weight,
    /// The FP32 copy of a parameter that the optimizer updates.
    MasterWeight,
    /// The gradient of a parameter, accumulated over micro-batches.
    Gradient,
    /// AdamW's first moment.
    AdamM,
    /// AdamW's second moment.
    AdamV,
    /// A weight's FP8 copy (or its descale, or its abs-max), made once per optimizer step and
    /// read by every micro-batch.
    QuantizedWeight,
    /// A forward value used only within the forward pass.
    Activation,
    /// A forward value kept for the backward pass.
    Saved,
    /// A backward temporary (activation gradients).
    Workspace,
    /// A small value the host reads or that lives across the step: loss, gradient norm.
    Scalar,
}

impl Role {
    /// True for tensors that live for the whole step (and across steps): they are never
    /// overlapped with other buffers.
    pub fn is_persistent(self) -> bool {
        !matches!(self, Role::Activation | Role::Saved | Role::Workspace)
    }

    /// The memory category the tensor's bytes count under.
    pub fn category(self) -> Category {
        match self {
            Role::Weight | Role::QuantizedWeight => Category::Weights,
            Role::MasterWeight => Category::Master,
            Role::Gradient => Category::Gradients,
            Role::AdamM => Category::AdamM,
            Role::AdamV => Category::AdamV,
            Role::Activation | Role::Saved => Category::Activations,
            Role::Workspace => Category::Workspace,
            Role::Input | Role::Scalar => Category::Other,
        }
    }

    /// The role's name in dumps.
    pub fn name(self) -> &'static str {
        match self {
            Role::Input => "input",
            Role::Weight => "weight",
            Role::MasterWeight => "master",
            Role::Gradient => "grad",
            Role::AdamM => "adam_m",
            Role::AdamV => "adam_v",
            Role::QuantizedWeight => "weight_q",
            Role::Activation => "act",
            Role::Saved => "saved",
            Role::Workspace => "work",
            Role::Scalar => "scalar",
        }
    }
}

/// The categories of the memory table, in the order they are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Category {
    /// Parameters in compute dtype (and their FP8 copies when kept across micro-batches).
    Weights,
    /// FP32 master parameters.
    Master,
    /// Parameter gradients.
    Gradients,
    /// AdamW first moments.
    AdamM,
    /// AdamW second moments.
    AdamV,
    /// Forward activations, those saved for backward included.
    Activations,
    /// Backward temporaries.
    Workspace,
    /// Inputs and scalars.
    Other,
}

impl Category {
    /// Every category, in table order.
    pub const ALL: [Category; 8] = [
        Category::Weights,
        Category::Master,
        Category::Gradients,
        Category::AdamM,
        Category::AdamV,
        Category::Activations,
        Category::Workspace,
        Category::Other,
    ];

    /// The category's name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Category::Weights => "weights",
            Category::Master => "master",
            Category::Gradients => "gradients",
            Category::AdamM => "adam m",
            Category::AdamV => "adam v",
            Category::Activations => "activations",
            Category::Workspace => "workspace",
            Category::Other => "other",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a parameter is initialised before training from scratch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Init {
    /// All zeros (biases).
    Zeros,
    /// All ones (norm scales).
    Ones,
    /// Normal with mean zero.
    Normal {
        /// Standard deviation.
        std: f32,
    },
}

/// A tensor of the graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    /// A readable, unique name (`layers.3.q`, `grad.layers.3.wq`).
    pub name: String,
    /// Shape and dtype.
    pub ty: TensorType,
    /// What the tensor is for.
    pub role: Role,
    /// The block (repeat iteration) it belongs to, if any.
    pub layer: Option<u32>,
    /// For weights: the Hugging Face tensor name used for import and export.
    pub hf_name: Option<String>,
    /// For weights: how to initialise them.
    pub init: Option<Init>,
    /// For a parameter packed from several (`horizontal_fusion`), and its gradient and
    /// optimizer state: the parts it was made of, by rows. Empty for a tensor of one piece.
    pub parts: Vec<Part>,
}

/// A row range of a packed tensor that the model declares as a tensor of its own (the gate
/// projection inside `gate|up`, say): checkpoints, `--dump-step` and weight loading see it
/// under its own names, and it is initialised from its own name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// Its own name in the graph (`layers.3.w_gate`; `master.layers.3.w_gate` for state).
    pub name: String,
    /// Its Hugging Face name, for weights.
    pub hf_name: Option<String>,
    /// First row (of the outermost dimension) in the packed tensor.
    pub start: u64,
    /// One past its last row.
    pub end: u64,
}

impl Part {
    /// The name checkpoints use for a weight's part: its Hugging Face name if it has one.
    pub fn checkpoint_name(&self) -> &str {
        self.hf_name.as_deref().unwrap_or(&self.name)
    }

    /// The same rows of a tensor derived from the packed one (its gradient or optimizer
    /// state), named with `prefix.` before the part's name.
    pub fn derived(&self, prefix: &str) -> Part {
        Part {
            name: format!("{prefix}.{}", self.name),
            hf_name: None,
            start: self.start,
            end: self.end,
        }
    }
}
