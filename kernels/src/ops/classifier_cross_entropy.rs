//! `ClassifierCrossEntropy`: the LM head and the loss in one op, `loss = cross_entropy(x · Wᵀ,
//! targets)`, computed over chunks of `chunk_rows` tokens so that the logits of the whole batch
//! (`rows × vocab`, the largest activation of a small model) never exist at once: one chunk's
//! logits live in the `scratch` output, a workspace whose bytes the plan places like any other.
//!
//! Two ops. `classifier_cross_entropy` is the loss alone (one matmul per chunk): what
//! evaluation runs. `classifier_cross_entropy_backward` is what training runs, and its backward
//! rule: per chunk the logits (one matmul), in one kernel the loss and the logits' gradient in
//! place, then the data and the weight gradient (two matmuls). In training the head's backward
//! follows its forward at once, so the logits are made once per chunk and never saved: three
//! matmuls for the head, where a separate forward and backward would need four.
//!
//! Numerics are those of the unfused `linear` → `cross_entropy` pair and their backward ops, bit
//! for bit on the CPU: the logits are rounded to `logits` (the dtype `linear` would store them
//! in) before the loss reads them, and their gradient is rounded the same way before the two
//! matmuls. The CPU reference forms the weight gradient in one product over all rows, so its
//! result does not depend on the chunking; the GPU accumulates it chunk by chunk (equal within
//! FP32 rounding).

use super::cross_entropy::{log_sum_exp, target_index};
use super::linear::gemm;
use crate::op::check;
use crate::{BackwardStep, DType, OpError, OpSpec, Ref, TensorType, View, ViewMut, numerics};
use serde::{Deserialize, Serialize};

/// Mean cross-entropy of `x · Wᵀ` against `targets`, a chunk of rows at a time (the loss
/// alone: evaluation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierCrossEntropy {
    /// Tokens per chunk (the scratch holds `min(chunk_rows, rows) × vocab` logits).
    pub chunk_rows: u64,
    /// The dtype the logits are rounded to: the dtype of `x`.
    pub logits: DType,
}

/// The loss of [`ClassifierCrossEntropy`] and its gradients for `x` and `W`, from one product
/// of logits per chunk (training).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierCrossEntropyBackward {
    /// Tokens per chunk, as in the forward.
    pub chunk_rows: u64,
    /// The dtype the logits and their gradient are rounded to.
    pub logits: DType,
}

/// Checks the leading operands `x [.., H]`, `w [V, H]`, `targets [..]` of either op and returns
/// `(rows, vocab)`.
fn check_operands(
    op: &'static str,
    logits: DType,
    chunk_rows: u64,
    inputs: &[TensorType],
) -> Result<(u64, u64), OpError> {
    let (x, w, targets) = (&inputs[0], &inputs[1], &inputs[2]);
    check::float(op, "x", x)?;
    check::same_dtype(op, "w", x, w)?;
    check::dtype(op, "targets", targets, DType::I32)?;
    check::shape(op, w.shape.len() == 2 && w.shape[1] == x.last_dim(), || {
        format!(
            "the head weight {:?} must be [vocab, {}] for x {:?}",
            w.shape,
            x.last_dim(),
            x.shape
        )
    })?;
    check::shape(op, x.rows() == targets.numel(), || {
        format!(
            "x {:?} needs one target per row, targets are {:?}",
            x.shape, targets.shape
        )
    })?;
    check::shape(op, logits == x.dtype, || {
        format!(
            "logits dtype {} must be x's dtype {}",
            logits.name(),
            x.dtype.name()
        )
    })?;
    check::shape(op, chunk_rows > 0, || "chunk_rows must be positive".into())?;
    Ok((x.rows(), w.shape[0]))
}

/// Chunks of `chunk_rows` (the last may be shorter) over `rows` tokens.
fn chunks(rows: u64, chunk_rows: u64) -> f64 {
    rows.div_ceil(chunk_rows.clamp(1, rows.max(1))) as f64
}

/// The scratch of one chunk's logits.
fn scratch_type(chunk_rows: u64, rows: u64, vocab: u64, logits: DType) -> TensorType {
    TensorType::new([chunk_rows.min(rows).max(1), vocab], logits)
}

/// `logits[n × V] = x[n × H] · Wᵀ`, rounded to `dtype`.
fn chunk_logits(x: &[f32], w: &[f32], hidden: usize, vocab: usize, dtype: DType, out: &mut [f32]) {
    let n = x.len() / hidden;
    gemm(
        n,
        hidden,
        vocab,
        x,
        (hidden as isize, 1),
        w,
        (1, hidden as isize),
        out,
    );
    for v in &mut out[..n * vocab] {
        *v = numerics::round_to(dtype, *v);
    }
}

/// Number of rows whose target counts.
fn valid_targets(targets: &[f32], vocab: usize) -> Result<usize, OpError> {
    let mut valid = 0;
    for &t in targets {
        valid += target_index(t, vocab)?.is_some() as usize;
    }
    Ok(valid)
}

fn attrs(chunk_rows: u64, logits: DType) -> Vec<(&'static str, String)> {
    vec![
        ("chunk_rows", chunk_rows.to_string()),
        ("logits", logits.name().to_string()),
    ]
}

fn logits_bytes(rows: u64, vocab: u64, dtype: DType) -> f64 {
    (rows * vocab * dtype.size_bytes()) as f64
}

/// The bytes of the operands but the scratch (the last output), whose traffic the ops count per
/// logit: the cost does not depend on the chunk size.
fn operands(inputs: &[TensorType], outputs: &[TensorType]) -> f64 {
    let (_, results) = outputs.split_last().expect("the ops have a scratch output");
    inputs.iter().chain(results).map(|t| t.bytes() as f64).sum()
}

/// The mean of `sum` over `valid` rows; 0 when no row counts.
fn mean(sum: f64, valid: usize) -> f32 {
    if valid == 0 {
        0.0
    } else {
        (sum / valid as f64) as f32
    }
}

impl OpSpec for ClassifierCrossEntropy {
    fn name(&self) -> &'static str {
        "classifier_cross_entropy"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x", "w", "targets"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["loss", "scratch"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let (rows, vocab) = check_operands(self.name(), self.logits, self.chunk_rows, inputs)?;
        Ok(vec![
            TensorType::new([1], DType::F32),
            scratch_type(self.chunk_rows, rows, vocab, self.logits),
        ])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        let (rows, vocab, hidden) = (inputs[0].rows(), inputs[1].shape[0], inputs[1].shape[1]);
        (2 * rows * vocab * hidden + 3 * rows * vocab) as f64
    }
    fn uses_matrix_units(&self) -> bool {
        true
    }
    fn library_matmuls(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        chunks(inputs[0].rows(), self.chunk_rows)
    }
    fn bytes(&self, inputs: &[TensorType], outputs: &[TensorType]) -> f64 {
        // Operands once, plus every chunk's logits written by the matmul.
        operands(inputs, outputs) + logits_bytes(inputs[0].rows(), inputs[1].shape[0], self.logits)
    }
    fn serial_bytes(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        // The loss kernel's read of each chunk's logits, after the chunk's matmul.
        logits_bytes(inputs[0].rows(), inputs[1].shape[0], self.logits)
    }
    fn backward(&self, _: &[TensorType]) -> Option<Vec<BackwardStep>> {
        use Ref::*;
        // The backward makes the loss again (a temporary here): in training it is the loss.
        Some(vec![BackwardStep::new(
            ClassifierCrossEntropyBackward {
                chunk_rows: self.chunk_rows,
                logits: self.logits,
            },
            &[Input(0), Input(1), Input(2), GradOutput(0)],
            &[GradInput(0), GradInput(1), Temp(0), Temp(1)],
        )])
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (x, w, targets) = (inputs[0], inputs[1], inputs[2]);
        let (vocab, hidden) = (w.shape[0] as usize, w.shape[1] as usize);
        let chunk = (self.chunk_rows as usize).min(targets.data.len()).max(1);
        let [loss, scratch] = outputs else {
            unreachable!("infer gives two outputs")
        };
        let (mut sum, mut valid) = (0.0f64, 0usize);
        let chunks = x
            .data
            .chunks(chunk * hidden)
            .zip(targets.data.chunks(chunk));
        for (x, targets) in chunks {
            chunk_logits(x, w.data, hidden, vocab, self.logits, scratch.data);
            for (row, &t) in scratch.data.chunks(vocab).zip(targets) {
                if let Some(t) = target_index(t, vocab)? {
                    sum += (log_sum_exp(row) - row[t]) as f64;
                    valid += 1;
                }
            }
        }
        loss.data[0] = mean(sum, valid);
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        attrs(self.chunk_rows, self.logits)
    }
}

impl OpSpec for ClassifierCrossEntropyBackward {
    fn name(&self) -> &'static str {
        "classifier_cross_entropy_backward"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x", "w", "targets", "dloss"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["dx", "dw", "loss", "scratch"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let op = self.name();
        let (rows, vocab) = check_operands(op, self.logits, self.chunk_rows, inputs)?;
        check::shape(op, inputs[3].numel() == 1, || {
            format!("dloss must hold one value, got {:?}", inputs[3].shape)
        })?;
        Ok(vec![
            inputs[0].clone(),
            inputs[1].clone(),
            TensorType::new([1], DType::F32),
            scratch_type(self.chunk_rows, rows, vocab, self.logits),
        ])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        // The logits, the data and the weight gradient; the loss and the logits' gradient.
        let (rows, vocab, hidden) = (inputs[0].rows(), inputs[1].shape[0], inputs[1].shape[1]);
        (6 * rows * vocab * hidden + 7 * rows * vocab) as f64
    }
    fn uses_matrix_units(&self) -> bool {
        true
    }
    fn library_matmuls(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        // Logits, data gradient and weight gradient per chunk.
        3.0 * chunks(inputs[0].rows(), self.chunk_rows)
    }
    fn bytes(&self, inputs: &[TensorType], outputs: &[TensorType]) -> f64 {
        // Operands once; each chunk's logits written by the matmul, their gradient read by
        // each of the two matmuls after it.
        operands(inputs, outputs)
            + 3.0 * logits_bytes(inputs[0].rows(), inputs[1].shape[0], self.logits)
    }
    fn serial_bytes(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        // The loss kernel between the matmuls: it reads each chunk's logits twice and writes
        // their gradient in place. Measured: Qwen2.5-0.5B, 64 × 1024, H200, 2026-12-03, the
        // head's three matmuls 71.7 ms and this kernel 18.4 ms, one after the other (ncu).
        3.0 * logits_bytes(inputs[0].rows(), inputs[1].shape[0], self.logits)
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (x, w, targets, dloss) = (inputs[0], inputs[1], inputs[2], inputs[3].data[0]);
        let (vocab, hidden) = (w.shape[0] as usize, w.shape[1] as usize);
        let rows = targets.data.len();
        let chunk = (self.chunk_rows as usize).min(rows).max(1);
        let [dx, dw, loss, scratch] = outputs else {
            unreachable!("infer gives four outputs")
        };
        let valid = valid_targets(targets.data, vocab)?;
        let scale = if valid == 0 {
            0.0
        } else {
            dloss / valid as f32
        };
        let mut sum = 0.0f64;
        // The logits' gradient of every row, kept whole for the weight gradient below.
        let mut dlogits = vec![0f32; rows * vocab];
        for (c, x_chunk) in x.data.chunks(chunk * hidden).enumerate() {
            let n = x_chunk.len() / hidden;
            let first = c * chunk;
            chunk_logits(x_chunk, w.data, hidden, vocab, self.logits, scratch.data);
            let grads = dlogits[first * vocab..(first + n) * vocab].chunks_mut(vocab);
            for (r, (grad, row)) in grads.zip(scratch.data.chunks(vocab)).enumerate() {
                match target_index(targets.data[first + r], vocab)? {
                    None => grad.fill(0.0),
                    Some(t) => {
                        let row_lse = log_sum_exp(row);
                        sum += (row_lse - row[t]) as f64;
                        for (g, v) in grad.iter_mut().zip(row) {
                            *g = (v - row_lse).exp() * scale;
                        }
                        grad[t] -= scale;
                        for g in grad.iter_mut() {
                            *g = numerics::round_to(self.logits, *g);
                        }
                    }
                }
            }
            let dlogits_chunk = &dlogits[first * vocab..(first + n) * vocab];
            // dx[n × H] = dlogits[n × V] · W[V × H]
            gemm(
                n,
                vocab,
                hidden,
                dlogits_chunk,
                (vocab as isize, 1),
                w.data,
                (hidden as isize, 1),
                &mut dx.data[first * hidden..(first + n) * hidden],
            );
            // The scratch ends holding the last chunk's logit gradient, as on the GPU.
            scratch.data[..n * vocab].copy_from_slice(dlogits_chunk);
        }
        // dW[V × H] = dlogitsᵀ[V × rows] · x[rows × H]
        gemm(
            vocab,
            rows,
            hidden,
            &dlogits,
            (1, vocab as isize),
            x.data,
            (hidden as isize, 1),
            dw.data,
        );
        loss.data[0] = mean(sum, valid);
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        attrs(self.chunk_rows, self.logits)
    }
}
