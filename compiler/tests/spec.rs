//! The shipped model files: they load, their parameter counts match an independent formula
//! and the Hugging Face checkpoints, the tiny models' graphs are stable, and loading is
//! deterministic.

use llmq_compiler::ir::{Phase, Role, write_graph};
use llmq_compiler::kernels::{DType, TensorType};
use llmq_compiler::spec::{self, ForwardModel, SpecOptions};
use std::path::{Path, PathBuf};

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn opts() -> SpecOptions {
    SpecOptions {
        batch: 2,
        seq: 8,
        weight_dtype: DType::BF16,
    }
}

fn load(name: &str) -> ForwardModel {
    let path = models_dir().join(format!("{name}.ron"));
    match spec::load(&path, &opts()) {
        Ok(m) => m,
        Err(e) => panic!("{name}: {:?}", miette::Report::new(e)),
    }
}

/// Every `models/*.ron` file, by name.
fn shipped() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(models_dir())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            if p.extension()? != "ron" {
                return None;
            }
            p.file_stem()?.to_str().map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

/// The parameter count of a decoder from its dims, written independently of the spec files:
/// embedding, per layer two norms, q/k/v/o, gate/up/down (plus q/k/v biases for Qwen2 and
/// q/k norms for Qwen3), the final norm, and the LM head unless tied.
fn closed_form(m: &ForwardModel, family: &str, tied: bool) -> u64 {
    let d = |k: &str| m.dims[k];
    let (v, h, l) = (d("vocab"), d("hidden"), d("layers"));
    let (q, kv, f) = (
        d("heads") * d("head_dim"),
        d("kv_heads") * d("head_dim"),
        d("ffn"),
    );
    let mut layer = 2 * h + h * q + 2 * h * kv + q * h + 3 * h * f;
    match family {
        "qwen2" => layer += q + 2 * kv,
        "qwen3" => layer += 2 * d("head_dim"),
        _ => {}
    }
    let head = if tied { 0 } else { v * h };
    v * h + l * layer + h + head
}

fn family_and_tied(name: &str) -> (&'static str, bool) {
    let text = std::fs::read_to_string(models_dir().join(format!("{name}.ron"))).unwrap();
    let family = ["qwen2", "qwen3", "llama"]
        .into_iter()
        .find(|f| text.contains(&format!("arch/{f}.ron")))
        .unwrap();
    (family, text.contains("\"tie_embeddings\": true"))
}

#[test]
fn every_model_matches_the_closed_form_count() {
    let names = shipped();
    assert!(names.len() >= 15, "{names:?}");
    for name in names {
        let m = load(&name);
        let (family, tied) = family_and_tied(&name);
        assert_eq!(m.param_count(), closed_form(&m, family, tied), "{name}");
    }
}

#[test]
fn every_listed_model_matches_hugging_face() {
    let list = std::fs::read_to_string(models_dir().join("hf_param_counts.txt")).unwrap();
    let mut checked = 0;
    for line in list
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (name, count) = line.split_once(' ').unwrap();
        let m = load(name);
        assert_eq!(m.param_count(), count.parse::<u64>().unwrap(), "{name}");
        checked += 1;
    }
    // Every shipped model but the tiny test models has a Hugging Face count.
    let full = shipped().iter().filter(|n| !n.starts_with("tiny")).count();
    assert_eq!(checked, full);
}

#[test]
fn tiny_model_graph() {
    let m = load("tiny");
    m.graph.verify().unwrap();
    insta::assert_snapshot!("tiny_forward_graph", write_graph(&m.graph));
}

#[test]
fn tiny_qwen2_and_qwen3_graphs() {
    for name in ["tiny-qwen2", "tiny-qwen3"] {
        let m = load(name);
        m.graph.verify().unwrap();
        insta::assert_snapshot!(
            format!("{}_forward_graph", name.replace('-', "_")),
            write_graph(&m.graph)
        );
    }
}

#[test]
fn forward_model_contract() {
    for name in shipped() {
        let m = load(&name);
        let g = &m.graph;
        let bs = TensorType::new([2, 8], DType::I32);
        let t = |id| g.tensor(id);
        assert_eq!((t(m.tokens).role, &t(m.tokens).ty), (Role::Input, &bs));
        assert_eq!((t(m.targets).role, &t(m.targets).ty), (Role::Input, &bs));
        let f1 = TensorType::new([1], DType::F32);
        assert_eq!((t(m.loss).role, &t(m.loss).ty), (Role::Scalar, &f1));
        assert_eq!(
            g.node(g.producer(m.loss).unwrap()).op.name(),
            "cross_entropy"
        );
        assert!(g.nodes().all(|(_, n)| n.phase == Phase::Forward));
        assert_eq!((m.dims["batch"], m.dims["seq"]), (2, 8));
        assert_eq!(m.name, name);
        // Names are unique; every weight has an init and an HF name; layer weights a layer.
        let mut names: Vec<&str> = g.tensors().map(|(_, t)| t.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), g.tensor_count(), "{name}: duplicate names");
        for (_, t) in g.tensors().filter(|(_, t)| t.role == Role::Weight) {
            assert!(t.init.is_some() && t.hf_name.is_some(), "{}", t.name);
            assert_eq!(t.ty.dtype, DType::BF16);
            assert_eq!(
                t.name.starts_with("layers."),
                t.layer.is_some(),
                "{}",
                t.name
            );
            if let Some(l) = t.layer {
                let hf = t.hf_name.as_deref().unwrap();
                assert!(hf.starts_with(&format!("model.layers.{l}.")), "{hf}");
            }
        }
    }
}

#[test]
fn hf_names_of_qwen_layers() {
    let m = load("tiny-qwen3");
    let hf = |n: &str| {
        let id = m.graph.find(n).unwrap();
        m.graph.tensor(id).hf_name.clone().unwrap()
    };
    assert_eq!(
        hf("layers.1.q_norm"),
        "model.layers.1.self_attn.q_norm.weight"
    );
    assert_eq!(
        hf("layers.1.k_norm"),
        "model.layers.1.self_attn.k_norm.weight"
    );
    assert_eq!(hf("layers.0.w_down"), "model.layers.0.mlp.down_proj.weight");
    assert_eq!(hf("norm"), "model.norm.weight");
    assert!(m.graph.find("lm_head").is_none());
    let m2 = load("tiny-qwen2");
    let hf2 = |n: &str| {
        let id = m2.graph.find(n).unwrap();
        m2.graph.tensor(id).hf_name.clone().unwrap()
    };
    assert_eq!(hf2("layers.0.bq"), "model.layers.0.self_attn.q_proj.bias");
    assert_eq!(hf2("lm_head"), "lm_head.weight");
}

#[test]
fn f32_weights_give_f32_activations() {
    let path = models_dir().join("tiny.ron");
    let o = SpecOptions {
        weight_dtype: DType::F32,
        ..opts()
    };
    let m = spec::load(&path, &o).unwrap();
    let x = m.graph.find("layers.1.x").unwrap();
    assert_eq!(
        m.graph.tensor(x).ty,
        TensorType::new([2, 8, 64], DType::F32)
    );
}

#[test]
fn loading_is_deterministic() {
    for name in ["tiny", "tiny-qwen3", "qwen2.5-0.5b"] {
        let (a, b) = (load(name), load(name));
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.fingerprint.len(), 16);
        assert_eq!(write_graph(&a.graph), write_graph(&b.graph));
    }
    assert_ne!(load("tiny").fingerprint, load("tiny-qwen2").fingerprint);
}
