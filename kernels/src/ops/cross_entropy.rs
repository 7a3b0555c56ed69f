//! `CrossEntropy`: the mean over tokens of `logsumexp(logits) − logits[target]`; targets below
//! zero are ignored (padding). The gradient op takes the loss's own gradient `dloss [1]`, which
//! the trainer sets to `1 / micro-batches` so that accumulated gradients are those of the mean.

use crate::op::check;
use crate::{BackwardStep, DType, OpError, OpSpec, Ref, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// Mean cross-entropy over the valid tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrossEntropy;

/// `dlogits = (softmax(logits) − onehot(target)) · dloss / valid_tokens`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrossEntropyBackward;

fn check_logits(
    op: &'static str,
    logits: &TensorType,
    targets: &TensorType,
) -> Result<(), OpError> {
    check::float(op, "logits", logits)?;
    check::dtype(op, "targets", targets, DType::I32)?;
    check::shape(op, logits.rows() == targets.numel(), || {
        format!(
            "logits {:?} need one target per row, targets are {:?}",
            logits.shape, targets.shape
        )
    })
}

/// Log-sum-exp of one row, in FP32 with the maximum subtracted.
pub(crate) fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + row.iter().map(|v| (v - max).exp()).sum::<f32>().ln()
}

pub(crate) fn target_index(t: f32, vocab: usize) -> Result<Option<usize>, OpError> {
    if t < 0.0 {
        return Ok(None);
    }
    if (t as usize) < vocab {
        Ok(Some(t as usize))
    } else {
        Err(OpError::Data {
            op: "cross_entropy",
            message: format!("target id {t} is outside the vocabulary [0, {vocab})"),
        })
    }
}

impl OpSpec for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["logits", "targets"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["loss"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        check_logits("cross_entropy", &inputs[0], &inputs[1])?;
        Ok(vec![TensorType::new([1], DType::F32)])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        3.0 * inputs[0].numel() as f64
    }
    fn backward(&self, _: &[TensorType]) -> Option<Vec<BackwardStep>> {
        use Ref::*;
        Some(vec![BackwardStep::new(
            CrossEntropyBackward,
            &[Input(0), Input(1), GradOutput(0)],
            &[GradInput(0)],
        )])
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (logits, targets) = (inputs[0], inputs[1]);
        let vocab = *logits.shape.last().unwrap() as usize;
        let (mut sum, mut valid) = (0.0f64, 0usize);
        for (row, &t) in logits.data.chunks(vocab).zip(targets.data) {
            if let Some(t) = target_index(t, vocab)? {
                sum += (log_sum_exp(row) - row[t]) as f64;
                valid += 1;
            }
        }
        outputs[0].data[0] = if valid == 0 {
            0.0
        } else {
            (sum / valid as f64) as f32
        };
        Ok(())
    }
}

impl OpSpec for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "cross_entropy_backward"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["logits", "targets", "dloss"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["dlogits"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        check_logits("cross_entropy_backward", &inputs[0], &inputs[1])?;
        check::shape("cross_entropy_backward", inputs[2].numel() == 1, || {
            format!("dloss must hold one value, got {:?}", inputs[2].shape)
        })?;
        Ok(vec![inputs[0].clone()])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        4.0 * inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (logits, targets, dloss) = (inputs[0], inputs[1], inputs[2].data[0]);
        let vocab = *logits.shape.last().unwrap() as usize;
        let mut valid = 0usize;
        for &t in targets.data {
            valid += target_index(t, vocab)?.is_some() as usize;
        }
        let scale = if valid == 0 {
            0.0
        } else {
            dloss / valid as f32
        };
        let rows = logits
            .data
            .chunks(vocab)
            .zip(outputs[0].data.chunks_mut(vocab));
        for ((row, grad), &t) in rows.zip(targets.data) {
            match target_index(t, vocab)? {
                None => grad.fill(0.0),
                Some(t) => {
                    let lse = log_sum_exp(row);
                    for (g, v) in grad.iter_mut().zip(row) {
                        *g = (v - lse).exp() * scale;
                    }
                    grad[t] -= scale;
                }
            }
        }
        Ok(())
    }
}
