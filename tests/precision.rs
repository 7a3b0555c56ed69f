//! LLMQ's FP8 recipe on the CPU backend: the tiny model trains as well as in BF16, and the
//! stochastic rounding of its state is reproducible.

mod common;

use llmq_compiler::target::Precision;
use llmq_runtime::train::data::{DataLoader, TokenDataset};
use llmq_runtime::trainer::StepRecord;

/// Trains the tiny model `steps` steps in `precision` on the bundled corpus (same seed, same
/// data order for every precision) and returns the records.
fn train(precision: Precision, steps: u64) -> Vec<StepRecord> {
    let dir = tempfile::tempdir().unwrap();
    let data = common::corpus(dir.path());
    let plan = common::plan("tiny.ron", &common::options(8, 64, 1, precision, 1 << 30));
    let mut t = common::trainer(plan, &data, steps, None);
    t.init_weights().unwrap();
    t.run(|_| {}).unwrap()
}

fn mean_loss(records: &[StepRecord]) -> f32 {
    records.iter().map(|r| r.loss).sum::<f32>() / records.len() as f32
}

#[test]
fn fp8_training_reaches_the_bf16_loss_within_two_percent() {
    // The two runs are independent: side by side they take the wall time of the slower.
    let (bf16, fp8) = std::thread::scope(|s| {
        let bf16 = s.spawn(|| train(Precision::Bf16, 300));
        (bf16.join().unwrap(), train(Precision::Fp8, 300))
    });
    // The per-step loss of a 128-token batch is noisy; both runs see the same batches, so the
    // mean over the last 20 steps compares the models, not the batches.
    let (a, b) = (mean_loss(&bf16[280..]), mean_loss(&fp8[280..]));
    eprintln!("mean loss over steps 281-300: bf16 {a:.4}, fp8 {b:.4}");
    assert!(fp8.iter().all(|r| r.applied && r.grad_norm.is_finite()));
    assert!(a < 3.0, "BF16 did not learn (loss {a})");
    // One-sided: the two runs leave the loss plateau at slightly different steps, and an FP8
    // run that gets ahead of BF16 is no fault (e5m2 gradients ended 2.4% lower once).
    assert!(
        b <= 1.02 * a,
        "FP8 loss {b:.4} is more than 2% above BF16's {a:.4}"
    );
}

#[test]
fn fp8_resuming_from_a_checkpoint_is_bit_exact() {
    // Stochastic rounding draws from (step, tensor, element) only, so a resumed run rounds
    // exactly as the uninterrupted one.
    common::assert_resume_is_bit_exact("tiny-qwen2.ron", Precision::Fp8);
}

/// The parameter gradients of one micro-batch in `precision`, from the seed's initial weights.
fn gradients(precision: Precision) -> Vec<(String, Vec<f32>)> {
    let dir = tempfile::tempdir().unwrap();
    let data = common::corpus(dir.path());
    let plan = common::plan("tiny.ron", &common::options(4, 32, 1, precision, 1 << 30));
    let mut t = common::trainer(plan.clone(), &data, 1, None);
    t.init_weights().unwrap();
    let batch = DataLoader::new(TokenDataset::open(&[&data], 256).unwrap(), 4, 32, 1)
        .unwrap()
        .next_batch();
    let f = |v: &[i32]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let b = t.backend();
    b.write_f32(plan.io.tokens, &f(&batch.inputs)).unwrap();
    b.write_f32(plan.io.targets, &f(&batch.targets)).unwrap();
    b.write_f32(plan.io.dloss, &[1.0]).unwrap();
    b.run_section("forward").unwrap();
    b.run_section("backward").unwrap();
    plan.io
        .params
        .iter()
        .map(|p| {
            (
                plan.tensor(p.weight).name.clone(),
                b.read_f32(p.grad).unwrap(),
            )
        })
        .collect()
}

#[test]
fn fp8_gradients_point_where_the_bf16_gradients_point() {
    // The FP8 backward (dy·W and dyᵀ·x from transposed quantisations) against the BF16 one on
    // the same weights and batch. Per-tensor e4m3 keeps about 2⁻⁴ relative error per element,
    // which costs a gradient little of its direction: a layout mistake would give unrelated
    // vectors (cosine near 0), a missing descale a wrong norm.
    let (bf16, fp8) = (gradients(Precision::Bf16), gradients(Precision::Fp8));
    for ((name, a), (_, b)) in bf16.iter().zip(&fp8) {
        let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
        let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let (na, nb) = (norm(a), norm(b));
        let cosine = dot / (na * nb);
        assert!(
            cosine > 0.99,
            "{name}: cosine {cosine:.4} between FP8 and BF16 gradients"
        );
        assert!(
            (nb / na - 1.0).abs() < 0.05,
            "{name}: norm {nb:.4e} in FP8, {na:.4e} in BF16"
        );
    }
}
