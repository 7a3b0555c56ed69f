//! `llmqc report`: the page's memory chart and timeline agree with the plan's own estimates.

mod common;

use llmq_compiler::ir::Category;
use llmq_compiler::plan::{Arena, EVAL_SECTION, memory_profile, report_html, step_times};
use llmq_compiler::target::Precision;
use std::process::Command;

fn tiny_plan() -> llmq_compiler::plan::Plan {
    common::plan(
        "tiny.ron",
        &common::options(4, 64, 1, Precision::Bf16, 1 << 30),
    )
}

/// The stacked memory profile peaks where lowering's estimate says, at the same bytes, with
/// the same split by category.
#[test]
fn the_memory_profile_peaks_as_the_plan_estimates() {
    let plan = tiny_plan();
    let profile = memory_profile(&plan, Arena::Device);
    assert_eq!(profile.len(), plan.steps.len());
    let totals: Vec<u64> = profile.iter().map(|p| p.iter().sum()).collect();
    let peak = *totals.iter().max().unwrap();
    let e = &plan.estimates;
    assert_eq!(peak, e.peak_live_bytes);
    let at_peak = &profile[e.peak_step as usize];
    for (c, category) in Category::ALL.iter().enumerate() {
        assert_eq!(at_peak[c], e.memory_at_peak[category], "{category}");
    }
    // Weights and optimizer state are live at every step: no step holds less.
    let state: u64 = [
        Category::Weights,
        Category::Master,
        Category::Gradients,
        Category::AdamM,
        Category::AdamV,
    ]
    .iter()
    .map(|c| e.memory_at_peak[c])
    .sum();
    assert!(totals.iter().all(|&t| t >= state));
}

/// On one stream the timeline is the steps back to back: a micro-batch then the optimizer, and
/// the eval section between forward and backward (drawn, though a training step skips it).
#[test]
fn the_timeline_of_one_stream_adds_up_to_the_estimated_step() {
    let plan = tiny_plan();
    let times = step_times(&plan.steps);
    for pair in times.windows(2) {
        assert_eq!(
            pair[0].1, pair[1].0,
            "steps on one stream follow each other"
        );
    }
    let e = &plan.estimates;
    let end = times.last().unwrap().1;
    let eval = plan
        .section(EVAL_SECTION)
        .expect("the tiny plan fuses its head");
    let eval_seconds: f64 = plan.steps[eval.start as usize..eval.end as usize]
        .iter()
        .map(|s| s.estimate.seconds)
        .sum();
    let want = e.micro_batch_seconds + eval_seconds + e.optimizer_seconds;
    assert!((end - want).abs() <= 1e-9 * want, "{end} vs {want}");
}

#[test]
fn the_page_draws_every_step_and_every_used_category() {
    let plan = tiny_plan();
    let html = report_html(&plan);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.trim_end().ends_with("</html>"));
    assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
    assert_eq!(html.matches("class=\"step\"").count(), plan.steps.len());
    let used = Category::ALL
        .iter()
        .filter(|&&c| {
            memory_profile(&plan, Arena::Device)
                .iter()
                .any(|p| p[c as usize] > 0)
        })
        .count();
    assert_eq!(html.matches("class=\"category\"").count(), used);
    assert!(
        !html.contains("http://")
            || html.matches("http://").count()
                == html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
        "the page fetches nothing"
    );
}

#[test]
fn llmqc_report_writes_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let plan_path = dir.path().join("plan.bin");
    let html_path = dir.path().join("plan.html");
    std::fs::write(&plan_path, tiny_plan().to_bytes()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_llmqc"))
        .args(["report"])
        .arg(&plan_path)
        .arg("-o")
        .arg(&html_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert!(html.contains("Device memory over the step"));
}
