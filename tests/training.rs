//! Training the tiny model on the CPU backend, through the plan: it learns, resumes exactly,
//! and its gradients are those of its forward graph.

mod common;

use llmq_compiler::target::Precision;
use llmq_runtime::backend::Backend;
use llmq_runtime::backend::cpu::CpuBackend;
use llmq_runtime::train::data::{DataLoader, TokenDataset};

#[test]
fn the_tiny_model_learns_the_bundled_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::corpus(dir.path());
    let plan = common::plan(
        "tiny.ron",
        &common::options(8, 64, 1, Precision::Bf16, 1 << 30),
    );
    let mut t = common::trainer(plan, &data, 200, None);
    t.init_weights().unwrap();
    let records = t.run(|_| {}).unwrap();
    let first = records[0].loss;
    let last: f32 = records[190..].iter().map(|r| r.loss).sum::<f32>() / 10.0;
    // A byte model starts near ln 256 = 5.55; unigram statistics alone reach about 3.3 on
    // English, so a loss under 3.0 means the model learned context.
    assert!((first - 256f32.ln()).abs() < 0.1, "initial loss {first}");
    assert!(
        last < 3.0,
        "mean loss over steps 191-200 is {last} (step 1: {first})"
    );
    assert!(records.iter().all(|r| r.applied && r.grad_norm.is_finite()));
}

#[test]
fn resuming_from_a_checkpoint_is_bit_exact() {
    common::assert_resume_is_bit_exact("tiny-qwen2.ron", Precision::Bf16);
}

#[test]
fn a_checkpoint_of_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::corpus(dir.path());
    let ckpt = dir.path().join("ckpt");
    let mut a = common::trainer(
        common::plan(
            "tiny.ron",
            &common::options(2, 16, 1, Precision::Bf16, 1 << 30),
        ),
        &data,
        10,
        Some(&ckpt),
    );
    a.init_weights().unwrap();
    a.run(|_| {}).unwrap();
    let mut b = common::trainer(
        common::plan(
            "tiny-qwen3.ron",
            &common::options(2, 16, 1, Precision::Bf16, 1 << 30),
        ),
        &data,
        10,
        None,
    );
    let err = b.resume(&ckpt.join("step-000010")).unwrap_err().to_string();
    assert!(
        err.contains("tiny") && err.to_lowercase().contains("fingerprint"),
        "{err}"
    );
}

/// Runs the forward section and returns the loss.
fn loss(backend: &mut CpuBackend) -> f64 {
    backend.run_section("forward").unwrap();
    let loss = backend.plan().io.loss;
    backend.read_f32(loss).unwrap()[0] as f64
}

#[test]
fn gradients_of_the_executed_plan_match_finite_differences_of_its_loss() {
    // FP32 plan, so the only error of the difference quotient is FP32 rounding of the loss
    // (about 1e-7 relative) over the step h, and h² truncation: |error| ≲ 1e-7·loss/h + h²·K.
    let dir = tempfile::tempdir().unwrap();
    let data = common::corpus(dir.path());
    let plan = common::plan(
        "tiny-qwen3.ron",
        &common::options(2, 16, 1, Precision::Fp32, 1 << 30),
    );
    let mut t = common::trainer(plan.clone(), &data, 1, None);
    t.init_weights().unwrap();
    let batch = DataLoader::new(TokenDataset::open(&[&data], 256).unwrap(), 2, 16, 1)
        .unwrap()
        .next_batch();
    let backend = t.backend();
    let io = plan.io.clone();
    let f = |v: &[i32]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    backend.write_f32(io.tokens, &f(&batch.inputs)).unwrap();
    backend.write_f32(io.targets, &f(&batch.targets)).unwrap();
    backend.write_f32(io.dloss, &[1.0]).unwrap();
    backend.run_section("forward").unwrap();
    backend.run_section("backward").unwrap();
    let mut cpu = CpuBackend::new(plan.clone());
    for p in &plan.io.params {
        cpu.write_bytes(p.weight, &backend.read_bytes(p.weight).unwrap())
            .unwrap();
    }
    cpu.write_f32(io.tokens, &f(&batch.inputs)).unwrap();
    cpu.write_f32(io.targets, &f(&batch.targets)).unwrap();
    let h = 1e-2f32;
    let mut checked = 0;
    for p in &plan.io.params {
        let grad = backend.read_f32(p.grad).unwrap();
        let mut w = cpu.read_f32(p.weight).unwrap();
        // The element with the largest gradient, and the first one.
        let big = (0..grad.len())
            .max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs()))
            .unwrap();
        for i in [0, big] {
            let orig = w[i];
            w[i] = orig + h;
            cpu.write_f32(p.weight, &w).unwrap();
            let up = loss(&mut cpu);
            w[i] = orig - h;
            cpu.write_f32(p.weight, &w).unwrap();
            let down = loss(&mut cpu);
            w[i] = orig;
            cpu.write_f32(p.weight, &w).unwrap();
            let numeric = (up - down) / (2.0 * h as f64);
            let analytic = grad[i] as f64;
            let tol = 2e-3 + 2e-2 * analytic.abs();
            let name = &plan.tensor(p.weight).name;
            assert!(
                (numeric - analytic).abs() < tol,
                "{name}[{i}]: plan {analytic:.6e}, finite difference {numeric:.6e}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "checked only {checked} gradients");
}
