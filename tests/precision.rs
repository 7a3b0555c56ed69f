//! LLMQ's FP8 recipe on the CPU backend: the tiny model trains as well as in BF16, and the
//! stochastic rounding of its state is reproducible.

mod common;

use llmq_compiler::target::Precision;
use llmq_runtime::trainer::StepRecord;

/// Trains the tiny model `steps` steps in `precision` on the bundled corpus (same seed, same
/// data order for every precision) and returns the records.
fn train(precision: Precision, steps: u64) -> Vec<StepRecord> {
    let dir = tempfile::tempdir().unwrap();
    let data = common::corpus(dir.path());
    let plan = common::plan("tiny.ron", &common::options(4, 32, 1, precision, 1 << 30));
    let mut t = common::trainer(plan, &data, steps, None);
    t.init_weights().unwrap();
    t.run(|_| {}).unwrap()
}

fn mean_loss(records: &[StepRecord]) -> f32 {
    records.iter().map(|r| r.loss).sum::<f32>() / records.len() as f32
}

#[test]
fn fp8_training_reaches_the_bf16_loss_within_two_percent() {
    let (bf16, fp8) = (train(Precision::Bf16, 300), train(Precision::Fp8, 300));
    // The per-step loss of a 128-token batch is noisy; both runs see the same batches, so the
    // mean over the last 20 steps compares the models, not the batches.
    let (a, b) = (mean_loss(&bf16[280..]), mean_loss(&fp8[280..]));
    eprintln!("mean loss over steps 281-300: bf16 {a:.4}, fp8 {b:.4}");
    assert!(fp8.iter().all(|r| r.applied && r.grad_norm.is_finite()));
    assert!(a < 3.0, "BF16 did not learn (loss {a})");
    assert!(
        (b - a).abs() <= 0.02 * a,
        "FP8 loss {b:.4} is not within 2% of BF16's {a:.4}"
    );
}
