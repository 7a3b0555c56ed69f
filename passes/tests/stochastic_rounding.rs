//! `stochastic_rounding` on the tiny model: the snapshot of what it changes.

mod common;

use llmq_compiler::ir::Phase;
use llmq_compiler::kernels::Op;
use llmq_compiler::target::Precision;

#[test]
fn stochastic_rounding_on_the_tiny_model() {
    let opts = common::options(Precision::Fp8);
    let (graph, diff) = common::pass_diff("tiny.ron", "stochastic_rounding", &opts);
    insta::assert_snapshot!("tiny", diff);
    // Every parameter: its BF16 weight from the master, its two BF16 moments.
    let params = graph
        .nodes()
        .filter(|(_, n)| matches!(n.op, Op::AdamW(_)))
        .count();
    let (mut casts, mut adamw, mut streams) = (0, 0, Vec::new());
    for (_, node) in graph.nodes().filter(|(_, n)| n.phase == Phase::Optimizer) {
        match &node.op {
            Op::Cast(_) => panic!("a nearest-rounding cast is left"),
            Op::CastStochastic(c) => {
                casts += 1;
                streams.push(c.stream);
            }
            Op::AdamW(a) => {
                let sr = a.stochastic.expect("BF16 moments rounded to nearest");
                adamw += 1;
                streams.extend([sr.m_stream, sr.v_stream]);
            }
            _ => {}
        }
    }
    assert_eq!((casts, adamw), (params, params));
    // One random stream per rounded tensor.
    let n = streams.len();
    streams.sort();
    streams.dedup();
    assert_eq!(streams.len(), n, "two tensors share a random stream");
}
