//! `llmq-run` given wrong inputs: it ends with a clear message and a failure status, before
//! training, and never touches a checkpoint that is already there.

use llmq_runtime::train::data::{TokenVersion, write_token_file};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `llmq-run` in `dir`; returns its exit code and everything it printed.
fn llmq_run(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llmq-run"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("llmq-run runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn model(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// A short, fast run of the tiny model: these flags plus `extra`.
fn tiny_run(dir: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "--steps",
        "2",
        "--batch",
        "2",
        "--seq",
        "16",
        "--eval-every",
        "0",
    ];
    args.extend_from_slice(extra);
    llmq_run(dir, &args)
}

fn token_file(dir: &Path, name: &str, tokens: &[u32]) -> String {
    let path = dir.join(name);
    write_token_file(&path, tokens, TokenVersion::U16).unwrap();
    path.to_string_lossy().into_owned()
}

/// Every file under `dir` with its bytes, sorted by path.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

fn assert_refused(code: i32, text: &str, needles: &[&str]) {
    assert_ne!(code, 0, "the run succeeded:\n{text}");
    assert!(
        !text.contains("panicked"),
        "a panic, not a message:\n{text}"
    );
    for needle in needles {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
}

#[test]
fn a_missing_data_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = tiny_run(dir.path(), &["--data", "no-such-file.bin"]);
    assert_refused(code, &text, &["no-such-file.bin"]);
}

#[test]
fn a_token_id_outside_the_vocabulary_is_refused_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut tokens: Vec<u32> = (0..4096).map(|i| i % 256).collect();
    tokens[1234] = 300;
    let data = token_file(dir.path(), "other-tokenizer.bin", &tokens);
    let (code, text) = tiny_run(dir.path(), &["--data", &data]);
    assert_refused(code, &text, &["other-tokenizer.bin", "300", "1234"]);
}

#[test]
fn a_data_file_shorter_than_one_batch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = token_file(dir.path(), "short.bin", &[1, 2, 3, 4, 5]);
    let (code, text) = tiny_run(dir.path(), &["--data", &data]);
    assert_refused(code, &text, &["5 tokens in 1 file", "at least 33 tokens"]);
}

#[test]
fn a_checkpoint_of_another_model_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out_arg = out.to_string_lossy().into_owned();
    let other = model("tiny-qwen2.ron");
    let (code, text) = tiny_run(dir.path(), &[&other, "--out-dir", &out_arg]);
    assert_eq!(code, 0, "training tiny-qwen2 failed:\n{text}");
    let checkpoints = out.join("checkpoints");
    let before = snapshot(&checkpoints);
    assert!(
        before
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains("step-")),
        "no checkpoint was written: {:?}",
        before.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );

    // The default tiny model, resumed from tiny-qwen2's run directory.
    let (code, text) = tiny_run(dir.path(), &["--out-dir", &out_arg, "--resume"]);
    assert_refused(code, &text, &["tiny-qwen2"]);
    // A bad data file on resume fails too, and neither run touched a checkpoint.
    let mut tokens: Vec<u32> = (0..4096).map(|i| i % 200).collect();
    tokens[7] = 70_000 % 65_536;
    let data = token_file(dir.path(), "bad.bin", &tokens);
    let (code, text) = tiny_run(
        dir.path(),
        &[&other, "--out-dir", &out_arg, "--resume", "--data", &data],
    );
    assert_refused(code, &text, &["bad.bin"]);
    let after = snapshot(&checkpoints);
    let names = |files: &[(PathBuf, Vec<u8>)]| -> Vec<PathBuf> {
        files.iter().map(|(p, _)| p.clone()).collect()
    };
    assert_eq!(names(&before), names(&after), "files appeared or vanished");
    assert!(before == after, "a file of the run directory changed");
}

/// `llmqc plan models/tiny.ron --batch 2 --seq 16 -o dir/tiny.bin`, the plan's path.
fn tiny_plan(dir: &Path) -> String {
    let plan = dir.join("tiny.bin");
    let out = Command::new(env!("CARGO_BIN_EXE_llmqc"))
        .args([
            "plan",
            &model("tiny.ron"),
            "--batch",
            "2",
            "--seq",
            "16",
            "-o",
        ])
        .arg(&plan)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    plan.to_string_lossy().into_owned()
}

#[test]
fn planning_flags_next_to_a_plan_file_are_refused_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let plan = tiny_plan(dir.path());
    let (code, text) = tiny_run(dir.path(), &[&plan, "--precision", "bf16"]);
    assert_refused(
        code,
        &text,
        &["--batch", "--seq", "--precision", "plan file"],
    );
    assert!(!dir.path().join("runs").exists(), "nothing written");
}

#[test]
fn no_checkpoints_writes_none_and_refuses_checkpoint_flags_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = tiny_run(dir.path(), &["--backend", "cpu", "--no-checkpoints"]);
    assert_eq!(code, 0, "{text}");
    assert!(dir.path().join("runs/default/log.jsonl").exists());
    assert!(!dir.path().join("runs/default/checkpoints").exists());
    let (code, text) = tiny_run(dir.path(), &["--no-checkpoints", "--keep", "2"]);
    assert_refused(code, &text, &["--no-checkpoints", "--keep"]);
    // A plan file (no spec copied into the run directory) still gets its log.
    let fresh = tempfile::tempdir().unwrap();
    let plan = tiny_plan(fresh.path());
    let (code, text) = llmq_run(
        fresh.path(),
        &[
            &plan,
            "--steps",
            "2",
            "--eval-every",
            "0",
            "--backend",
            "cpu",
            "--no-checkpoints",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(fresh.path().join("runs/default/log.jsonl").exists());
}

#[test]
fn init_from_is_refused_beside_resume_and_names_a_file_that_is_not_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = tiny_run(dir.path(), &["--init-from", "w.safetensors", "--resume"]);
    assert_refused(code, &text, &["--init-from", "--resume"]);

    let (code, text) = tiny_run(
        dir.path(),
        &["--backend", "cpu", "--init-from", "absent.gguf"],
    );
    assert_refused(code, &text, &["absent.gguf"]);

    std::fs::write(dir.path().join("notes.txt"), "not weights").unwrap();
    let (code, text) = tiny_run(
        dir.path(),
        &["--backend", "cpu", "--init-from", "notes.txt"],
    );
    assert_refused(
        code,
        &text,
        &["notes.txt", "not a safetensors or GGUF file"],
    );
    assert!(
        !dir.path().join("runs/default/checkpoints").exists(),
        "no checkpoint from a refused import"
    );
}

#[test]
fn a_global_batch_the_micro_batch_does_not_divide_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = tiny_run(dir.path(), &["--global-batch", "5"]);
    assert_refused(code, &text, &["--global-batch 5", "--batch 2"]);
    let (code, text) = tiny_run(dir.path(), &["--global-batch", "6"]);
    assert_eq!(code, 0, "{text}");
    // 6 sequences of 16 tokens: 3 micro-batches of 2 a step.
    assert!(text.contains("steps of 96 tokens"), "{text}");
}
