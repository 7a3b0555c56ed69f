//! The two binaries as a user runs them.

use std::process::Command;

fn llmqc(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llmqc"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("llmqc runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_small_model_fits_and_a_budget_below_the_reserve_is_refused_with_the_shortfall() {
    let (code, text) = llmqc(&[
        "plan",
        "models/qwen2.5-0.5b.ron",
        "--vram",
        "80G",
        "--gpus",
        "1",
        "--batch",
        "8",
        "--seq",
        "1024",
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("494,032,768 parameters"), "{text}");
    assert!(text.contains("fits:"), "{text}");
    // An "80 GB" H100 holds 79.6 GiB: the budget above it is planned, with a warning.
    assert!(
        text.contains("--vram 80.00 GiB is more than the h100 has (79.60 GiB)"),
        "{text}"
    );
    for category in [
        "weights",
        "master",
        "gradients",
        "adam m",
        "adam v",
        "activations",
        "workspace",
    ] {
        assert!(text.contains(category), "missing {category}: {text}");
    }
    // Everything fits on the device: the one decision is the LM head's chunk size (the head is
    // always fused with the loss), priced against one chunk of the whole batch.
    let decisions = text.split("memory decisions:").nth(1).unwrap_or_default();
    let decided: Vec<&str> = decisions
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert!(
        decided.len() == 1 && decided[0].contains("lm head"),
        "{text}"
    );
    // Nothing the memory planner does makes room below the reserve.
    let (code, text) = llmqc(&["plan", "models/tiny.ron", "--vram", "512M"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("DOES NOT FIT") && text.contains("short by"),
        "{text}"
    );
}

#[test]
fn show_and_diff_read_plan_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.bin");
    let b = dir.path().join("b.bin");
    let a_s = a.to_str().unwrap();
    let b_s = b.to_str().unwrap();
    assert_eq!(
        llmqc(&[
            "plan",
            "models/tiny.ron",
            "--batch",
            "2",
            "--seq",
            "32",
            "-o",
            a_s
        ])
        .0,
        0
    );
    assert_eq!(
        llmqc(&[
            "plan",
            "models/tiny.ron",
            "--batch",
            "4",
            "--seq",
            "32",
            "-o",
            b_s
        ])
        .0,
        0
    );
    let (code, text) = llmqc(&["show", a_s, "--detail", "2", "--layer", "1"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("attention") && text.contains("L1"), "{text}");
    assert!(
        !text.contains(" L0 "),
        "the layer filter let layer 0 through: {text}"
    );
    let (code, text) = llmqc(&["diff", a_s, b_s]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("flag batch: 2 → 4") && text.contains("memory activations"),
        "{text}"
    );
    let (_, same) = llmqc(&["diff", a_s, a_s]);
    assert!(same.contains("equivalent"), "{same}");
    std::fs::write(&b, &std::fs::read(&a).unwrap()[..100]).unwrap();
    let (code, text) = llmqc(&["show", b_s]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("truncated plan file"), "{text}");
}

#[test]
fn unsupported_flags_are_refused_clearly() {
    let (code, text) = llmqc(&["plan", "models/tiny.ron", "--gpus", "2"]);
    assert_eq!(code, 2);
    assert!(text.contains("multi-GPU"), "{text}");
    let (code, text) = llmqc(&["plan", "models/tiny.ron", "--vram", "16Q"]);
    assert_ne!(code, 0);
    assert!(text.contains("unknown size unit"), "{text}");
}

#[test]
fn fp8_is_the_default_and_its_passes_can_be_dumped() {
    let dump = |extra: &[&str]| {
        let mut args = vec!["plan", "models/tiny.ron", "--batch", "2", "--seq", "8"];
        args.extend_from_slice(extra);
        let (code, text) = llmqc(&args);
        assert_eq!(code, 0, "{text}");
        text
    };
    let fp8 = dump(&["--dump-after", "fp8_casts"]);
    assert!(fp8.contains("fp8_matmul{out=bf16}"), "{fp8}");
    // Weights' second layouts are transposes of their FP8 copies; activations and gradients
    // are quantised into both layouts at once.
    assert!(fp8.contains("transpose_fp8"), "{fp8}");
    assert!(fp8.contains("quantize_dual{to=e4m3}"), "{fp8}");
    let e5m2 = dump(&["--dump-after", "fp8_casts", "--grad-fp8", "e5m2"]);
    assert!(e5m2.contains("quantize_dual{to=e5m2}"), "{e5m2}");
    let bf16 = dump(&["--precision", "bf16", "--dump-after", "autodiff"]);
    assert!(!bf16.contains("fp8_matmul"), "{bf16}");
    let (code, text) = llmqc(&["plan", "models/tiny.ron", "--grad-fp8", "bf16"]);
    assert_ne!(code, 0);
    assert!(text.contains("use e4m3 or e5m2"), "{text}");
}
