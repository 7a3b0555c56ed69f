//! `horizontal-fusion` on the forward graphs of the tiny Qwen2 (q/k/v biases, RoPE right after
//! the split) and Qwen3 (QK-norm after the split) models: the snapshot of what it changes, and its structure.

mod common;

use common::forward_diff;
use llmq_compiler::ir::Role;
use llmq_compiler::kernels::Op;

#[test]
fn horizontal_fusion_on_tiny_qwen2() {
    let (graph, diff) = forward_diff("tiny-qwen2.ron");
    insta::assert_snapshot!("tiny_qwen2", diff);
    let count = |pred: &dyn Fn(&Op) -> bool| graph.nodes().filter(|(_, n)| pred(&n.op)).count();
    // Per block: q|k|v, o, gate|up, down; and the LM head.
    assert_eq!(count(&|op| matches!(op, Op::Linear(_))), 2 * 4 + 1);
    // Per block, one split_rope adds the packed bias, splits and rotates q and k.
    let split_rope = |op: &Op| matches!(op, Op::SplitRope(r) if r.bias.is_some());
    assert_eq!(count(&split_rope), 2);
    let unfused = |op: &Op| matches!(op, Op::BiasAdd(_) | Op::Split(_) | Op::Rope(_));
    assert_eq!(count(&unfused), 0);
    // The packed weights record their parts with the Hugging Face names.
    let qkv = graph
        .find("layers.1.wq+wk+wv")
        .expect("packed q/k/v weight");
    let parts = &graph.tensor(qkv).parts;
    let hf: Vec<_> = parts.iter().map(|p| p.hf_name.clone().unwrap()).collect();
    assert_eq!(
        hf,
        [
            "model.layers.1.self_attn.q_proj.weight",
            "model.layers.1.self_attn.k_proj.weight",
            "model.layers.1.self_attn.v_proj.weight"
        ]
    );
    assert_eq!((parts[1].start, parts[1].end), (64, 96));
    let bias = graph.find("layers.1.bq+bk+bv").expect("packed q/k/v bias");
    assert_eq!(graph.tensor(bias).role, Role::Weight);
    assert!(graph.find("layers.0.w_gate+w_up").is_some());
}

/// Qwen3's per-head norms of q and k read the split's outputs: they are untouched, and so are
/// the ropes after them (a plain split, no split_rope).
#[test]
fn horizontal_fusion_on_tiny_qwen3() {
    let (graph, diff) = forward_diff("tiny-qwen3.ron");
    insta::assert_snapshot!("tiny_qwen3", diff);
    let norms = graph
        .nodes()
        .filter(|(_, n)| matches!(n.op, Op::RmsNorm(_)))
        .count();
    // Per block the two pre-norms and the q and k norms; the final norm.
    assert_eq!(norms, 2 * 4 + 1);
    assert_eq!(
        graph
            .nodes()
            .filter(|(_, n)| matches!(n.op, Op::Split(_)))
            .count(),
        2
    );
    let split_rope = graph
        .nodes()
        .filter(|(_, n)| matches!(n.op, Op::SplitRope(_)))
        .count();
    assert_eq!(split_rope, 0);
}
