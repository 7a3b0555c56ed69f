//! `fp8_casts` on the tiny model: the snapshot of what it changes, and its structure.

mod common;

use llmq_compiler::ir::{Phase, Role};
use llmq_compiler::kernels::{DType, Op};
use llmq_compiler::target::Precision;

#[test]
fn fp8_casts_on_the_tiny_model() {
    let (graph, diff) =
        common::pass_diff("tiny.ron", "fp8_casts", &common::options(Precision::Fp8));
    insta::assert_snapshot!("tiny", diff);

    let count = |pred: &dyn Fn(&Op) -> bool| graph.nodes().filter(|(_, n)| pred(&n.op)).count();
    // 2 layers × 4 linears (q|k|v and gate|up packed by horizontal fusion, o, down) × 3
    // matmuls (forward, dx, dW).
    assert_eq!(count(&|op| matches!(op, Op::Fp8Matmul(_))), 24);
    // Only the LM head stays a BF16 linear; its backward matmuls too.
    let bf16_matmuls: Vec<_> = graph
        .nodes()
        .filter(|(_, n)| {
            matches!(
                n.op,
                Op::Linear(_) | Op::LinearBackwardData(_) | Op::LinearBackwardWeight(_)
            )
        })
        .collect();
    assert!(
        bf16_matmuls.iter().all(|(_, n)| n.layer.is_none()),
        "a block linear is left"
    );
    assert_eq!(bf16_matmuls.len(), 3);
    // Per layer one abs-max per distinct operand: forward inputs h, attn, m, act and the 4
    // (packed) weights; backward the 4 output gradients.
    assert_eq!(count(&|op| matches!(op, Op::AbsMax(_))), 2 * (4 + 4 + 4));
    // The backward's operands of x and W are the forward's FP8 copies (transposed): saved for
    // it, and never quantised again; the backward quantises only gradients.
    let read_in_backward = |t| {
        graph
            .nodes()
            .any(|(_, n)| n.phase == Phase::Backward && n.inputs.contains(&t))
    };
    for (_, node) in graph
        .nodes()
        .filter(|(_, n)| matches!(n.op, Op::Quantize(_)))
    {
        for &t in node.outputs.iter().filter(|_| node.phase == Phase::Forward) {
            let copy = graph.tensor(t);
            assert!(
                read_in_backward(t),
                "{} is not reused by backward",
                copy.name
            );
            assert_eq!(copy.role, Role::Saved, "{}", copy.name);
        }
        if node.phase == Phase::Backward {
            let source = graph.tensor(node.inputs[0]);
            assert_eq!(
                source.role,
                Role::Workspace,
                "{} quantised again",
                source.name
            );
        }
    }
    // Per layer, x of the 4 matmuls and their 4 dy are read in both layouts: quantised into
    // both at once. The forward's x·Wᵀ reads x's first layout, the backward only its second.
    assert_eq!(count(&|op| matches!(op, Op::QuantizeDual(_))), 2 * (4 + 4));
    for (_, node) in graph
        .nodes()
        .filter(|(_, n)| matches!(n.op, Op::QuantizeDual(_)) && n.phase == Phase::Forward)
    {
        let [q, qt, descale] = [0, 1, 2].map(|i| node.outputs[i]);
        assert!(!read_in_backward(q), "{}", graph.tensor(q).name);
        for t in [qt, descale] {
            assert!(read_in_backward(t), "{}", graph.tensor(t).name);
            assert_eq!(
                graph.tensor(t).role,
                Role::Saved,
                "{}",
                graph.tensor(t).name
            );
        }
    }
    // Only the 4 weights' second layouts are their first ones transposed, for dx.
    assert_eq!(count(&|op| matches!(op, Op::TransposeFp8(_))), 2 * 4);
}

#[test]
fn e5m2_gradients_quantise_only_the_output_gradients_to_e5m2() {
    let mut opts = common::options(Precision::Fp8);
    opts.grad_fp8 = DType::F8E5M2;
    let (graph, _) = common::pass_diff("tiny.ron", "fp8_casts", &opts);
    for (_, node) in graph.nodes() {
        let to = match &node.op {
            Op::Quantize(q) => q.to,
            Op::QuantizeDual(q) => q.to,
            _ => continue,
        };
        let source = graph.tensor(node.inputs[0]);
        let is_grad = source.name.starts_with("d.");
        let want = if is_grad {
            DType::F8E5M2
        } else {
            DType::F8E4M3
        };
        assert_eq!(to, want, "{} quantised to {to}", source.name);
    }
}
