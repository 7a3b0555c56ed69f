//! Training the tiny model on the CPU backend, through the plan: it learns, resumes exactly,
//! and its gradients are those of its forward graph (finite differences, and an independent
//! interpreter of the forward graph).

mod common;

use llmq_compiler::autodiff::MasterWeights;
use llmq_compiler::ir::{Graph, Role, TensorId};
use llmq_compiler::kernels::Op;
use llmq_compiler::kernels::interpret::{Value, run_backward_rule, run_op};
use llmq_compiler::kernels::{DType, TensorType, rng};
use llmq_compiler::plan::EVAL_SECTION;
use llmq_compiler::spec::{self, SpecOptions};
use llmq_compiler::target::Precision;
use llmq_runtime::backend::Backend;
use llmq_runtime::backend::cpu::CpuBackend;
use std::path::Path;

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

/// LLMQ's published setting: no FP32 master copies, AdamW updates the BF16 weights in place
/// with stochastic rounding, BF16 moments. The plan has no master tensor, the tiny model learns
/// as with masters, and a resumed run is bit-exact (the rounding's bits depend only on step,
/// tensor and element).
#[test]
fn without_master_weights_the_tiny_model_learns_and_resumes_exactly() {
    let mut opts = common::options(8, 64, 1, Precision::Bf16, 1 << 30);
    opts.optimizer.master = Some(MasterWeights::None);
    opts.optimizer.moments = Some(DType::BF16);
    let plan = common::plan("tiny.ron", &opts);
    assert!(plan.io.params.iter().all(|p| p.master.is_none()));
    assert!(plan.steps.iter().any(|s| match &s.node.op {
        Op::AdamW(a) => a.param_stream.is_some() && a.stochastic.is_some(),
        _ => false,
    }));
    let dir = tempfile::tempdir().unwrap();
    let data = common::corpus(dir.path());
    let mut t = common::trainer(plan.clone(), &data, 200, None);
    t.init_weights().unwrap();
    let records = t.run(|_| {}).unwrap();
    let last: f32 = records[190..].iter().map(|r| r.loss).sum::<f32>() / 10.0;
    assert!(last < 3.0, "mean loss over steps 191-200 is {last}");
    opts.batch = 2;
    opts.seq = 32;
    opts.grad_accum = 2;
    common::assert_resume_of_plan_is_bit_exact(common::plan("tiny-qwen2.ron", &opts));
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

/// Runs the forward and the eval section (the loss alone, as evaluation does) and returns the
/// loss.
fn loss(backend: &mut CpuBackend) -> f64 {
    backend.run_section("forward").unwrap();
    backend.run_section(EVAL_SECTION).unwrap();
    let loss = backend.plan().io.loss;
    backend.read_f32(loss).unwrap()[0] as f64
}

/// The tensors of a safetensors file as FP32 values (I32 and F32 only: what a step dump holds
/// in an FP32 plan).
fn read_dump(path: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, t)| {
            let words = t.data().chunks_exact(4).map(|c| c.try_into().unwrap());
            let values = match t.dtype() {
                safetensors::Dtype::F32 => words.map(f32::from_le_bytes).collect(),
                safetensors::Dtype::I32 => words.map(|w| i32::from_le_bytes(w) as f32).collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, values)
        })
        .collect()
}

#[test]
fn dumped_gradients_of_the_executed_plan_match_finite_differences_of_its_loss() {
    // What `llmq-run --dump-step` writes (and tools/hf_step_check.py compares with PyTorch) is
    // checked here against the plan's own loss. FP32 plan, so the only error of the difference
    // quotient is FP32 rounding of the loss (about 1e-7 relative) over the step h, and h²
    // truncation: |error| ≲ 1e-7·loss/h + h²·K.
    let dir = tempfile::tempdir().unwrap();
    let data = common::corpus(dir.path());
    let plan = common::plan(
        "tiny-qwen3.ron",
        &common::options(2, 16, 1, Precision::Fp32, 1 << 30),
    );
    let mut t = common::trainer(plan.clone(), &data, 1, None);
    t.init_weights().unwrap();
    let dump_dir = dir.path().join("dump");
    let dumped_loss = t.dump_step(&dump_dir).unwrap();
    let step = read_dump(&dump_dir.join("step.safetensors"));
    let weights = read_dump(&dump_dir.join("model.safetensors"));
    let mut cpu = CpuBackend::new(plan.clone());
    let io = plan.io.clone();
    // A parameter's values from the dump: its pieces (the parts of a packed one) by their
    // Hugging Face names, `prefix`ed, rows in order.
    let values =
        |dump: &std::collections::HashMap<String, Vec<f32>>, id: TensorId, prefix: &str| {
            let pieces = plan.tensor(id).pieces();
            let names = pieces
                .iter()
                .map(|p| format!("{prefix}{}", p.checkpoint_name()));
            names.flat_map(|n| dump[&n].clone()).collect::<Vec<f32>>()
        };
    for p in &plan.io.params {
        cpu.write_f32(p.weight, &values(&weights, p.weight, ""))
            .unwrap();
    }
    cpu.write_f32(io.tokens, &step["tokens"]).unwrap();
    cpu.write_f32(io.targets, &step["targets"]).unwrap();
    assert_eq!(step["loss"], [dumped_loss]);
    assert_eq!(
        loss(&mut cpu),
        dumped_loss as f64,
        "the dump's loss is the plan's"
    );
    let h = 1e-2f32;
    let mut checked = 0;
    for p in &plan.io.params {
        let name = plan.tensor(p.weight).name.clone();
        let grad = &values(&step, p.weight, "grad.");
        let mut w = values(&weights, p.weight, "");
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
            assert!(
                (numeric - analytic).abs() < tol,
                "{name}[{i}]: plan {analytic:.6e}, finite difference {numeric:.6e}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "checked only {checked} gradients");
    let pieces: usize = plan
        .io
        .params
        .iter()
        .map(|p| plan.tensor(p.weight).pieces().len())
        .sum();
    assert_eq!(
        step.len(),
        3 + pieces,
        "tokens, targets, loss and every gradient (of every part of a packed weight)"
    );
}

/// Evaluates the forward graph node by node with the catalogue's references, then walks it
/// backwards applying each op's backward rule: no autodiff pass, no lowering, no arena, no
/// storage. Returns the loss and the gradient of every tensor it reached.
fn interpret(graph: &Graph, inputs: Vec<(TensorId, Value)>) -> (f32, Vec<Option<Value>>) {
    let mut values: Vec<Option<Value>> = vec![None; graph.tensor_count()];
    for (id, v) in inputs {
        values[id.index()] = Some(v);
    }
    let order = graph.topological_order();
    let value = |values: &[Option<Value>], t: TensorId| {
        values[t.index()]
            .clone()
            .unwrap_or_else(|| panic!("{t} is read before it is written"))
    };
    let mut loss = None;
    for &n in &order {
        let node = graph.node(n);
        let args: Vec<Value> = node.inputs.iter().map(|&t| value(&values, t)).collect();
        let outs = run_op(&node.op, &args.iter().collect::<Vec<_>>()).unwrap();
        for (&t, v) in node.outputs.iter().zip(outs) {
            if graph.tensor(t).name == "loss" {
                loss = Some(v.data[0]);
            }
            values[t.index()] = Some(v);
        }
    }
    let loss_id = graph.find("loss").expect("the graph has a loss");
    let mut grads: Vec<Option<Value>> = vec![None; graph.tensor_count()];
    grads[loss_id.index()] = Some(Value::filled(TensorType::new([1], DType::F32), 1.0));
    for &n in order.iter().rev() {
        let node = graph.node(n);
        if node.outputs.iter().all(|t| grads[t.index()].is_none()) {
            continue;
        }
        let ins: Vec<Value> = node.inputs.iter().map(|&t| value(&values, t)).collect();
        let types: Vec<TensorType> = ins.iter().map(|v| v.ty.clone()).collect();
        let Some(rule) = node.op.spec().backward(&types) else {
            continue;
        };
        let outs: Vec<Value> = node.outputs.iter().map(|&t| value(&values, t)).collect();
        let grad_outs: Vec<Value> = node
            .outputs
            .iter()
            .zip(&outs)
            .map(|(&t, o)| {
                grads[t.index()]
                    .clone()
                    .unwrap_or_else(|| Value::filled(o.ty.clone(), 0.0))
            })
            .collect();
        let input_grads = run_backward_rule(&rule, &ins, &outs, &grad_outs).unwrap();
        for (&t, g) in node.inputs.iter().zip(input_grads) {
            let Some(g) = g else { continue };
            match &mut grads[t.index()] {
                Some(acc) => acc.data.iter_mut().zip(&g.data).for_each(|(a, b)| *a += b),
                slot => *slot = Some(g),
            }
        }
    }
    (loss.expect("the loss was computed"), grads)
}

/// The gradients the executed FP32 plan leaves in its arena equal those of [`interpret`] on
/// the model's forward graph (before horizontal fusion: a packed parameter's gradient is
/// compared part by part), within FP32 rounding: a fault in autodiff, scheduling, liveness or
/// buffer packing would change them by far more.
fn check_plan_against_interpreter(model: &str) {
    let (batch, seq) = (2u64, 16u64);
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(model);
    let forward = spec::load(
        &path,
        &SpecOptions {
            batch,
            seq,
            weight_dtype: DType::F32,
        },
    )
    .unwrap();
    let plan = common::plan(
        model,
        &common::options(batch, seq, 1, Precision::Fp32, 1 << 30),
    );
    let mut cpu = CpuBackend::new(plan.clone());
    let seed = 0x5EED;
    let vocab = forward.dims["vocab"];
    let ids = |stream: u64| -> Vec<f32> {
        (0..batch * seq)
            .map(|i| (rng::uniform(seed, stream, i) * vocab as f64).floor() as f32)
            .collect()
    };
    let mut targets = ids(2);
    targets[5] = -1.0;
    let mut inputs = vec![(forward.tokens, ids(1)), (forward.targets, targets)];
    for (id, t) in forward
        .graph
        .tensors()
        .filter(|(_, t)| t.role == Role::Weight)
    {
        let values = (0..t.ty.numel())
            .map(|i| (rng::normal(seed, 10 + id.index() as u64, i) * 0.3) as f32)
            .collect();
        inputs.push((id, values));
    }
    let by_name: std::collections::HashMap<&str, &Vec<f32>> = inputs
        .iter()
        .map(|(id, values)| (forward.graph.tensor(*id).name.as_str(), values))
        .collect();
    cpu.write_f32(plan.io.tokens, by_name["tokens"]).unwrap();
    cpu.write_f32(plan.io.targets, by_name["targets"]).unwrap();
    // Each parameter from the forward graph's weights: a packed one from its parts' rows.
    for p in &plan.io.params {
        let pieces = plan.tensor(p.weight).pieces();
        let values: Vec<f32> = pieces
            .iter()
            .flat_map(|w| by_name[w.name.as_str()].clone())
            .collect();
        cpu.write_f32(p.weight, &values).unwrap();
    }
    cpu.write_f32(plan.io.dloss, &[1.0]).unwrap();
    cpu.run_section("forward").unwrap();
    cpu.run_section("backward").unwrap();
    let plan_loss = cpu.read_f32(plan.io.loss).unwrap()[0];

    let inputs = inputs
        .into_iter()
        .map(|(id, data)| {
            let ty = forward.graph.tensor(id).ty.clone();
            (id, Value { ty, data })
        })
        .collect();
    let (loss, grads) = interpret(&forward.graph, inputs);
    assert!(
        (loss - plan_loss).abs() <= 1e-6 * loss.abs(),
        "{model}: loss {plan_loss} from the plan, {loss} from the interpreter"
    );
    let mut checked = 0;
    let weights = forward.graph.tensors_with_role(Role::Weight);
    for p in &plan.io.params {
        let grad = cpu.read_f32(p.grad).unwrap();
        let weight = plan.tensor(p.weight);
        let row = (weight.ty.numel() / weight.ty.shape[0]) as usize;
        // A packed parameter's gradient holds its parts' gradients, by rows.
        for piece in weight.pieces() {
            let name = &piece.name;
            let id = forward.graph.find(name).unwrap();
            let want = grads[id.index()]
                .as_ref()
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let got = &grad[piece.start as usize * row..piece.end as usize * row];
            let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{model}: {name}'s gradient is zero");
            for (i, (g, w)) in got.iter().zip(&want.data).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4 * scale,
                    "{model}: {name}[{i}]: plan {g:e}, interpreter {w:e} (largest |grad| {scale:e})"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, weights.len(), "every weight of the forward graph");
}

#[test]
fn plan_gradients_equal_an_independent_interpreter_qwen3() {
    check_plan_against_interpreter("tiny-qwen3.ron");
}

#[test]
fn plan_gradients_equal_an_independent_interpreter_qwen2() {
    check_plan_against_interpreter("tiny-qwen2.ron");
}
