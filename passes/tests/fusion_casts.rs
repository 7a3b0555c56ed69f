//! The fusion pass's cast clean-up on a hand-made graph (the pipeline makes no such casts
//! yet): which casts go, which stay, and that every tensor still written holds the same bits
//! as before, evaluated with storage rounding on random inputs and on every FP8 code.

use indexmap::IndexMap;
use llmq_compiler::ir::{Graph, Phase, Role, Tensor, TensorId};
use llmq_compiler::kernels::interpret::{Value, run_op};
use llmq_compiler::kernels::numerics::{decode_fp8, round_to};
use llmq_compiler::kernels::ops::{AbsMax, Add, Cast, Quantize};
use llmq_compiler::kernels::{DType, Op, TensorType, rng};
use llmq_compiler::pass::{Pass, PassContext};
use llmq_compiler::target::Precision;
use llmq_passes::Fusion;

const SHAPE: [u64; 2] = [8, 32];

fn input(graph: &mut Graph, name: &str, dtype: DType) -> TensorId {
    graph.add_tensor(Tensor {
        name: name.into(),
        ty: TensorType::new(SHAPE, dtype),
        role: Role::Input,
        layer: None,
        hf_name: None,
        init: None,
        parts: Vec::new(),
    })
}

fn apply(graph: &mut Graph, op: impl Into<Op>, inputs: &[TensorId], names: &[&str]) -> TensorId {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    graph
        .apply(
            op.into(),
            inputs,
            &names,
            Role::Activation,
            Phase::Forward,
            None,
        )
        .unwrap()[0]
}

fn cast(graph: &mut Graph, x: TensorId, to: DType, name: &str) -> TensorId {
    apply(graph, Cast { to }, &[x], &[name])
}

/// Every tensor a node writes, evaluated in topological order and rounded to its dtype as
/// a backend stores it.
fn evaluate(graph: &Graph, inputs: &IndexMap<TensorId, Vec<f32>>) -> IndexMap<String, Vec<u32>> {
    let mut values: IndexMap<TensorId, Value> = inputs
        .iter()
        .map(|(&t, data)| {
            let ty = graph.tensor(t).ty.clone();
            (
                t,
                Value {
                    ty,
                    data: data.clone(),
                },
            )
        })
        .collect();
    let mut written = IndexMap::new();
    for n in graph.topological_order() {
        let node = graph.node(n);
        let operands: Vec<&Value> = node.inputs.iter().map(|t| &values[t]).collect();
        let outputs = run_op(&node.op, &operands).unwrap();
        for (&t, mut value) in node.outputs.iter().zip(outputs) {
            let dtype = graph.tensor(t).ty.dtype;
            value.data.iter_mut().for_each(|v| *v = round_to(dtype, *v));
            let bits = value.data.iter().map(|v| v.to_bits()).collect();
            written.insert(graph.tensor(t).name.clone(), bits);
            values.insert(t, value);
        }
    }
    written
}

fn op_names(graph: &Graph) -> Vec<String> {
    graph
        .topological_order()
        .into_iter()
        .map(|n| {
            let node = graph.node(n);
            let name = |t: &TensorId| graph.tensor(*t).name.clone();
            let inputs: Vec<String> = node.inputs.iter().map(name).collect();
            format!(
                "{} {}({})",
                name(&node.outputs[0]),
                node.op,
                inputs.join(", ")
            )
        })
        .collect()
}

#[test]
fn exact_casts_are_bypassed_and_every_value_stays() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", DType::BF16);
    let q8 = input(&mut g, "q8", DType::F8E4M3);
    // bf16 → f32 → bf16 is the identity; f32 holds every bf16 value for abs_max and quantize.
    let xw = cast(&mut g, x, DType::F32, "xw");
    let xb = cast(&mut g, xw, DType::BF16, "xb");
    apply(&mut g, Add, &[xb, xb], &["sum"]);
    let amax = apply(&mut g, AbsMax, &[xw], &["amax"]);
    let q = Quantize { to: DType::F8E4M3 };
    apply(&mut g, q, &[xw, amax], &["q", "descale"]);
    // e4m3 → bf16 → f32 is e4m3 → f32; e4m3 → bf16 → e5m2 is exact too, but has no kernel.
    let qb = cast(&mut g, q8, DType::BF16, "qb");
    cast(&mut g, qb, DType::F32, "qf");
    cast(&mut g, qb, DType::F8E5M2, "qe5");
    // bf16 → e4m3 rounds: the round trip and the abs-max of the rounded values stay.
    let n8 = cast(&mut g, x, DType::F8E4M3, "n8");
    let nb = cast(&mut g, n8, DType::BF16, "nb");
    apply(&mut g, Add, &[nb, nb], &["nsum"]);
    apply(&mut g, AbsMax, &[n8], &["namax"]);

    let s = 0x5eed;
    let x_values = (0..256)
        .map(|i| round_to(DType::BF16, (rng::normal(s, 0, i) * 300.0) as f32))
        .collect();
    let every_e4m3_code = (0..=255u8).map(|c| decode_fp8(DType::F8E4M3, c)).collect();
    let inputs = IndexMap::from([(x, x_values), (q8, every_e4m3_code)]);
    let before = evaluate(&g, &inputs);

    let ctx = PassContext {
        precision: Precision::Fp8,
        master_dtype: Some(DType::F32),
        moment_dtype: DType::BF16,
        grad_fp8: DType::F8E4M3,
        vram_bytes: u64::MAX,
        gpus: 1,
    };
    Fusion.run(&mut g, &ctx).unwrap();
    g.verify().unwrap();
    // Numbers first, so a wrong rule shows as a changed value.
    let after = evaluate(&g, &inputs);
    for (name, bits) in &after {
        let first = bits.iter().zip(&before[name]).position(|(a, b)| a != b);
        assert!(
            first.is_none(),
            "{name} changed, first at element {first:?}"
        );
    }
    assert_eq!(
        op_names(&g),
        [
            "sum add(x, x)",
            "amax abs_max(x)",
            "q quantize{to=e4m3}(x, amax)",
            "qb cast{to=bf16}(q8)",
            "qf cast{to=f32}(q8)",
            "qe5 cast{to=e5m2}(qb)",
            "n8 cast{to=e4m3}(x)",
            "nb cast{to=bf16}(n8)",
            "nsum add(nb, nb)",
            "namax abs_max(n8)",
        ]
    );
    assert_eq!(after.len(), before.len() - 2, "xw and xb are gone");
}
