//! `llmqc show`: a plan as a person reads it.
//!
//! Detail 0 prints the summary (model, flags, memory by category against the budget, time);
//! 1 adds a line per section and phase; 2 adds one line per step (stream, op, inputs →
//! outputs, bytes, estimated time, events waited for and recorded); 3 adds every buffer's
//! arena, offset and lifetime. The summary lists the memory planner's decisions, per tensor
//! class and blocks, with the device bytes each saves and the time it adds.

use super::{Plan, PlanOptions, Repeat};
use crate::ir::{Category, Phase};
use crate::kernels::DType;
use crate::target::{RESERVE_BYTES, format_bytes};
use std::fmt::Write;

/// What to print.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShowOptions {
    /// 0 (summary) to 3 (every buffer).
    pub detail: u8,
    /// Only steps and buffers of this block.
    pub layer: Option<u32>,
}

/// The summary: what `llmqc plan` prints after planning, and `show`'s first part.
pub fn summary(plan: &Plan) -> String {
    let mut out = String::new();
    let o = &plan.options;
    let e = &plan.estimates;
    let _ = writeln!(
        out,
        "model      {} ({} parameters)",
        plan.model.name,
        group_digits(plan.model.param_count)
    );
    let _ = writeln!(
        out,
        "step       batch {} × seq {} × {} micro-batch{} = {} tokens, precision {} ({}), {} GPU{}",
        o.batch,
        o.seq,
        o.grad_accum,
        if o.grad_accum == 1 { "" } else { "es" },
        group_digits(plan.tokens_per_step()),
        o.precision,
        state_summary(o),
        o.gpus,
        if o.gpus == 1 { "" } else { "s" },
    );
    let _ = writeln!(
        out,
        "device     {} (budget {})",
        plan.device.name,
        format_bytes(o.vram_bytes)
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "memory at peak (step {}):", e.peak_step);
    for c in Category::ALL {
        let bytes = e.memory_at_peak.get(&c).copied().unwrap_or(0);
        let _ = writeln!(out, "  {:<12} {:>12}", c.name(), format_bytes(bytes));
    }
    let _ = writeln!(
        out,
        "  {:<12} {:>12}",
        "live total",
        format_bytes(e.peak_live_bytes)
    );
    let _ = writeln!(
        out,
        "  {:<12} {:>12}",
        "arena",
        format_bytes(plan.device_arena_bytes)
    );
    let _ = writeln!(
        out,
        "  {:<12} {:>12}",
        "reserve",
        format_bytes(RESERVE_BYTES)
    );
    let needed = plan.device_arena_bytes + RESERVE_BYTES;
    let verdict = if needed <= o.vram_bytes {
        format!(
            "fits: {} of {} ({} free)",
            format_bytes(needed),
            format_bytes(o.vram_bytes),
            format_bytes(o.vram_bytes - needed)
        )
    } else {
        format!(
            "DOES NOT FIT: needs {} of {}, short by {}",
            format_bytes(needed),
            format_bytes(o.vram_bytes),
            format_bytes(needed - o.vram_bytes)
        )
    };
    let _ = writeln!(out, "  {verdict}");
    if plan.host_arena_bytes > 0 {
        let _ = writeln!(
            out,
            "  {:<12} {:>12}",
            "host arena",
            format_bytes(plan.host_arena_bytes)
        );
    }
    if !plan.memory.is_empty() {
        let _ = writeln!(out, "\nmemory decisions:");
        for d in &plan.memory {
            let saved = if d.bytes_saved < 0 {
                format!("-{}", format_bytes(d.bytes_saved.unsigned_abs()))
            } else {
                format_bytes(d.bytes_saved as u64)
            };
            let _ = writeln!(
                out,
                "  {:<12} {:<8} {:<34} saves {:>11}, adds {:>8.1} ms",
                d.class,
                d.blocks,
                d.action,
                saved,
                d.seconds_added * 1e3
            );
        }
    }
    let _ = writeln!(out);
    let mfu_flops = e.model_flops_per_token * e.tokens_per_second;
    let peak = match o.precision {
        crate::target::Precision::Fp8 => plan.device.fp8_tflops,
        crate::target::Precision::Bf16 => plan.device.bf16_tflops,
        crate::target::Precision::Fp32 => plan.device.fp32_tflops,
    } * 1e12;
    let _ = writeln!(
        out,
        "estimate   {:.1} ms per step ({:.2} ms per micro-batch, {:.2} ms optimizer), {} tokens/s, MFU {:.0}%",
        e.step_seconds * 1e3,
        e.micro_batch_seconds * 1e3,
        e.optimizer_seconds * 1e3,
        group_digits(e.tokens_per_second.round() as u64),
        100.0 * mfu_flops / peak,
    );
    out
}

/// The optimizer state's dtypes, as `llmqc plan --master` and `--moments` set them:
/// `master fp32, moments bf16`, or `no master, moments bf16` where AdamW updates the weights.
pub fn state_summary(options: &PlanOptions) -> String {
    let flag = |dtype: DType| match dtype {
        DType::F32 => "fp32",
        other => other.name(),
    };
    let (master, moments) = options.optimizer.state_dtypes(options.precision);
    match master {
        Some(dtype) => format!("master {}, moments {}", flag(dtype), flag(moments)),
        None => format!("no master, moments {}", flag(moments)),
    }
}

/// True when the plan's arena and the reserve fit its budget.
pub fn fits(plan: &Plan) -> bool {
    plan.device_arena_bytes + RESERVE_BYTES <= plan.options.vram_bytes
}

/// Prints a plan at the requested detail.
pub fn show_plan(plan: &Plan, opts: ShowOptions) -> String {
    let mut out = summary(plan);
    if opts.detail >= 1 {
        let _ = writeln!(out);
        for s in &plan.sections {
            let runs = match s.repeat {
                Repeat::PerMicroBatch => format!("× {} micro-batches", plan.options.grad_accum),
                Repeat::Once => "once".to_string(),
                Repeat::Eval => "when evaluating".to_string(),
            };
            let _ = writeln!(
                out,
                "section {:<12} steps {}..{} ({runs})",
                s.name, s.start, s.end
            );
            for phase in Phase::ALL {
                let steps: Vec<_> = plan.steps[s.start as usize..s.end as usize]
                    .iter()
                    .filter(|st| st.node.phase == phase)
                    .collect();
                if steps.is_empty() {
                    continue;
                }
                let secs: f64 = steps.iter().map(|st| st.estimate.seconds).sum();
                let flops: f64 = steps.iter().map(|st| st.estimate.flops).sum();
                let _ = writeln!(
                    out,
                    "  {:<4} {:>6} steps {:>10.3} ms {:>10.1} GFLOP",
                    phase.name(),
                    steps.len(),
                    secs * 1e3,
                    flops / 1e9
                );
            }
        }
    }
    if opts.detail >= 2 {
        let _ = writeln!(out, "\nsteps:");
        for (i, step) in plan.steps.iter().enumerate() {
            if opts.layer.is_some() && step.node.layer != opts.layer {
                continue;
            }
            let name = |t: &crate::ir::TensorId| format!("{t} {}", plan.tensor(*t).name);
            let ins: Vec<String> = step.node.inputs.iter().map(name).collect();
            let outs: Vec<String> = step
                .node
                .outputs
                .iter()
                .zip(&step.node.accumulate)
                .map(|(t, &acc)| {
                    if acc {
                        format!("+={}", name(t))
                    } else {
                        name(t)
                    }
                })
                .collect();
            let layer = step.node.layer.map(|l| format!("L{l}")).unwrap_or_default();
            let mut events = String::new();
            if !step.waits.is_empty() {
                let waits: Vec<String> = step.waits.iter().map(|e| format!("e{e}")).collect();
                let _ = write!(events, "   waits {}", waits.join(","));
            }
            if let Some(e) = step.records {
                let _ = write!(events, "   records e{e}");
            }
            let _ = writeln!(
                out,
                "{i:>6} s{} {} {:<4} {}({}) -> {}   {} {:.3} ms{events}",
                step.stream,
                step.node.phase.name(),
                layer,
                step.node.op,
                ins.join(", "),
                outs.join(", "),
                format_bytes(step.estimate.bytes as u64),
                step.estimate.seconds * 1e3
            );
        }
    }
    if opts.detail >= 3 {
        let _ = writeln!(out, "\nbuffers:");
        for (i, t) in plan.tensors.iter().enumerate() {
            if opts.layer.is_some() && t.layer != opts.layer {
                continue;
            }
            let b = &plan.buffers[t.buffer.index()];
            let _ = writeln!(
                out,
                "  {} t{i} {:<40} {:<8} {:>14} @ {}{:>12} live {}..={}",
                t.buffer,
                t.name,
                t.role.name(),
                t.ty.to_string(),
                if b.arena == super::Arena::Host {
                    "host "
                } else {
                    ""
                },
                b.offset,
                b.first_step,
                b.last_step
            );
        }
    }
    out
}

/// `1234567` → `1,234,567`.
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
