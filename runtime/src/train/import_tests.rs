//! Tests of [`super`]: the q/k un-permutation, GGUF names, dtypes, and refusals of GGUF files
//! that do not fit the tiny model.

use super::*;
use crate::train::gguf::tests::gguf_bytes;

/// The tiny test model (llama arch: 2 layers, hidden 64, 4 heads and 2 kv heads of 16).
fn tiny_plan() -> Plan {
    let device = llmq_compiler::target::device("h100").unwrap();
    let opts = llmq_passes::CompileOptions {
        batch: 1,
        seq: 8,
        grad_accum: 1,
        precision: llmq_compiler::target::Precision::Bf16,
        grad_fp8: llmq_kernels::DType::F8E4M3,
        vram_bytes: 1 << 30,
        gpus: 1,
        device,
        optimizer: Default::default(),
        dump_after: None,
        skip_passes: Vec::new(),
    };
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny.ron");
    llmq_passes::compile(&spec, &opts).unwrap().plan
}

fn u32_value(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn string_value(s: &str) -> Vec<u8> {
    [(s.len() as u64).to_le_bytes().to_vec(), s.into()].concat()
}

/// A GGUF of the tiny model's dims (as llama.cpp writes them) with `layers` blocks and the
/// given tensors.
fn tiny_gguf(
    dir: &Path,
    arch: &str,
    layers: u32,
    tensors: &[(&str, &[u64], u32, Vec<u8>)],
) -> PathBuf {
    let key = |k: &str| format!("{arch}.{k}");
    let keys = [
        key("block_count"),
        key("embedding_length"),
        key("attention.head_count"),
        key("attention.head_count_kv"),
    ];
    let metadata = vec![
        ("general.architecture", 8, string_value(arch)),
        (keys[0].as_str(), 4, u32_value(layers)),
        (keys[1].as_str(), 4, u32_value(64)),
        (keys[2].as_str(), 4, u32_value(4)),
        (keys[3].as_str(), 4, u32_value(2)),
    ];
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, gguf_bytes(&metadata, tensors)).unwrap();
    path
}

#[test]
fn a_gguf_of_other_dims_or_arch_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let plan = tiny_plan();
    let file = WeightFile::open(&tiny_gguf(dir.path(), "llama", 3, &[])).unwrap();
    let err = file.check(&plan).unwrap_err().to_string();
    assert!(
        err.contains("layers: spec 2, file 3") && err.contains("tiny.gguf"),
        "{err}"
    );
    let file = WeightFile::open(&tiny_gguf(dir.path(), "gpt2", 2, &[])).unwrap();
    let err = file.check(&plan).unwrap_err().to_string();
    assert!(
        err.contains("architecture") && err.contains("gpt2"),
        "{err}"
    );
    // Right dims but no tensors: every parameter missing, a few named.
    let file = WeightFile::open(&tiny_gguf(dir.path(), "llama", 2, &[])).unwrap();
    let err = file.check(&plan).unwrap_err().to_string();
    assert!(
        err.contains("lacks 20") && err.contains("`model.embed_tokens.weight`"),
        "{err}"
    );
}

#[test]
fn fill_unpermutes_llama_q_and_k_and_converts_names() {
    // blk.0.attn_q: 64 rows of 64 (4 heads of 16), each row filled with its Hugging Face
    // row index, stored in llama.cpp's order; blk.0.attn_v likewise but never permuted.
    let (rows, cols, heads) = (64usize, 64usize, 4usize);
    let hf_rows: Vec<f32> = (0..rows).map(|r| r as f32).collect();
    let mut file_rows = vec![0.0; rows];
    let d = rows / heads;
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..d / 2 {
                file_rows[h * d + 2 * i + j] = hf_rows[h * d + j * d / 2 + i];
            }
        }
    }
    let bytes = |rows: &[f32]| -> Vec<u8> {
        rows.iter()
            .flat_map(|&r| std::iter::repeat_n(r, cols))
            .flat_map(|x| x.to_le_bytes())
            .collect()
    };
    let dims: &[u64] = &[cols as u64, rows as u64];
    let q = ("blk.0.attn_q.weight", dims, 0, bytes(&file_rows));
    let dir = tempfile::tempdir().unwrap();
    let plan = tiny_plan();
    let path = tiny_gguf(dir.path(), "llama", 2, &[q]);
    let file = WeightFile::open(&path).unwrap();
    // q_proj is a part of the packed q|k|v weight (horizontal fusion): its rows of it.
    let q_name = "model.layers.0.self_attn.q_proj.weight";
    let (wqkv, q_part) = plan
        .tensors
        .iter()
        .find_map(|t| {
            let part = t
                .pieces()
                .into_iter()
                .find(|p| p.hf_name.as_deref() == Some(q_name))?;
            Some((t, part))
        })
        .unwrap();
    let mut out = vec![0.0; wqkv.ty.numel() as usize];
    file.fill(q_name, wqkv, q_part.start..q_part.end, &mut out)
        .unwrap();
    let q_rows = &out[q_part.start as usize * cols..q_part.end as usize * cols];
    let first_of_rows: Vec<f32> = q_rows.chunks(cols).map(|r| r[0]).collect();
    assert_eq!(first_of_rows, hf_rows);
    // The same file as qwen2 is not permuted: rows stay as stored.
    let path = tiny_gguf(
        dir.path(),
        "qwen2",
        2,
        &[("blk.0.attn_q.weight", dims, 0, bytes(&file_rows))],
    );
    let file = WeightFile::open(&path).unwrap();
    file.fill(q_name, wqkv, q_part.start..q_part.end, &mut out)
        .unwrap();
    let q_rows = &out[q_part.start as usize * cols..q_part.end as usize * cols];
    let first_of_rows: Vec<f32> = q_rows.chunks(cols).map(|r| r[0]).collect();
    assert_eq!(first_of_rows, file_rows);
    // A part of the wrong number of rows is a shape error with both shapes.
    let err = file
        .fill(q_name, wqkv, q_part.start..q_part.start + 32, &mut out)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[64, 64]") && err.contains("[32, 64]"),
        "{err}"
    );
}

#[test]
fn unpermute_inverts_the_converters_permutation() {
    // convert_hf_to_gguf.py: w.reshape(heads, 2, d/2, cols).swapaxes(1, 2): Hugging Face
    // row h·d + j·d/2 + i goes to file row h·d + 2i + j. Two heads of d = 4, 1 column:
    // HF rows [a0 a1 b0 b1 | c0 c1 e0 e1] (pairs (a0,b0), (a1,b1)) are stored as
    // [a0 b0 a1 b1 | c0 e0 c1 e1].
    let file = [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0];
    assert_eq!(
        unpermute_rows(&file, 8, 1, 2),
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    );
    // Rows move whole: with 2 columns each row's pair of values travels together.
    let file2: Vec<f32> = file.iter().flat_map(|&r| [r, r + 0.5]).collect();
    let hf2: Vec<f32> = (0..8).flat_map(|r| [r as f32, r as f32 + 0.5]).collect();
    assert_eq!(unpermute_rows(&file2, 8, 2, 2), hf2);
    // One head of d = 6: file [p0 q0 p1 q1 p2 q2] → HF [p0 p1 p2 q0 q1 q2].
    let file = [10.0, 20.0, 11.0, 21.0, 12.0, 22.0];
    assert_eq!(
        unpermute_rows(&file, 6, 1, 1),
        [10.0, 11.0, 12.0, 20.0, 21.0, 22.0]
    );
}

#[test]
fn gguf_names_of_every_llama_and_qwen_tensor() {
    let cases = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        (
            "model.layers.7.input_layernorm.weight",
            "blk.7.attn_norm.weight",
        ),
        ("model.layers.0.self_attn.q_proj.bias", "blk.0.attn_q.bias"),
        (
            "model.layers.12.self_attn.o_proj.weight",
            "blk.12.attn_output.weight",
        ),
        (
            "model.layers.1.self_attn.k_norm.weight",
            "blk.1.attn_k_norm.weight",
        ),
        (
            "model.layers.29.mlp.down_proj.weight",
            "blk.29.ffn_down.weight",
        ),
        (
            "model.layers.3.post_attention_layernorm.weight",
            "blk.3.ffn_norm.weight",
        ),
    ];
    for (hf, gguf) in cases {
        assert_eq!(gguf_name(hf).as_deref(), Some(gguf), "{hf}");
    }
    assert_eq!(gguf_name("model.layers.0.mlp.experts.weight"), None);
}

#[test]
fn safetensors_dtypes_convert_exactly() {
    let bf = half::bf16::from_f32(-1.5).to_bits().to_le_bytes();
    let hf = half::f16::from_f32(0.25).to_bits().to_le_bytes();
    assert_eq!(safetensors_values(&bf, Dtype::BF16), Some(vec![-1.5]));
    assert_eq!(safetensors_values(&hf, Dtype::F16), Some(vec![0.25]));
    assert_eq!(safetensors_values(&[0; 8], Dtype::I64), None);
}
