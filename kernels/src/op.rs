//! The `OpSpec` trait every catalogue entry implements, and the closed `Op` enum that names them.
//!
//! An op is data: its attributes live in the enum variant, its behaviour in one file under
//! `ops/`. The compiler asks an op for its output types (`infer`), its cost (`flops`, `bytes`)
//! and its backward rule; the CPU backend asks for its reference implementation (`cpu`); the CUDA
//! backend for its kernel name (`cuda_kernel`).

use crate::TensorType;
use crate::ops::*;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An error about an op's operands: arity, shapes, dtypes, or data it cannot accept.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpError {
    /// Wrong number of operands.
    #[error("{op} takes {expected} inputs, got {got}")]
    Arity {
        /// The op's name.
        op: &'static str,
        /// How many it takes.
        expected: usize,
        /// How many it got.
        got: usize,
    },
    /// Operand shapes that do not fit together.
    #[error("{op}: {message}")]
    Shape {
        /// The op's name.
        op: &'static str,
        /// What was expected and what was found.
        message: String,
    },
    /// An operand of the wrong dtype.
    #[error("{op}: input `{input}` must be {expected}, got {got}")]
    DType {
        /// The op's name.
        op: &'static str,
        /// The input's name in the op's signature.
        input: &'static str,
        /// What the op accepts.
        expected: String,
        /// What it got.
        got: crate::DType,
    },
    /// Data the op cannot process (a token id out of range, say).
    #[error("{op}: {message}")]
    Data {
        /// The op's name.
        op: &'static str,
        /// What is wrong with the data.
        message: String,
    },
}

/// A read-only operand of a CPU reference: values widened to FP32, with their shape.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The extents, outermost first.
    pub shape: &'a [u64],
    /// The values, row-major.
    pub data: &'a [f32],
}

/// A result of a CPU reference: FP32 values the backend then rounds to the storage dtype.
#[derive(Debug)]
pub struct ViewMut<'a> {
    /// The extents, outermost first.
    pub shape: &'a [u64],
    /// The values, row-major; the reference overwrites all of them.
    pub data: &'a mut [f32],
}

/// Work an op does, for the cost model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Floating-point operations (a multiply-add counts two).
    pub flops: f64,
    /// Bytes read from and written to device memory, each operand once.
    pub bytes: f64,
    /// Bytes moved by a memory-bound phase that runs after the op's matrix work, not beside it
    /// (a fused op made of matmuls and a kernel in turn): the cost model adds their time to the
    /// roofline of the rest instead of overlapping them.
    pub serial_bytes: f64,
    /// True when the FLOPs run on matrix units (so FP8 or BF16 peak applies).
    pub matrix_units: bool,
    /// The op's matrix rate as a fraction of a large GEMM's (1 for the cuBLASLt matmuls).
    pub matrix_rate: f64,
    /// cuBLASLt matmuls the op launches, each with a fixed cost beyond its FLOPs.
    pub library_matmuls: f64,
    /// For a kernel whose thread blocks do uneven work: its longest block, which the op's
    /// time cannot undercut however many SMs run the rest.
    pub longest_block: Option<LongestBlock>,
}

/// The longest chain of work one thread block of a kernel does in turn.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LongestBlock {
    /// The share of the op's FLOPs that the block does.
    pub share: f64,
    /// Blocks of the kernel one SM runs at once: the block gets 1/that of an SM.
    pub blocks_per_sm: f64,
}

/// A reference used by a backward rule to name a tensor of the forward op it differentiates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ref {
    /// The forward op's i-th input.
    Input(u8),
    /// The forward op's i-th output.
    Output(u8),
    /// The gradient of the forward op's i-th output.
    GradOutput(u8),
    /// The gradient of the forward op's i-th input (an output of a backward step, which later
    /// steps of the rule may read unless it is a weight's accumulated gradient).
    GradInput(u8),
    /// A temporary shared between the backward steps of one rule.
    Temp(u8),
}

/// One piece of a backward rule, its tensors named relative to the forward op.
#[derive(Clone, Debug, PartialEq)]
pub enum BackwardStep {
    /// `outputs = op(inputs)`; outputs are `GradInput` or `Temp` references.
    Apply {
        /// The op to apply.
        op: Op,
        /// Its operands.
        inputs: Vec<Ref>,
        /// Its results.
        outputs: Vec<Ref>,
    },
    /// The gradient of input `input` is the gradient of output `output`, unchanged.
    PassThrough {
        /// The forward output whose gradient is passed on.
        output: u8,
        /// The forward input that receives it.
        input: u8,
    },
}

impl BackwardStep {
    /// An `Apply` step from its op and operand lists.
    pub fn new(op: impl Into<Op>, inputs: &[Ref], outputs: &[Ref]) -> Self {
        BackwardStep::Apply {
            op: op.into(),
            inputs: inputs.to_vec(),
            outputs: outputs.to_vec(),
        }
    }
}

/// What every op of the catalogue provides.
pub trait OpSpec {
    /// The op's name in dumps and CUDA symbols (`rms_norm`, `linear_backward_data`).
    fn name(&self) -> &'static str;
    /// Names of the inputs, in order (for messages and dumps).
    fn input_names(&self) -> &'static [&'static str];
    /// Names of the outputs, in order.
    fn output_names(&self) -> &'static [&'static str];
    /// Output types from input types, or why the inputs do not fit.
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError>;
    /// Floating-point operations for these operand types.
    fn flops(&self, inputs: &[TensorType], outputs: &[TensorType]) -> f64;
    /// True when the op's FLOPs run on matrix units.
    fn uses_matrix_units(&self) -> bool {
        false
    }
    /// The rate its kernels reach on matrix units as a fraction of a large GEMM's, which the
    /// cost model prices at a fixed share of the device's peak; 1 unless measured lower (each
    /// such figure says where it was measured).
    fn matrix_rate(&self, inputs: &[TensorType]) -> f64 {
        let _ = inputs;
        1.0
    }
    /// Bytes moved: every operand read or written once.
    fn bytes(&self, inputs: &[TensorType], outputs: &[TensorType]) -> f64 {
        inputs.iter().chain(outputs).map(|t| t.bytes() as f64).sum()
    }
    /// The longest block of the op's kernel (see `Cost::longest_block`), for kernels whose
    /// blocks do uneven work; `None` where they share it evenly.
    fn longest_block(&self, inputs: &[TensorType], outputs: &[TensorType]) -> Option<LongestBlock> {
        let _ = (inputs, outputs);
        None
    }
    /// cuBLASLt matmuls the op launches (see `Cost::library_matmuls`); 0 for kernels.
    fn library_matmuls(&self, inputs: &[TensorType], outputs: &[TensorType]) -> f64 {
        let _ = (inputs, outputs);
        0.0
    }
    /// Bytes of a phase that runs in turn with the op's matrix work (see `Cost::serial_bytes`);
    /// 0 for ops made of one kernel or one matmul.
    fn serial_bytes(&self, inputs: &[TensorType], outputs: &[TensorType]) -> f64 {
        let _ = (inputs, outputs);
        0.0
    }
    /// The steps computing input gradients, or `None` when the op is not differentiated
    /// (backward and optimizer ops).
    fn backward(&self, inputs: &[TensorType]) -> Option<Vec<BackwardStep>> {
        let _ = inputs;
        None
    }
    /// The FP32 reference: writes every element of every output.
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError>;
    /// The kernel's base name in `kernels/cuda/` (the dtype suffix is added at launch).
    fn cuda_kernel(&self) -> &'static str {
        self.name()
    }
    /// Attributes as `key=value` pairs for dumps (empty for ops without attributes).
    fn attrs(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

macro_rules! declare_ops {
    ($($(#[$doc:meta])* $variant:ident($ty:ty),)*) => {
        /// Every op the compiler knows: one closed set, each variant's behaviour in `ops/`.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        pub enum Op {
            $($(#[$doc])* $variant($ty),)*
        }

        impl Op {
            /// The catalogue entry of this op.
            pub fn spec(&self) -> &dyn OpSpec {
                match self {
                    $(Op::$variant(op) => op,)*
                }
            }
        }

        $(impl From<$ty> for Op {
            fn from(op: $ty) -> Op {
                Op::$variant(op)
            }
        })*
    };
}

declare_ops! {
    /// Row lookup: `out[n] = table[tokens[n]]`.
    Embedding(Embedding),
    /// Scatter-add of output gradients into the table's gradient.
    EmbeddingBackward(EmbeddingBackward),
    /// Root-mean-square normalisation over groups of the last dimension, times a weight.
    RmsNorm(RmsNorm),
    /// Gradients of `RmsNorm` for its input and weight.
    RmsNormBackward(RmsNormBackward),
    /// `RmsNorm` that also emits the abs-max of its output (an FP8 scale input).
    RmsNormAbsMax(RmsNormAbsMax),
    /// `RmsNormBackward` whose input gradient is added into a residual gradient, fused.
    RmsNormBackwardAdd(RmsNormBackwardAdd),
    /// `RmsNormBackwardAdd` that also emits the abs-max of the sum (an FP8 scale input).
    RmsNormBackwardAddAbsMax(RmsNormBackwardAddAbsMax),
    /// `y = x · Wᵀ` (PyTorch's `nn.Linear` layout, weight `[out, in]`).
    Linear(Linear),
    /// `dx = dy · W`.
    LinearBackwardData(LinearBackwardData),
    /// `dW = dyᵀ · x`.
    LinearBackwardWeight(LinearBackwardWeight),
    /// `y = x + b`, the bias broadcast over rows.
    BiasAdd(BiasAdd),
    /// `db = Σ_rows dy`.
    BiasBackward(BiasBackward),
    /// Rotary position embedding, rotate-half convention.
    Rope(Rope),
    /// The inverse rotation, for the gradient.
    RopeBackward(RopeBackward),
    /// Causal grouped-query attention, keeping the log-sum-exp for backward.
    Attention(Attention),
    /// Gradients of `Attention` for q, k and v.
    AttentionBackward(AttentionBackward),
    /// `silu(gate) · up`.
    SwiGlu(SwiGlu),
    /// Gradients of `SwiGlu`.
    SwiGluBackward(SwiGluBackward),
    /// `SwiGlu` that also emits the abs-max of its output (an FP8 scale input).
    SwiGluAbsMax(SwiGluAbsMax),
    /// `SwiGluBackward` that also emits the abs-max of both gradients.
    SwiGluBackwardAbsMax(SwiGluBackwardAbsMax),
    /// Elementwise sum of two tensors of one shape.
    Add(Add),
    /// A residual add and the RMS normalisation of its result, fused.
    AddRmsNorm(AddRmsNorm),
    /// `AddRmsNorm` that also emits the abs-max of its normalised output (an FP8 scale input).
    AddRmsNormAbsMax(AddRmsNormAbsMax),
    /// Mean cross-entropy of logits against target ids (negative targets are ignored).
    CrossEntropy(CrossEntropy),
    /// Gradient of the mean cross-entropy with respect to the logits.
    CrossEntropyBackward(CrossEntropyBackward),
    /// The LM head and the mean cross-entropy fused, over chunks of tokens.
    ClassifierCrossEntropy(ClassifierCrossEntropy),
    /// Gradients of `ClassifierCrossEntropy` for the hidden states and the head weight.
    ClassifierCrossEntropyBackward(ClassifierCrossEntropyBackward),
    /// Sum of squares of a tensor (accumulated over all gradients for the global norm).
    SumSquares(SumSquares),
    /// The global norm and the clipping factor from a sum of squares.
    ClipScale(ClipScale),
    /// One AdamW update of a parameter and its two moments, in place.
    AdamW(AdamW),
    /// Conversion of a tensor to another storage dtype (round to nearest even, saturating).
    Cast(Cast),
    /// Largest absolute value of a tensor.
    AbsMax(AbsMax),
    /// Scaled conversion to FP8 with a per-tensor scale from an abs-max.
    Quantize(Quantize),
    /// Sets every element to zero.
    Zero(Zero),
    /// `Quantize` into both layouts at once, for tensors both matmuls of the recipe read.
    QuantizeDual(QuantizeDual),
    /// `c = a · bᵀ` of two K-major FP8 operands, descaled, FP32 accumulation.
    Fp8Matmul(Fp8Matmul),
    /// Conversion to BF16 with stochastic rounding from the counter-based generator.
    CastStochastic(CastStochastic),
    /// The identity, between the device and the host arena (offload, prefetch, streaming).
    Copy(Copy),
    /// Column ranges of each row copied out into separate tensors (q, k, v from one matmul).
    Split(Split),
    /// Tensors written side by side in each row: the backward of `Split`.
    Concat(Concat),
    /// The packed q|k|v split into q, k and v (after its packed bias), q and k rotated by RoPE.
    SplitRope(SplitRope),
    /// Gradients of `SplitRope`: dq and dk rotated back, written packed with dv.
    SplitRopeBackward(SplitRopeBackward),
    /// `SplitRopeBackward` that also emits the abs-max of its output (an FP8 scale input).
    SplitRopeBackwardAbsMax(SplitRopeBackwardAbsMax),
    /// The transpose of an FP8 tensor (its FP8 copy in the other matmul layout).
    TransposeFp8(TransposeFp8),
}

impl Op {
    /// The op's name (`rms_norm`).
    pub fn name(&self) -> &'static str {
        self.spec().name()
    }

    /// Output types for these inputs, after checking the arity.
    pub fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let spec = self.spec();
        let expected = spec.input_names().len();
        if inputs.len() != expected {
            return Err(OpError::Arity {
                op: spec.name(),
                expected,
                got: inputs.len(),
            });
        }
        spec.infer(inputs)
    }

    /// FLOPs and bytes of one execution.
    pub fn cost(&self, inputs: &[TensorType], outputs: &[TensorType]) -> Cost {
        let spec = self.spec();
        Cost {
            flops: spec.flops(inputs, outputs),
            bytes: spec.bytes(inputs, outputs),
            serial_bytes: spec.serial_bytes(inputs, outputs),
            matrix_units: spec.uses_matrix_units(),
            matrix_rate: spec.matrix_rate(inputs),
            library_matmuls: spec.library_matmuls(inputs, outputs),
            longest_block: spec.longest_block(inputs, outputs),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spec = self.spec();
        f.write_str(spec.name())?;
        let attrs = spec.attrs();
        if !attrs.is_empty() {
            f.write_str("{")?;
            for (i, (k, v)) in attrs.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{k}={v}")?;
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

/// Shared checks used by the shape rules.
pub(crate) mod check {
    use super::OpError;
    use crate::{DType, TensorType};

    /// Fails unless `t` is a floating-point tensor.
    pub fn float(op: &'static str, input: &'static str, t: &TensorType) -> Result<(), OpError> {
        if t.dtype.is_float() {
            Ok(())
        } else {
            Err(OpError::DType {
                op,
                input,
                expected: "a float dtype".into(),
                got: t.dtype,
            })
        }
    }

    /// Fails unless `t` has dtype `want`.
    pub fn dtype(
        op: &'static str,
        input: &'static str,
        t: &TensorType,
        want: DType,
    ) -> Result<(), OpError> {
        if t.dtype == want {
            Ok(())
        } else {
            Err(OpError::DType {
                op,
                input,
                expected: want.name().into(),
                got: t.dtype,
            })
        }
    }

    /// Fails unless `a` and `b` have the same dtype.
    pub fn same_dtype(
        op: &'static str,
        input: &'static str,
        a: &TensorType,
        b: &TensorType,
    ) -> Result<(), OpError> {
        if a.dtype == b.dtype {
            Ok(())
        } else {
            Err(OpError::DType {
                op,
                input,
                expected: a.dtype.name().into(),
                got: b.dtype,
            })
        }
    }

    /// Fails with a shape message unless `cond`.
    pub fn shape(
        op: &'static str,
        cond: bool,
        message: impl FnOnce() -> String,
    ) -> Result<(), OpError> {
        if cond {
            Ok(())
        } else {
            Err(OpError::Shape {
                op,
                message: message(),
            })
        }
    }

    /// Fails unless `a` and `b` have the same shape.
    pub fn same_shape(
        op: &'static str,
        what: &str,
        a: &TensorType,
        b: &TensorType,
    ) -> Result<(), OpError> {
        shape(op, a.shape == b.shape, || {
            format!("{what}: shapes {:?} and {:?} differ", a.shape, b.shape)
        })
    }
}
