//! `Attention`: causal grouped-query scaled dot-product attention.
//!
//! `q [B, T, Hq·D]`, `k, v [B, T, Hkv·D]`, query head `h` reads key/value head `h / (Hq/Hkv)`,
//! scores scaled by `1/√D`. The per-row log-sum-exp `lse [B, Hq, T]` is an output: backward
//! rebuilds the probabilities from it instead of keeping the `T×T` matrix (flash attention).

use crate::op::check;
use crate::{BackwardStep, DType, LongestBlock, OpError, OpSpec, Ref, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// The tensor-core attention kernels' rate (attention_mma.cu) as a fraction of a large GEMM's,
/// for the cost model. Measured on the lent H100 (2026-11-23) and H200 (2026-12-02 and -04),
/// heads of 64 and 128, sequence 1024: the forward does 160-175 TFLOP/s of causal work where
/// cuBLASLt's BF16 GEMMs do about 690 (0.7 of the 989 peak).
pub const ATTENTION_FORWARD_RATE: f64 = 0.24;
/// The backward's, as [`ATTENTION_FORWARD_RATE`]: 143-155 TFLOP/s (H200, 2026-12-04, with its
/// statistics pre-pass; 106-127 before).
pub const ATTENTION_BACKWARD_RATE: f64 = 0.22;

/// True where the CUDA backend runs attention through cuDNN's fused flash-attention engines
/// (runtime/src/backend/cuda/cudnn.rs), given cuDNN loads and its workspace fits: BF16 heads
/// of 64 or 128 and sequences a multiple of 128 (cuDNN 9.15 and older need a padding mask in
/// the backward otherwise, which those graphs do not build). The launcher and the cost model
/// share this rule.
pub fn cudnn_attention_serves(dtype: DType, seq: u64, head_dim: u64) -> bool {
    dtype == DType::BF16 && matches!(head_dim, 64 | 128) && seq.is_multiple_of(128)
}

/// cuDNN's rates as [`ATTENTION_FORWARD_RATE`], forward and backward, for heads of
/// `head_dim`: measured on the H200 (cuDNN 9.14, 2026-12-04, `cuda_attention --ignored timing`,
/// batch 16 (8 for the 7B) × 1024): heads of 64 forward 260 TFLOP/s, backward 199; heads of
/// 128 forward 406-423, backward 268-276.
fn cudnn_attention_rates(head_dim: u64) -> (f64, f64) {
    if head_dim <= 64 {
        (0.38, 0.29)
    } else {
        (0.60, 0.39)
    }
}

/// The sequence length of `q [B, T, H·D]`.
fn seq_of(q: &TensorType) -> u64 {
    q.shape[q.shape.len() - 2]
}

/// The cost model's rate of the forward or the backward on `q`: cuDNN's where it serves,
/// else the own kernels'.
fn attention_rate(q: &TensorType, head_dim: u64, backward: bool) -> f64 {
    let cudnn = cudnn_attention_serves(q.dtype, seq_of(q), head_dim);
    match (cudnn, backward) {
        (true, false) => cudnn_attention_rates(head_dim).0,
        (true, true) => cudnn_attention_rates(head_dim).1,
        (false, false) => ATTENTION_FORWARD_RATE,
        (false, true) => ATTENTION_BACKWARD_RATE,
    }
}
/// Rows per block and per walked tile of the tensor-core kernels (MMA_ROWS in
/// attention_mma.cu): the launcher's grid and the cost model's longest block count in them.
pub const ATTENTION_MMA_ROWS: u64 = 64;

/// Blocks of the tensor-core backward that one SM holds: shared memory and registers hold 3 of
/// heads of 64, 2 of 128 (the launch bounds in attention_mma.cu).
pub fn attention_backward_blocks_per_sm(head_dim: u64) -> u64 {
    if head_dim <= 64 { 3 } else { 2 }
}

/// Blocks over which the tensor-core backward splits each key tile's dK/dV walk, for a GPU
/// holding `slots` blocks at once: the fewest for which the longest block (the first key
/// tile's) does no more than the even share of the work, and at most one per query head of
/// the group. Measured before the split (H200, 2026-12-03, Qwen2.5-7B, sequence 1024): 21.1 ms
/// at batch 2, where the longest block bounds it at 20.0 and the even share is 9.0.
pub fn attention_backward_splits(
    batch: u64,
    seq: u64,
    heads: u64,
    kv_heads: u64,
    slots: u64,
) -> u64 {
    let work = BackwardWork::new(batch, seq, heads, kv_heads);
    (1..=work.group)
        .find(|&s| work.longest(s) * slots <= work.total)
        .unwrap_or(work.group)
}

/// The tensor-core backward's work in tile products (attention_mma.cu, 64-row tiles): a dK/dV
/// block (per batch, KV head and key tile) does 4 per (query head of its group, query tile from
/// its own on), a dQ block (per batch, head and query tile) 3 per key tile up to its own.
struct BackwardWork {
    total: u64,
    group: u64,
    tiles: u64,
}

impl BackwardWork {
    fn new(batch: u64, seq: u64, heads: u64, kv_heads: u64) -> BackwardWork {
        let tiles = seq.div_ceil(ATTENTION_MMA_ROWS);
        BackwardWork {
            total: 7 * batch * heads * tiles * (tiles + 1) / 2,
            group: heads / kv_heads,
            tiles,
        }
    }
    /// The products of the first key tile's walk split over `splits` blocks.
    fn longest(&self, splits: u64) -> u64 {
        4 * (self.group * self.tiles).div_ceil(splits)
    }
}

/// Causal GQA attention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attention {
    /// Query heads.
    pub heads: u64,
    /// Key/value heads (divides `heads`).
    pub kv_heads: u64,
    /// Size of one head.
    pub head_dim: u64,
}

/// Gradients of [`Attention`] for q, k and v.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionBackward {
    /// Query heads.
    pub heads: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Size of one head.
    pub head_dim: u64,
}

/// The geometry both ops share.
#[derive(Clone, Copy)]
struct Geometry {
    batch: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
}

impl Geometry {
    fn new(heads: u64, kv_heads: u64, head_dim: u64, q_shape: &[u64]) -> Geometry {
        let seq = q_shape[q_shape.len() - 2] as usize;
        let rows: u64 = q_shape[..q_shape.len() - 1].iter().product();
        Geometry {
            batch: rows as usize / seq,
            seq,
            heads: heads as usize,
            kv_heads: kv_heads as usize,
            d: head_dim as usize,
        }
    }
    /// Offset of head `h`'s vector at batch `b`, position `t`, in a tensor with `nh` heads.
    fn at(&self, nh: usize, b: usize, t: usize, h: usize) -> usize {
        ((b * self.seq + t) * nh + h) * self.d
    }
    fn kv_head(&self, h: usize) -> usize {
        h / (self.heads / self.kv_heads)
    }
    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn infer_qkv(
    op: &'static str,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    q: &TensorType,
    k: &TensorType,
    v: &TensorType,
) -> Result<(), OpError> {
    check::float(op, "q", q)?;
    check::same_dtype(op, "k", q, k)?;
    check::same_dtype(op, "v", q, v)?;
    check::shape(op, kv_heads > 0 && heads.is_multiple_of(kv_heads), || {
        format!("kv_heads ({kv_heads}) must divide heads ({heads})")
    })?;
    check::shape(
        op,
        q.shape.len() >= 2 && q.last_dim() == heads * head_dim,
        || {
            format!(
                "q must be [.., seq, {}] (heads·head_dim), got {:?}",
                heads * head_dim,
                q.shape
            )
        },
    )?;
    let kv = q.with_last_dim(kv_heads * head_dim);
    check::same_shape(op, "k against q's heads", &kv, k)?;
    check::same_shape(op, "v against q's heads", &kv, v)
}

impl OpSpec for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["q", "k", "v"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["o", "lse"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
        infer_qkv(
            "attention",
            self.heads,
            self.kv_heads,
            self.head_dim,
            q,
            k,
            v,
        )?;
        let seq = q.shape[q.shape.len() - 2];
        let batch = q.rows() / seq;
        Ok(vec![
            q.clone(),
            TensorType::new([batch, self.heads, seq], DType::F32),
        ])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        // Two matmuls (QKᵀ and PV) over the causal half of the T×T scores.
        let q = &inputs[0];
        2.0 * q.rows() as f64 * seq_of(q) as f64 * q.last_dim() as f64
    }
    fn uses_matrix_units(&self) -> bool {
        true
    }
    fn matrix_rate(&self, inputs: &[TensorType]) -> f64 {
        attention_rate(&inputs[0], self.head_dim, false)
    }
    fn backward(&self, _: &[TensorType]) -> Option<Vec<BackwardStep>> {
        use Ref::*;
        let op = AttentionBackward {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        };
        Some(vec![BackwardStep::new(
            op,
            &[
                Input(0),
                Input(1),
                Input(2),
                Output(0),
                Output(1),
                GradOutput(0),
            ],
            &[GradInput(0), GradInput(1), GradInput(2)],
        )])
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (q, k, v) = (inputs[0].data, inputs[1].data, inputs[2].data);
        let g = Geometry::new(self.heads, self.kv_heads, self.head_dim, inputs[0].shape);
        let (o, rest) = outputs.split_at_mut(1);
        let (o, lse) = (&mut o[0].data, &mut rest[0].data);
        let mut scores = vec![0.0f32; g.seq];
        for b in 0..g.batch {
            for h in 0..g.heads {
                let kh = g.kv_head(h);
                for t in 0..g.seq {
                    let qi = g.at(g.heads, b, t, h);
                    let qv = &q[qi..qi + g.d];
                    let mut max = f32::NEG_INFINITY;
                    for (s, score) in scores[..=t].iter_mut().enumerate() {
                        let ki = g.at(g.kv_heads, b, s, kh);
                        *score = dot(qv, &k[ki..ki + g.d]) * g.scale();
                        max = max.max(*score);
                    }
                    let mut sum = 0.0f32;
                    for score in &mut scores[..=t] {
                        *score = (*score - max).exp();
                        sum += *score;
                    }
                    let out = &mut o[qi..qi + g.d];
                    out.fill(0.0);
                    for (s, p) in scores[..=t].iter().enumerate() {
                        let vi = g.at(g.kv_heads, b, s, kh);
                        for (ov, vv) in out.iter_mut().zip(&v[vi..vi + g.d]) {
                            *ov += p / sum * vv;
                        }
                    }
                    lse[(b * g.heads + h) * g.seq + t] = max + sum.ln();
                }
            }
        }
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        attention_attrs(self.heads, self.kv_heads, self.head_dim)
    }
}

fn attention_attrs(heads: u64, kv_heads: u64, head_dim: u64) -> Vec<(&'static str, String)> {
    vec![
        ("heads", heads.to_string()),
        ("kv_heads", kv_heads.to_string()),
        ("head_dim", head_dim.to_string()),
    ]
}

impl OpSpec for AttentionBackward {
    fn name(&self) -> &'static str {
        "attention_backward"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["q", "k", "v", "o", "lse", "do"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["dq", "dk", "dv"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let (q, k, v, o, d_o) = (&inputs[0], &inputs[1], &inputs[2], &inputs[3], &inputs[5]);
        infer_qkv(
            "attention_backward",
            self.heads,
            self.kv_heads,
            self.head_dim,
            q,
            k,
            v,
        )?;
        check::same_shape("attention_backward", "o and q", q, o)?;
        check::same_shape("attention_backward", "do and q", q, d_o)?;
        Ok(vec![
            d_o.clone(),
            k.with_dtype(d_o.dtype),
            v.with_dtype(d_o.dtype),
        ])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        // Five matmuls (QKᵀ again, dV, dP, dQ, dK) over the causal half.
        let q = &inputs[0];
        5.0 * q.rows() as f64 * seq_of(q) as f64 * q.last_dim() as f64
    }
    fn uses_matrix_units(&self) -> bool {
        true
    }
    fn matrix_rate(&self, inputs: &[TensorType]) -> f64 {
        attention_rate(&inputs[0], self.head_dim, true)
    }
    fn longest_block(&self, inputs: &[TensorType], _: &[TensorType]) -> Option<LongestBlock> {
        // The own backward splits the dK/dV walk over as many blocks as the even share asks,
        // up to one per query head of the group (attention_backward_splits): the bound left is
        // the first key tile's walk over one head. cuDNN's kernels are not modelled so.
        let q = &inputs[0];
        let seq = seq_of(q);
        if cudnn_attention_serves(q.dtype, seq, self.head_dim) {
            return None;
        }
        let work = BackwardWork::new(q.rows() / seq, seq, self.heads, self.kv_heads);
        Some(LongestBlock {
            share: work.longest(work.group) as f64 / work.total as f64,
            blocks_per_sm: attention_backward_blocks_per_sm(self.head_dim) as f64,
        })
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let [q, k, v, o, lse, d_o] = [0, 1, 2, 3, 4, 5].map(|i| inputs[i].data);
        let g = Geometry::new(self.heads, self.kv_heads, self.head_dim, inputs[0].shape);
        let (dq, rest) = outputs.split_at_mut(1);
        let (dk, dv) = rest.split_at_mut(1);
        let (dq, dk, dv) = (&mut dq[0].data, &mut dk[0].data, &mut dv[0].data);
        dq.fill(0.0);
        dk.fill(0.0);
        dv.fill(0.0);
        for b in 0..g.batch {
            for h in 0..g.heads {
                let kh = g.kv_head(h);
                for t in 0..g.seq {
                    let qi = g.at(g.heads, b, t, h);
                    let row_lse = lse[(b * g.heads + h) * g.seq + t];
                    // D = do·o, the row's Σ_s P·dP.
                    let delta = dot(&d_o[qi..qi + g.d], &o[qi..qi + g.d]);
                    for s in 0..=t {
                        let ki = g.at(g.kv_heads, b, s, kh);
                        let p =
                            (dot(&q[qi..qi + g.d], &k[ki..ki + g.d]) * g.scale() - row_lse).exp();
                        let dp = dot(&d_o[qi..qi + g.d], &v[ki..ki + g.d]);
                        let ds = p * (dp - delta) * g.scale();
                        for i in 0..g.d {
                            dv[ki + i] += p * d_o[qi + i];
                            dq[qi + i] += ds * k[ki + i];
                            dk[ki + i] += ds * q[qi + i];
                        }
                    }
                }
            }
        }
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        attention_attrs(self.heads, self.kv_heads, self.head_dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heads of 128 at Qwen2.5-7B's 28/4: the forward's and the backward's cost-model rates.
    fn rates(seq: u64, dtype: DType) -> (f64, f64) {
        let q = TensorType::new([2, seq, 28 * 128], dtype);
        let kv = TensorType::new([2, seq, 4 * 128], dtype);
        let (heads, kv_heads, head_dim) = (28, 4, 128);
        let forward = Attention {
            heads,
            kv_heads,
            head_dim,
        };
        let backward = AttentionBackward {
            heads,
            kv_heads,
            head_dim,
        };
        let inputs = [q, kv.clone(), kv];
        (forward.matrix_rate(&inputs), backward.matrix_rate(&inputs))
    }

    /// BF16 sequences that are a multiple of 128 are priced at cuDNN's rates, which the CUDA
    /// backend runs them at; other sequences and FP32 at the own kernels'.
    #[test]
    fn attention_is_priced_at_the_rate_of_the_kernels_that_run_it() {
        let own = (ATTENTION_FORWARD_RATE, ATTENTION_BACKWARD_RATE);
        assert_eq!(rates(1024, DType::BF16), cudnn_attention_rates(128));
        assert_eq!(rates(1000, DType::BF16), own);
        assert_eq!(rates(1024, DType::F32), own);
        let (cudnn, own) = (cudnn_attention_rates(128), own);
        assert!(cudnn.0 > own.0 && cudnn.1 > own.1);
    }
}
