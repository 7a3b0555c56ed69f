//! The catalogue: one file per op (its backward op beside it), each implementing [`OpSpec`].
//!
//! [`OpSpec`]: crate::OpSpec

mod abs_max;
mod adamw;
mod add;
mod add_rms_norm;
mod attention;
mod bias_add;
mod cast;
mod classifier_cross_entropy;
mod clip_scale;
mod copy;
mod cross_entropy;
mod embedding;
mod fp8_matmul;
mod linear;
mod quantize;
mod rms_norm;
mod rope;
mod split;
mod split_rope;
mod sum_squares;
mod swiglu;
mod transpose;
mod zero;

pub use abs_max::AbsMax;
pub use adamw::{AdamW, StochasticMoments};
pub use add::Add;
pub use add_rms_norm::{AddRmsNorm, AddRmsNormAbsMax};
pub use attention::{
    ATTENTION_MMA_ROWS, Attention, AttentionBackward, attention_backward_blocks_per_sm,
    attention_backward_splits, cudnn_attention_serves,
};
pub use bias_add::{BiasAdd, BiasBackward};
pub use cast::{Cast, CastStochastic};
pub use classifier_cross_entropy::{ClassifierCrossEntropy, ClassifierCrossEntropyBackward};
pub use clip_scale::ClipScale;
pub use copy::Copy;
pub use cross_entropy::{CrossEntropy, CrossEntropyBackward};
pub use embedding::{Embedding, EmbeddingBackward};
pub use fp8_matmul::Fp8Matmul;
pub use linear::{Linear, LinearBackwardData, LinearBackwardWeight};
pub use quantize::{Quantize, QuantizeDual};
pub use rms_norm::{
    RmsNorm, RmsNormAbsMax, RmsNormBackward, RmsNormBackwardAdd, RmsNormBackwardAddAbsMax,
};
pub use rope::{Rope, RopeBackward};
pub use split::{Concat, MAX_PARTS, Split};
pub use split_rope::{SplitRope, SplitRopeBackward, SplitRopeBackwardAbsMax};
pub use sum_squares::SumSquares;
pub use swiglu::{SwiGlu, SwiGluAbsMax, SwiGluBackward, SwiGluBackwardAbsMax};
pub use transpose::TransposeFp8;
pub use zero::Zero;
