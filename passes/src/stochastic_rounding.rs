//! `StochasticRounding`: BF16 optimizer state is written with stochastic rounding, as in LLMQ.
//!
//! The `cast` of each FP32 master weight into its BF16 weight becomes `cast_stochastic`, every
//! `adamw` whose moments are BF16 rounds them stochastically, and one updating a BF16 weight in
//! place (no master copy, `--master none`) rounds that weight stochastically too. The random
//! bits are a pure function of (optimizer step, tensor, element): the step comes from the
//! `hyper` tensor the optimizer already reads, the stream is the written tensor's ID, so runs
//! are bit-reproducible on the CPU backend and a resumed run rounds exactly as the
//! uninterrupted one.
//!
//! Needs: the optimizer phase from autodiff (`adamw` reading `hyper` as its last input).

use llmq_compiler::ir::{Graph, Node, NodeId, Phase, Role, TensorId};
use llmq_compiler::kernels::ops::{AdamW, CastStochastic, StochasticMoments};
use llmq_compiler::kernels::{DType, Op};
use llmq_compiler::pass::{Pass, PassContext, PassError};

/// Stochastic rounding for BF16 weights (from their masters, or updated in place) and BF16 Adam
/// moments.
pub struct StochasticRounding;

const NAME: &str = "stochastic_rounding";

impl Pass for StochasticRounding {
    fn name(&self) -> &'static str {
        NAME
    }
    fn run(&self, graph: &mut Graph, _: &PassContext) -> Result<(), PassError> {
        let optimizer: Vec<(NodeId, Node)> = graph
            .nodes()
            .filter(|(_, n)| n.phase == Phase::Optimizer)
            .map(|(id, n)| (id, n.clone()))
            .collect();
        let Some(hyper) = optimizer.iter().find_map(|(_, n)| match n.op {
            Op::AdamW(_) => n.inputs.last().copied(),
            _ => None,
        }) else {
            return Err(PassError::Failed {
                pass: NAME,
                message: "the graph has no adamw node to take the step from".into(),
            });
        };
        let is_bf16 = |graph: &Graph, t: TensorId| graph.tensor(t).ty.dtype == DType::BF16;
        graph.rewrite(|rw| {
            for (id, node) in optimizer {
                let replacement = match &node.op {
                    Op::Cast(_)
                        if rw.graph().tensor(node.inputs[0]).role == Role::MasterWeight
                            && is_bf16(rw.graph(), node.outputs[0]) =>
                    {
                        Node {
                            op: CastStochastic {
                                stream: node.outputs[0].0 as u64,
                            }
                            .into(),
                            inputs: vec![node.inputs[0], hyper],
                            ..node
                        }
                    }
                    Op::AdamW(adamw) => {
                        let bf16_out = |k: usize| is_bf16(rw.graph(), node.outputs[k]);
                        let stochastic = (bf16_out(1) && bf16_out(2)).then(|| StochasticMoments {
                            m_stream: node.outputs[1].0 as u64,
                            v_stream: node.outputs[2].0 as u64,
                        });
                        let param_stream = bf16_out(0).then(|| node.outputs[0].0 as u64);
                        if stochastic.is_none() && param_stream.is_none() {
                            continue;
                        }
                        let adamw = AdamW {
                            stochastic,
                            param_stream,
                            ..adamw.clone()
                        };
                        Node {
                            op: adamw.into(),
                            ..node
                        }
                    }
                    _ => continue,
                };
                rw.replace(id, replacement);
            }
        });
        Ok(())
    }
}
