//! `Embedding`: row lookup `out[n] = table[tokens[n]]`, and its scatter-add backward.

use crate::op::check;
use crate::{BackwardStep, DType, OpError, OpSpec, Ref, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// `out[.., :] = table[tokens[..], :]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Embedding;

/// `dtable[v, :] = Σ_{n: tokens[n] = v} dy[n, :]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingBackward {
    /// Rows of the table (its gradient's first dimension).
    pub vocab: u64,
}

fn token_index(op: &'static str, t: f32, vocab: usize) -> Result<usize, OpError> {
    if t >= 0.0 && (t as usize) < vocab {
        Ok(t as usize)
    } else {
        Err(OpError::Data {
            op,
            message: format!("token id {t} is outside the vocabulary [0, {vocab})"),
        })
    }
}

impl OpSpec for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["tokens", "table"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["out"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let (tokens, table) = (&inputs[0], &inputs[1]);
        check::dtype("embedding", "tokens", tokens, DType::I32)?;
        check::float("embedding", "table", table)?;
        check::shape("embedding", table.shape.len() == 2, || {
            format!("table must be 2-D [vocab, hidden], got {:?}", table.shape)
        })?;
        let mut shape = tokens.shape.clone();
        shape.push(table.shape[1]);
        Ok(vec![TensorType::new(shape, table.dtype)])
    }
    fn flops(&self, _: &[TensorType], _: &[TensorType]) -> f64 {
        0.0
    }
    fn bytes(&self, inputs: &[TensorType], outputs: &[TensorType]) -> f64 {
        // Only the looked-up rows are read, once each.
        (inputs[0].bytes() + 2 * outputs[0].bytes()) as f64
    }
    fn backward(&self, inputs: &[TensorType]) -> Option<Vec<BackwardStep>> {
        let vocab = inputs[1].shape[0];
        Some(vec![BackwardStep::new(
            EmbeddingBackward { vocab },
            &[Ref::Input(0), Ref::GradOutput(0)],
            &[Ref::GradInput(1)],
        )])
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (tokens, table) = (inputs[0], inputs[1]);
        let (vocab, c) = (table.shape[0] as usize, table.shape[1] as usize);
        for (n, &t) in tokens.data.iter().enumerate() {
            let row = token_index("embedding", t, vocab)?;
            outputs[0].data[n * c..(n + 1) * c]
                .copy_from_slice(&table.data[row * c..(row + 1) * c]);
        }
        Ok(())
    }
}

impl OpSpec for EmbeddingBackward {
    fn name(&self) -> &'static str {
        "embedding_backward"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["tokens", "dy"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["dtable"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let (tokens, dy) = (&inputs[0], &inputs[1]);
        check::dtype("embedding_backward", "tokens", tokens, DType::I32)?;
        check::shape("embedding_backward", dy.rows() == tokens.numel(), || {
            format!(
                "dy {:?} has a row count other than tokens {:?}",
                dy.shape, tokens.shape
            )
        })?;
        Ok(vec![TensorType::new([self.vocab, dy.last_dim()], dy.dtype)])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        inputs[1].numel() as f64
    }
    fn bytes(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        // dy read once; the touched rows of dtable read and written.
        (inputs[0].bytes() + 3 * inputs[1].bytes()) as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (tokens, dy) = (inputs[0], inputs[1]);
        let c = *dy.shape.last().unwrap_or(&1) as usize;
        let out = &mut outputs[0].data;
        out.fill(0.0);
        for (n, &t) in tokens.data.iter().enumerate() {
            let row = token_index("embedding_backward", t, self.vocab as usize)?;
            for (o, g) in out[row * c..(row + 1) * c]
                .iter_mut()
                .zip(&dy.data[n * c..(n + 1) * c])
            {
                *o += g;
            }
        }
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("vocab", self.vocab.to_string())]
    }
}
