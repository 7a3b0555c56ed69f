//! `Split`: the column ranges of each row of `x [.., N]` copied out into tensors
//! `[.., cols_i]` (`N = Σ cols_i`), and its backward `Concat`, which writes them side by side
//! again. Horizontal fusion splits the output of the one q/k/v matmul into q, k and v, which
//! RoPE and attention read as separate contiguous tensors; the backward's concatenation gives
//! the packed gradient that the one backward matmul reads. Both are exact copies.

use crate::op::check;
use crate::{BackwardStep, OpError, OpSpec, Ref, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// The names of the parts in messages; a split has at most this many.
const PARTS: [&str; 4] = ["part0", "part1", "part2", "part3"];

/// The most parts a split or concatenation takes.
pub const MAX_PARTS: usize = PARTS.len();

/// `out_i[r, :] = x[r, c_i .. c_i + cols_i]`, with `c_i` the sum of the widths before `i`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// The width of each part, in order (2 to [`MAX_PARTS`] parts).
    pub cols: Vec<u64>,
}

/// `y[r, :] = [x_0[r, :], x_1[r, :], ..]`: the inverse of [`Split`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Concat {
    /// The width of each part, in order.
    pub cols: Vec<u64>,
}

/// The part names of a split into `cols.len()` parts.
fn part_names(cols: &[u64]) -> &'static [&'static str] {
    &PARTS[..cols.len().min(MAX_PARTS)]
}

/// Fails unless `cols` has 2 to [`MAX_PARTS`] widths, none zero.
fn check_cols(op: &'static str, cols: &[u64]) -> Result<(), OpError> {
    check::shape(
        op,
        (2..=MAX_PARTS).contains(&cols.len()) && cols.iter().all(|&c| c > 0),
        || format!("takes 2 to {MAX_PARTS} parts of non-zero width, got {cols:?}"),
    )
}

/// `t` with its last dimension set to `cols`.
fn with_last(t: &TensorType, cols: u64) -> TensorType {
    let mut shape = t.shape.clone();
    *shape.last_mut().expect("checked non-empty") = cols;
    TensorType::new(shape, t.dtype)
}

/// Each part's rows as `(offset in the packed row, width)`, for `f(packed_row, part_row)`.
fn for_each_part(cols: &[u64], rows: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
    let total: u64 = cols.iter().sum();
    let mut start = 0;
    for (i, &c) in cols.iter().enumerate() {
        for r in 0..rows {
            f(i, r * total as usize + start, r * c as usize, c as usize);
        }
        start += c as usize;
    }
}

impl OpSpec for Split {
    fn name(&self) -> &'static str {
        "split"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        part_names(&self.cols)
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let x = &inputs[0];
        check_cols("split", &self.cols)?;
        check::shape("split", x.last_dim() == self.cols.iter().sum(), || {
            format!(
                "x {:?} does not have the parts' {:?} columns",
                x.shape, self.cols
            )
        })?;
        Ok(self.cols.iter().map(|&c| with_last(x, c)).collect())
    }
    fn flops(&self, _: &[TensorType], _: &[TensorType]) -> f64 {
        0.0
    }
    fn backward(&self, _: &[TensorType]) -> Option<Vec<BackwardStep>> {
        let grads: Vec<Ref> = (0..self.cols.len() as u8).map(Ref::GradOutput).collect();
        let concat = Concat {
            cols: self.cols.clone(),
        };
        Some(vec![BackwardStep::new(
            concat,
            &grads,
            &[Ref::GradInput(0)],
        )])
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let rows = outputs[0].data.len() / self.cols[0] as usize;
        for_each_part(&self.cols, rows, |i, from, to, n| {
            outputs[i].data[to..to + n].copy_from_slice(&inputs[0].data[from..from + n]);
        });
        Ok(())
    }
    fn cuda_kernel(&self) -> &'static str {
        "copy_columns"
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("cols", format!("{:?}", self.cols))]
    }
}

impl OpSpec for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn input_names(&self) -> &'static [&'static str] {
        part_names(&self.cols)
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["y"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        check_cols("concat", &self.cols)?;
        for (i, (x, &c)) in inputs.iter().zip(&self.cols).enumerate() {
            check::same_dtype("concat", PARTS[i], &inputs[0], x)?;
            check::shape("concat", x.shape == with_last(&inputs[0], c).shape, || {
                format!(
                    "part {i} {:?} must be part 0's rows {:?} by {c} columns",
                    x.shape, inputs[0].shape
                )
            })?;
        }
        Ok(vec![with_last(&inputs[0], self.cols.iter().sum())])
    }
    fn flops(&self, _: &[TensorType], _: &[TensorType]) -> f64 {
        0.0
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let rows = inputs[0].data.len() / self.cols[0] as usize;
        let y = &mut *outputs[0].data;
        for_each_part(&self.cols, rows, |i, to, from, n| {
            y[to..to + n].copy_from_slice(&inputs[i].data[from..from + n]);
        });
        Ok(())
    }
    fn cuda_kernel(&self) -> &'static str {
        "copy_columns"
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![("cols", format!("{:?}", self.cols))]
    }
}
