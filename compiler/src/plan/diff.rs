//! `llmqc diff`: what changed between two plans, in the terms a person cares about: flags,
//! memory per category, peak, step time, steps added or removed (as counts per op and phase),
//! and tensors whose dtype, role or placement changed.

use super::Plan;
use super::show::state_summary;
use crate::ir::Category;
use crate::target::format_bytes;
use indexmap::IndexMap;

/// The differences between plans `a` and `b`; empty when they are equivalent.
pub fn diff_plans(a: &Plan, b: &Plan) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    if a.model.name != b.model.name || a.model.fingerprint != b.model.fingerprint {
        line(format!(
            "model: {} ({}) → {} ({})",
            a.model.name, a.model.fingerprint, b.model.name, b.model.fingerprint
        ));
    }
    let (oa, ob) = (&a.options, &b.options);
    let flags = [
        ("batch", oa.batch.to_string(), ob.batch.to_string()),
        ("seq", oa.seq.to_string(), ob.seq.to_string()),
        (
            "grad_accum",
            oa.grad_accum.to_string(),
            ob.grad_accum.to_string(),
        ),
        (
            "precision",
            oa.precision.to_string(),
            ob.precision.to_string(),
        ),
        ("state", state_summary(oa), state_summary(ob)),
        (
            "vram",
            format_bytes(oa.vram_bytes),
            format_bytes(ob.vram_bytes),
        ),
        ("gpus", oa.gpus.to_string(), ob.gpus.to_string()),
        ("device", a.device.name.clone(), b.device.name.clone()),
    ];
    for (name, x, y) in flags {
        if x != y {
            line(format!("flag {name}: {x} → {y}"));
        }
    }
    for c in Category::ALL {
        let x = a.estimates.memory_at_peak.get(&c).copied().unwrap_or(0);
        let y = b.estimates.memory_at_peak.get(&c).copied().unwrap_or(0);
        if x != y {
            line(format!(
                "memory {}: {} → {} ({})",
                c.name(),
                format_bytes(x),
                format_bytes(y),
                signed_bytes(y as i64 - x as i64)
            ));
        }
    }
    if a.device_arena_bytes != b.device_arena_bytes {
        let d = b.device_arena_bytes as i64 - a.device_arena_bytes as i64;
        line(format!(
            "arena (peak): {} → {} ({})",
            format_bytes(a.device_arena_bytes),
            format_bytes(b.device_arena_bytes),
            signed_bytes(d)
        ));
    }
    let (ta, tb) = (a.estimates.step_seconds, b.estimates.step_seconds);
    if ta != tb {
        line(format!(
            "step time: {:.2} ms → {:.2} ms ({:+.1}%), tokens/s {:.0} → {:.0}",
            ta * 1e3,
            tb * 1e3,
            100.0 * (tb - ta) / ta.max(f64::MIN_POSITIVE),
            a.estimates.tokens_per_second,
            b.estimates.tokens_per_second
        ));
    }
    let (ca, cb) = (step_counts(a), step_counts(b));
    let keys: Vec<&String> = ca
        .keys()
        .chain(cb.keys().filter(|k| !ca.contains_key(*k)))
        .collect();
    for k in keys {
        let (x, y) = (
            ca.get(k).copied().unwrap_or(0),
            cb.get(k).copied().unwrap_or(0),
        );
        if x != y {
            line(format!("steps {k}: {x} → {y} ({:+})", y as i64 - x as i64));
        }
    }
    let by_name: IndexMap<&str, usize> = b
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut changed = 0;
    for t in &a.tensors {
        let Some(&j) = by_name.get(t.name.as_str()) else {
            continue;
        };
        let u = &b.tensors[j];
        let (ba, bb) = (&a.buffers[t.buffer.index()], &b.buffers[u.buffer.index()]);
        let mut what = Vec::new();
        if t.ty != u.ty {
            what.push(format!("type {} → {}", t.ty, u.ty));
        }
        if t.role != u.role {
            what.push(format!("role {} → {}", t.role.name(), u.role.name()));
        }
        if ba.arena != bb.arena {
            what.push(format!("arena {:?} → {:?}", ba.arena, bb.arena));
        }
        if !what.is_empty() {
            changed += 1;
            if changed <= 50 {
                line(format!("tensor {}: {}", t.name, what.join(", ")));
            }
        }
    }
    if changed > 50 {
        line(format!("… and {} more tensors changed", changed - 50));
    }
    let only = |x: &Plan, y: &Plan| {
        x.tensors
            .iter()
            .filter(|t| !y.tensors.iter().any(|u| u.name == t.name))
            .count()
    };
    let (removed, added) = (only(a, b), only(b, a));
    if removed + added > 0 {
        line(format!("tensors: {removed} removed, {added} added"));
    }
    out
}

fn step_counts(plan: &Plan) -> IndexMap<String, usize> {
    let mut counts = IndexMap::new();
    for s in &plan.steps {
        *counts
            .entry(format!("{} {}", s.node.phase.name(), s.node.op.name()))
            .or_insert(0) += 1;
    }
    counts
}

fn signed_bytes(d: i64) -> String {
    let sign = if d < 0 { "-" } else { "+" };
    format!("{sign}{}", format_bytes(d.unsigned_abs()))
}
