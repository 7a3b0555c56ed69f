//! `AdamW`: one update of a parameter and its two moments, in place, as PyTorch's `AdamW`
//! computes it (decoupled weight decay first, then the bias-corrected Adam step). The learning
//! rate and step number come from a device tensor `hyper = [lr, step]`, so captured CUDA graphs
//! stay valid as they change; the gradient is multiplied by the clipping factor first. A
//! clipping factor of exactly 0 (a non-finite gradient norm) leaves parameter and moments as
//! they are: the step is skipped. With `stochastic` set, the two moments are stored in BF16
//! with stochastic rounding (seed = the step, one random stream per moment), as LLMQ does;
//! with `param_stream` set, so is a BF16 parameter that has no master copy.

use crate::numerics::round_bf16_stochastic_all;
use crate::op::check;
use crate::{DType, OpError, OpSpec, TensorType, View, ViewMut};
use serde::{Deserialize, Serialize};

/// The AdamW update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    /// Decay of the first moment.
    pub beta1: f32,
    /// Decay of the second moment.
    pub beta2: f32,
    /// Added to the second moment's square root.
    pub eps: f32,
    /// Decoupled weight decay (zero for vectors: norms and biases).
    pub weight_decay: f32,
    /// BF16 moments written with stochastic rounding, or `None` for nearest rounding.
    #[serde(default)]
    pub stochastic: Option<StochasticMoments>,
    /// The random stream of a BF16 parameter updated in place (no master copy), written with
    /// stochastic rounding; `None` for nearest rounding.
    #[serde(default)]
    pub param_stream: Option<u64>,
}

impl AdamW {
    /// The update rounding everything it writes to nearest (the stochastic-rounding pass sets
    /// the streams where BF16 state asks for them).
    pub fn nearest(beta1: f32, beta2: f32, eps: f32, weight_decay: f32) -> AdamW {
        AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
            stochastic: None,
            param_stream: None,
        }
    }
}

/// The random streams of the two moments' stochastic rounding (distinct for every tensor).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StochasticMoments {
    /// The stream of the first moment.
    pub m_stream: u64,
    /// The stream of the second moment.
    pub v_stream: u64,
}

impl OpSpec for AdamW {
    fn name(&self) -> &'static str {
        "adamw"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["param", "grad", "m", "v", "clip", "hyper"]
    }
    fn output_names(&self) -> &'static [&'static str] {
        &["param", "m", "v"]
    }
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, OpError> {
        let (p, g, m, v) = (&inputs[0], &inputs[1], &inputs[2], &inputs[3]);
        check::float("adamw", "param", p)?;
        check::same_shape("adamw", "param and grad", p, g)?;
        check::same_shape("adamw", "param and m", p, m)?;
        check::same_shape("adamw", "param and v", p, v)?;
        check::dtype("adamw", "clip", &inputs[4], DType::F32)?;
        if self.stochastic.is_some() {
            check::dtype("adamw", "m", m, DType::BF16)?;
            check::dtype("adamw", "v", v, DType::BF16)?;
        }
        if self.param_stream.is_some() {
            check::dtype("adamw", "param", p, DType::BF16)?;
        }
        check::shape("adamw", inputs[5].shape == [2], || {
            format!("hyper must be [2] (lr, step), got {:?}", inputs[5].shape)
        })?;
        Ok(vec![p.clone(), m.clone(), v.clone()])
    }
    fn flops(&self, inputs: &[TensorType], _: &[TensorType]) -> f64 {
        12.0 * inputs[0].numel() as f64
    }
    fn cpu(&self, inputs: &[View], outputs: &mut [ViewMut]) -> Result<(), OpError> {
        let (p, g, m, v) = (
            inputs[0].data,
            inputs[1].data,
            inputs[2].data,
            inputs[3].data,
        );
        let clip = inputs[4].data[0];
        let (lr, step) = (inputs[5].data[0], inputs[5].data[1]);
        let bias1 = 1.0 - self.beta1.powf(step);
        let bias2_sqrt = (1.0 - self.beta2.powf(step)).sqrt();
        let (po, rest) = outputs.split_at_mut(1);
        let (mo, vo) = rest.split_at_mut(1);
        if clip == 0.0 {
            po[0].data.copy_from_slice(p);
            mo[0].data.copy_from_slice(m);
            vo[0].data.copy_from_slice(v);
            return Ok(());
        }
        for i in 0..p.len() {
            let grad = g[i] * clip;
            let m_new = self.beta1 * m[i] + (1.0 - self.beta1) * grad;
            let v_new = self.beta2 * v[i] + (1.0 - self.beta2) * grad * grad;
            let decayed = p[i] * (1.0 - lr * self.weight_decay);
            let denom = v_new.sqrt() / bias2_sqrt + self.eps;
            po[0].data[i] = decayed - lr / bias1 * m_new / denom;
            mo[0].data[i] = m_new;
            vo[0].data[i] = v_new;
        }
        if let Some(sr) = self.stochastic {
            round_bf16_stochastic_all(mo[0].data, step as u64, sr.m_stream);
            round_bf16_stochastic_all(vo[0].data, step as u64, sr.v_stream);
        }
        if let Some(stream) = self.param_stream {
            round_bf16_stochastic_all(po[0].data, step as u64, stream);
        }
        Ok(())
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        let mut attrs = vec![
            ("beta1", self.beta1.to_string()),
            ("beta2", self.beta2.to_string()),
            ("eps", format!("{:e}", self.eps)),
            ("weight_decay", self.weight_decay.to_string()),
        ];
        if let Some(sr) = self.stochastic {
            attrs.push(("sr_streams", format!("{}/{}", sr.m_stream, sr.v_stream)));
        }
        if let Some(stream) = self.param_stream {
            attrs.push(("sr_param", stream.to_string()));
        }
        attrs
    }
}
