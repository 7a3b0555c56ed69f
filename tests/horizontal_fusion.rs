//! Horizontal fusion on the tiny models (llama, Qwen2 with q/k/v biases, Qwen3 with QK-norm):
//! the plan runs one matmul for q/k/v and one for gate/up, forward and backward; it trains
//! as the unfused plan does (the forward bit for bit, the backward within rounding); and its
//! checkpoints are the unfused plan's, tensor for tensor.

mod common;

use llmq_compiler::ir::{Category, Phase};
use llmq_compiler::plan::Plan;
use llmq_compiler::target::Precision;
use llmq_passes::CompileOptions;
use llmq_runtime::train::checkpoint::load_checkpoint;

const MODELS: [&str; 3] = ["tiny.ron", "tiny-qwen2.ron", "tiny-qwen3.ron"];

fn options(precision: Precision, fused: bool) -> CompileOptions {
    let mut opts = common::options(2, 16, 1, precision, 1 << 30);
    if !fused {
        opts.skip_passes = vec!["horizontal-fusion".into()];
    }
    opts
}

/// Steps of `phase` whose op, as dumped, is `name` (`swiglu{packed=true}`), or `name` with
/// any attributes (`split`: `split{cols=[..]}`).
fn count(plan: &Plan, phase: Phase, name: &str) -> usize {
    let steps = plan.steps.iter().filter(|s| s.node.phase == phase);
    let matches = |op: String| op == name || op.starts_with(&format!("{name}{{"));
    steps.filter(|s| matches(s.node.op.to_string())).count()
}

/// Per block, three linears fewer in the forward (q, k, v → one; gate, up → one) and three
/// fewer of each backward matmul; one split of q/k/v and its concatenation in the backward,
/// which take in the ropes of q and k (and Qwen2's bias adds) where those read the split
/// directly; swiglu reads gate and up packed; Qwen2's three bias backwards become one.
#[test]
fn packed_plans_run_one_matmul_per_group() {
    for model in MODELS {
        let fused = common::plan(model, &options(Precision::Bf16, true));
        let unfused = common::plan(model, &options(Precision::Bf16, false));
        let layers = fused.model.dims["layers"] as usize;
        let fewer = |phase, name| count(&unfused, phase, name) - count(&fused, phase, name);
        assert_eq!(fewer(Phase::Forward, "linear"), 3 * layers, "{model}");
        assert_eq!(
            fewer(Phase::Backward, "linear_backward_data"),
            3 * layers,
            "{model}"
        );
        assert_eq!(
            fewer(Phase::Backward, "linear_backward_weight"),
            3 * layers,
            "{model}"
        );
        // Qwen3's q/k norms sit between the split and the ropes: a plain split and concat.
        let (split, concat) = match model {
            "tiny-qwen3.ron" => ("split", "concat"),
            _ => ("split_rope", "split_rope_backward"),
        };
        assert_eq!(count(&fused, Phase::Forward, split), layers, "{model}");
        assert_eq!(count(&fused, Phase::Backward, concat), layers, "{model}");
        let ropes_folded = if split == "split_rope" { 2 * layers } else { 0 };
        assert_eq!(fewer(Phase::Forward, "rope"), ropes_folded, "{model}");
        assert_eq!(fewer(Phase::Backward, "rope_backward"), ropes_folded);
        assert_eq!(count(&fused, Phase::Forward, "swiglu{packed=true}"), layers);
        assert_eq!(
            count(&fused, Phase::Backward, "swiglu_backward{packed=true}"),
            layers
        );
        // The activation gradient of the block input from q/k/v is one matmul now, not three
        // summed by two adds (the adds left sum the residual branches).
        assert_eq!(
            fewer(Phase::Backward, "add"),
            3 * layers,
            "{model}: the q/k/v and gate/up gradient adds"
        );
        if model == "tiny-qwen2.ron" {
            assert_eq!(fewer(Phase::Forward, "bias_add"), 3 * layers);
            assert_eq!(fewer(Phase::Backward, "bias_backward"), 2 * layers);
        }
        // Parameters: the packed ones replace their parts, with as many elements in all.
        let elements = |p: &Plan| -> u64 {
            p.io.params
                .iter()
                .map(|s| p.tensor(s.weight).ty.numel())
                .sum()
        };
        assert_eq!(elements(&fused), elements(&unfused), "{model}");
        // The packed-away parameters take no bytes: the weights' memory is the unfused one.
        let weights = |p: &Plan| p.estimates.memory_at_peak[&Category::Weights];
        assert_eq!(weights(&fused), weights(&unfused), "{model}: weight bytes");
        // Per block wq, wk, wv → one, w_gate, w_up → one; Qwen2's bq, bk, bv → one.
        let packed_away = if model == "tiny-qwen2.ron" { 5 } else { 3 };
        assert_eq!(
            unfused.io.params.len() - fused.io.params.len(),
            packed_away * layers,
            "{model}"
        );
    }
}

/// BF16, five optimizer steps. The forward of the packed plan is the unfused plan's bit for
/// bit (same initial values, each output column the same dot product), so the first loss is
/// equal. The backward's data gradients of the packed matmuls sum over `K = q+k+v` (or `2F`)
/// in one reduction instead of partial sums and an add, so gradients differ by rounding (one
/// BF16 rounding, relative 2^-8, of the summed activation gradient at worst) and the weights
/// after an update differ by at most about one BF16 ulp of a weight where the update's
/// rounding falls differently. The later losses therefore differ by the loss's sensitivity
/// to such weight changes: at most a relative 2^-8 per step here, so five steps stay within
/// 5·2^-8 ≈ 2%, and in fact far less, which the bound below (0.2%) checks with margin.
#[test]
fn packed_plans_train_as_unfused_ones_in_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::corpus(dir.path());
    for model in MODELS {
        let (fused, _) = common::train_state(
            common::plan(model, &options(Precision::Bf16, true)),
            &data,
            5,
        );
        let (unfused, _) = common::train_state(
            common::plan(model, &options(Precision::Bf16, false)),
            &data,
            5,
        );
        assert_eq!(
            fused[0].to_bits(),
            unfused[0].to_bits(),
            "{model}: the first forward must be bit-identical"
        );
        for (step, (f, u)) in fused.iter().zip(&unfused).enumerate() {
            let rel = ((f - u) / u).abs();
            assert!(
                rel <= 2e-3,
                "{model} step {step}: loss {f} vs {u} (relative {rel:e})"
            );
        }
        println!("{model}: fused {fused:?}\n{model}: unfused {unfused:?}");
    }
}

/// A packed plan reads and writes the unfused plan's checkpoints: after resuming one it saves
/// the same tensors under the same names (Hugging Face names for the weights, the parts' own
/// for the optimizer state), byte for byte.
#[test]
fn packed_plans_read_and_write_the_unfused_checkpoints() {
    for model in ["tiny.ron", "tiny-qwen2.ron"] {
        let dir = tempfile::tempdir().unwrap();
        let data = common::corpus(dir.path());
        let (a, b) = (dir.path().join("unfused"), dir.path().join("fused"));
        let unfused_plan = common::plan(model, &options(Precision::Bf16, false));
        let mut unfused = common::trainer(unfused_plan, &data, 10, Some(&a));
        unfused.init_weights().unwrap();
        unfused.run(|_| {}).unwrap();

        let mut fused = common::trainer(
            common::plan(model, &options(Precision::Bf16, true)),
            &data,
            10,
            Some(&b),
        );
        fused.resume(&a.join("step-000010")).unwrap();
        fused.save().unwrap();
        let fingerprint = |p: &Plan| {
            format!(
                "{}:{}:{}",
                p.model.name, p.model.fingerprint, p.options.precision
            )
        };
        let plan = common::plan(model, &options(Precision::Bf16, true));
        let load = |root: &std::path::Path| {
            load_checkpoint(&root.join("step-000010"), &fingerprint(&plan)).unwrap()
        };
        let (ckpt, original) = (load(&b), load(&a));
        // Tensors sorted by name: the same names, shapes and bytes.
        assert!(
            ckpt.model == original.model,
            "{model}: model tensors differ"
        );
        assert!(
            ckpt.optimizer == original.optimizer,
            "{model}: optimizer state differs"
        );
        for name in [
            "model.layers.0.mlp.gate_proj.weight",
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.1.self_attn.k_proj.weight",
        ] {
            assert!(ckpt.model_tensor(name).is_some(), "{model}: no {name}");
        }
        assert!(ckpt.optimizer_tensor("adam_m.layers.0.w_gate").is_some());
    }
}
