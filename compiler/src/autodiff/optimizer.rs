//! The optimizer phase: global gradient norm, clipping factor, AdamW per parameter, and the
//! gradients zeroed for the next step.

use super::{TrainOptions, scalar_tensor};
use crate::ir::{Graph, Node, Phase, Role, Tensor, TensorId};
use crate::target::Precision;
use indexmap::IndexMap;
use llmq_kernels::ops::{AdamW, Cast, ClipScale, SumSquares, Zero};
use llmq_kernels::{DType, Op};

/// The tensors the optimizer keeps for one parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParamState {
    /// The parameter in compute dtype.
    pub weight: TensorId,
    /// Its gradient.
    pub grad: TensorId,
    /// Its master copy, initialised from the weight's initial values, if any.
    pub master: Option<TensorId>,
    /// AdamW's first moment.
    pub m: TensorId,
    /// AdamW's second moment.
    pub v: TensorId,
}

/// Whether the optimizer updates FP32 master copies of BF16 weights (`--master`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MasterWeights {
    /// FP32 master copies, rounded into the BF16 weights after each update.
    Fp32,
    /// None: AdamW updates the BF16 weights in place, rounding stochastically (LLMQ's
    /// `--model-dtype=bf16`, the setting of its published runs); two bytes less per parameter
    /// than BF16 moments, four less than FP32 ones.
    None,
}

impl MasterWeights {
    /// The flag value (`fp32`, `none`).
    pub fn name(self) -> &'static str {
        match self {
            MasterWeights::Fp32 => "fp32",
            MasterWeights::None => "none",
        }
    }
}

impl std::str::FromStr for MasterWeights {
    type Err = String;

    /// The flag value: `fp32` or `none`.
    fn from_str(s: &str) -> Result<Self, String> {
        [MasterWeights::Fp32, MasterWeights::None]
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown master weights `{s}`: use fp32 or none"))
    }
}

/// AdamW's hyper-parameters, gradient clipping, and the dtypes of its state.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimizerOptions {
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the square root of the second moment.
    pub eps: f32,
    /// Decoupled weight decay, applied to matrices only (not to norms or biases).
    pub weight_decay: f32,
    /// Global-norm clipping threshold; zero or less disables clipping.
    pub max_grad_norm: f32,
    /// Master weights, or `None` for the precision's default (FP32 masters of BF16 weights).
    pub master: Option<MasterWeights>,
    /// The Adam moments' dtype, or `None` for the precision's default (BF16 under fp8, as in
    /// LLMQ; FP32 otherwise).
    pub moments: Option<DType>,
}

impl Default for OptimizerOptions {
    fn default() -> Self {
        OptimizerOptions {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: 1.0,
            master: None,
            moments: None,
        }
    }
}

impl OptimizerOptions {
    /// The master weights' dtype (if any) and the Adam moments' under `precision`: by default
    /// FP32 masters of BF16 weights, and LLMQ's BF16 moments under fp8 (written with stochastic
    /// rounding), FP32 ones under bf16; `master` and `moments` override that. FP32 plans update
    /// their FP32 weights directly, with FP32 moments.
    pub fn state_dtypes(&self, precision: Precision) -> (Option<DType>, DType) {
        if precision == Precision::Fp32 {
            return (None, DType::F32);
        }
        let master = match self.master.unwrap_or(MasterWeights::Fp32) {
            MasterWeights::Fp32 => Some(DType::F32),
            MasterWeights::None => None,
        };
        let moments = self.moments.unwrap_or(match precision {
            Precision::Fp8 => DType::BF16,
            Precision::Bf16 | Precision::Fp32 => DType::F32,
        });
        (master, moments)
    }
}

/// Appends the optimizer phase; returns the `hyper` input (`[lr, step]`), the norm scalar and
/// the state of every parameter.
pub(super) fn append(
    graph: &mut Graph,
    grads: &IndexMap<TensorId, TensorId>,
    opts: &TrainOptions,
) -> (TensorId, TensorId, Vec<ParamState>) {
    let o = &opts.optimizer;
    let sum_squares = scalar_tensor(graph, "grad_sum_squares", [1], Role::Scalar);
    for (i, &grad) in grads.values().enumerate() {
        // In the gradient's block, so per-block decisions (streaming) see it there.
        let layer = graph.tensor(grad).layer;
        node(
            graph,
            SumSquares.into(),
            vec![grad],
            vec![sum_squares],
            vec![i > 0],
            layer,
        );
    }
    let grad_norm = scalar_tensor(graph, "grad_norm", [1], Role::Scalar);
    let clip = scalar_tensor(graph, "clip_scale", [1], Role::Scalar);
    let clip_op = ClipScale {
        max_norm: o.max_grad_norm,
    };
    node(
        graph,
        clip_op.into(),
        vec![sum_squares],
        vec![grad_norm, clip],
        vec![false, false],
        None,
    );
    let hyper = scalar_tensor(graph, "hyper", [2], Role::Input);
    let mut params = Vec::with_capacity(grads.len());

    for (&weight, &grad) in grads {
        let w = graph.tensor(weight).clone();
        let state = |graph: &mut Graph, prefix: &str, role, dtype| {
            graph.add_tensor(Tensor {
                name: format!("{prefix}.{}", w.name),
                ty: w.ty.with_dtype(dtype),
                role,
                layer: w.layer,
                hf_name: None,
                init: None,
                parts: w.parts.iter().map(|p| p.derived(prefix)).collect(),
            })
        };
        let m = state(graph, "adam_m", Role::AdamM, opts.moment_dtype);
        let v = state(graph, "adam_v", Role::AdamV, opts.moment_dtype);
        let param = match opts.master_dtype {
            Some(dtype) => state(graph, "master", Role::MasterWeight, dtype),
            None => weight,
        };
        let weight_decay = if w.ty.shape.len() >= 2 {
            o.weight_decay
        } else {
            0.0
        };
        let adamw = AdamW::nearest(o.beta1, o.beta2, o.eps, weight_decay);
        let inputs = vec![param, grad, m, v, clip, hyper];
        node(
            graph,
            adamw.into(),
            inputs,
            vec![param, m, v],
            vec![false; 3],
            w.layer,
        );
        if param != weight {
            node(
                graph,
                Cast { to: w.ty.dtype }.into(),
                vec![param],
                vec![weight],
                vec![false],
                w.layer,
            );
        }
        node(
            graph,
            Zero.into(),
            vec![grad],
            vec![grad],
            vec![false],
            w.layer,
        );
        let master = (param != weight).then_some(param);
        params.push(ParamState {
            weight,
            grad,
            master,
            m,
            v,
        });
    }
    (hyper, grad_norm, params)
}

fn node(
    graph: &mut Graph,
    op: Op,
    inputs: Vec<TensorId>,
    outputs: Vec<TensorId>,
    accumulate: Vec<bool>,
    layer: Option<u32>,
) {
    graph.add_node(Node {
        op,
        inputs,
        outputs,
        accumulate,
        phase: Phase::Optimizer,
        layer,
    });
}
