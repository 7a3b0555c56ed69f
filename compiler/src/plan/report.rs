//! `llmqc report`: one self-contained HTML page (inline SVG and CSS, no script, nothing
//! fetched) that draws a plan: device memory over the schedule, stacked by category, against
//! the budget; the same for the pinned host arena when it is used; and the streams as a
//! timeline of the estimated step, one lane per stream, so overlap of copies and compute shows.

use super::{Arena, Buffer, Plan, Step, StreamKind};
use crate::ir::{Category, Phase};
use crate::target::format_bytes;
use std::fmt::Write;

/// Live bytes per step and category of one arena: `profile[step][category index]`, a buffer
/// counting from its first to its last step (inclusive), categories in [`Category::ALL`] order.
pub fn memory_profile(plan: &Plan, arena: Arena) -> Vec<[u64; Category::ALL.len()]> {
    let buffers = plan
        .tensors
        .iter()
        .map(|t| (&plan.buffers[t.buffer.index()], t.role.category()));
    live_bytes(buffers, arena, plan.steps.len())
}

/// Live bytes per step and category of `arena` over `steps` steps, from each buffer and the
/// category its bytes count under (lowering's estimates and [`memory_profile`] both use it).
pub fn live_bytes<'a>(
    buffers: impl Iterator<Item = (&'a Buffer, Category)>,
    arena: Arena,
    steps: usize,
) -> Vec<[u64; Category::ALL.len()]> {
    let mut delta = vec![[0i64; Category::ALL.len()]; steps + 1];
    for (b, category) in buffers {
        if b.arena != arena || steps == 0 {
            continue;
        }
        let c = category_index(category);
        let last = (b.last_step as usize).min(steps - 1);
        delta[b.first_step as usize][c] += b.size as i64;
        delta[last + 1][c] -= b.size as i64;
    }
    let mut live = [0i64; Category::ALL.len()];
    delta[..steps]
        .iter()
        .map(|d| {
            let mut out = [0u64; Category::ALL.len()];
            for c in 0..live.len() {
                live[c] += d[c];
                out[c] = live[c] as u64;
            }
            out
        })
        .collect()
}

fn category_index(c: Category) -> usize {
    Category::ALL
        .iter()
        .position(|&x| x == c)
        .expect("every category is listed in ALL")
}

/// Start and finish of every step of `steps` in estimated seconds from the first: a step
/// starts when its stream is free and every event it waits for has been recorded.
pub fn step_times(steps: &[Step]) -> Vec<(f64, f64)> {
    let mut stream_free: Vec<f64> = Vec::new();
    // Per event, when it was last recorded.
    let mut recorded: Vec<Option<f64>> = Vec::new();
    steps
        .iter()
        .map(|step| {
            let s = step.stream as usize;
            if stream_free.len() <= s {
                stream_free.resize(s + 1, 0.0);
            }
            let start = step
                .waits
                .iter()
                .filter_map(|&e| recorded.get(e as usize).copied().flatten())
                .fold(stream_free[s], f64::max);
            let finish = start + step.estimate.seconds;
            stream_free[s] = finish;
            if let Some(e) = step.records {
                let e = e as usize;
                if recorded.len() <= e {
                    recorded.resize(e + 1, None);
                }
                recorded[e] = Some(finish);
            }
            (start, finish)
        })
        .collect()
}

/// Colours of the categories, in [`Category::ALL`] order.
const CATEGORY_COLOURS: [&str; 8] = [
    "#4e79a7", "#a0cbe8", "#f28e2b", "#ffbe7d", "#59a14f", "#e15759", "#b07aa1", "#bab0ac",
];

/// Width of the drawing area of every chart, in SVG units.
const WIDTH: f64 = 1100.0;
const MARGIN_LEFT: f64 = 90.0;

/// The whole page.
pub fn report_html(plan: &Plan) -> String {
    let mut html = String::new();
    let title = format!(
        "{} on {}: batch {} × {}, {}",
        plan.model.name,
        plan.device.name,
        plan.options.batch,
        plan.options.seq,
        plan.options.precision.name()
    );
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n\
         <style>body{{font:14px system-ui,sans-serif;margin:24px;color:#222}}\
         h1{{font-size:20px}}h2{{font-size:16px;margin-top:28px}}\
         table{{border-collapse:collapse}}td,th{{padding:2px 10px;text-align:right}}\
         th{{border-bottom:1px solid #999}}td:first-child,th:first-child{{text-align:left}}\
         .swatch{{display:inline-block;width:10px;height:10px;margin-right:6px}}\
         svg text{{font:11px system-ui,sans-serif}}</style></head><body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    summary_table(&mut html, plan);
    let device = memory_profile(plan, Arena::Device);
    html += "<h2>Device memory over the step</h2>\n";
    memory_chart(&mut html, plan, &device, Some(plan.options.vram_bytes));
    if plan.host_arena_bytes > 0 {
        html += "<h2>Pinned host memory over the step</h2>\n";
        memory_chart(&mut html, plan, &memory_profile(plan, Arena::Host), None);
    }
    html += "<h2>Streams (estimated times; one micro-batch, then the optimizer)</h2>\n";
    timeline_chart(&mut html, plan);
    html += "</body></html>\n";
    html
}

fn summary_table(html: &mut String, plan: &Plan) {
    let e = &plan.estimates;
    html.push_str("<table>\n");
    let rows = [
        ("parameters", super::group_digits(plan.model.param_count)),
        ("device arena", format_bytes(plan.device_arena_bytes)),
        ("pinned host arena", format_bytes(plan.host_arena_bytes)),
        ("budget", format_bytes(plan.options.vram_bytes)),
        ("steps", plan.steps.len().to_string()),
        ("estimated step", format!("{:.1} ms", e.step_seconds * 1e3)),
        (
            "estimated tokens/s",
            super::group_digits(e.tokens_per_second.round() as u64),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(html, "<tr><td>{k}</td><td>{}</td></tr>", escape(&v));
    }
    html.push_str("</table>\n");
}

/// A stacked area chart of `profile`, with section boundaries and, if given, the budget.
fn memory_chart(
    html: &mut String,
    plan: &Plan,
    profile: &[[u64; Category::ALL.len()]],
    budget: Option<u64>,
) {
    let height = 260.0;
    let top = 10.0;
    let n = profile.len().max(1);
    let peak = profile
        .iter()
        .map(|p| p.iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    let y_max = peak.max(budget.unwrap_or(0)).max(1) as f64 * 1.05;
    let x = |step: f64| MARGIN_LEFT + WIDTH * step / n as f64;
    let y = |bytes: f64| top + height * (1.0 - bytes / y_max);
    let _ = writeln!(
        html,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\">",
        MARGIN_LEFT + WIDTH + 20.0,
        top + height + 40.0
    );
    // Stacked areas: each category's band between the running sum before and after it.
    let mut below = vec![0u64; profile.len()];
    for (c, category) in Category::ALL.iter().enumerate() {
        if profile.iter().all(|p| p[c] == 0) {
            continue;
        }
        // The band's top edge left to right, then its bottom edge right to left.
        let top_edge: Vec<u64> = below.iter().zip(profile).map(|(b, p)| b + p[c]).collect();
        let mut corners = step_corners(&top_edge);
        let mut bottom = step_corners(&below);
        bottom.reverse();
        corners.extend(bottom);
        let mut points = String::new();
        for (step, bytes) in corners {
            let _ = write!(points, "{:.1},{:.1} ", x(step as f64), y(bytes as f64));
        }
        let _ = writeln!(
            html,
            "<polygon class=\"category\" points=\"{}\" fill=\"{}\"><title>{}</title></polygon>",
            points.trim_end(),
            CATEGORY_COLOURS[c],
            category.name()
        );
        for (b, p) in below.iter_mut().zip(profile) {
            *b += p[c];
        }
    }
    for section in &plan.sections {
        let sx = x(section.start as f64);
        let _ = writeln!(
            html,
            "<line x1=\"{sx:.1}\" y1=\"{top}\" x2=\"{sx:.1}\" y2=\"{:.1}\" stroke=\"#555\" stroke-dasharray=\"3,3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            top + height,
            sx + 3.0,
            top + height + 14.0,
            escape(&section.name)
        );
    }
    if let Some(budget) = budget {
        let by = y(budget as f64);
        let _ = writeln!(
            html,
            "<line x1=\"{MARGIN_LEFT}\" y1=\"{by:.1}\" x2=\"{:.1}\" y2=\"{by:.1}\" stroke=\"#d00\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#d00\">budget {}</text>",
            MARGIN_LEFT + WIDTH,
            MARGIN_LEFT + 4.0,
            by - 4.0,
            format_bytes(budget)
        );
    }
    let _ = writeln!(
        html,
        "<text x=\"4\" y=\"{:.1}\">{}</text><text x=\"4\" y=\"{:.1}\">0</text>\
         <text x=\"{:.1}\" y=\"{:.1}\">step →</text></svg>",
        y(peak as f64) + 4.0,
        format_bytes(peak),
        top + height,
        MARGIN_LEFT + WIDTH - 40.0,
        top + height + 30.0
    );
    legend(html, profile);
}

/// The corners of the step function `values` (value `values[s]` over `[s, s + 1]`), as
/// `(step, value)` points, keeping only where the value changes.
fn step_corners(values: &[u64]) -> Vec<(usize, u64)> {
    let mut corners = Vec::new();
    for (s, &v) in values.iter().enumerate() {
        if s == 0 || values[s - 1] != v {
            corners.push((s, v));
        }
        if s + 1 == values.len() || values[s + 1] != v {
            corners.push((s + 1, v));
        }
    }
    corners
}

fn legend(html: &mut String, profile: &[[u64; Category::ALL.len()]]) {
    html.push_str("<p>");
    for (c, category) in Category::ALL.iter().enumerate() {
        let most = profile.iter().map(|p| p[c]).max().unwrap_or(0);
        if most > 0 {
            let _ = write!(
                html,
                "<span class=\"swatch\" style=\"background:{}\"></span>{} (up to {}) &nbsp; ",
                CATEGORY_COLOURS[c],
                category.name(),
                format_bytes(most)
            );
        }
    }
    html.push_str("</p>\n");
}

/// One lane per stream; one rectangle per step of a micro-batch and of the optimizer, drawn
/// one after the other on a time axis.
fn timeline_chart(html: &mut String, plan: &Plan) {
    let lane = 28.0;
    let top = 10.0;
    let times = step_times(&plan.steps);
    let total = times.iter().map(|t| t.1).fold(0.0, f64::max).max(1e-12);
    let height = top + lane * plan.streams.len() as f64 + 30.0;
    let _ = writeln!(
        html,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\">",
        MARGIN_LEFT + WIDTH + 20.0
    );
    for (s, kind) in plan.streams.iter().enumerate() {
        let _ = writeln!(
            html,
            "<text x=\"4\" y=\"{:.1}\">{}</text>",
            top + lane * s as f64 + 17.0,
            stream_name(*kind)
        );
    }
    for (i, (step, (start, finish))) in plan.steps.iter().zip(&times).enumerate() {
        let x0 = MARGIN_LEFT + WIDTH * start / total;
        let w = (WIDTH * (finish - start) / total).max(0.5);
        let y0 = top + lane * step.stream as f64 + 3.0;
        let layer = step
            .node
            .layer
            .map(|l| format!(" L{l}"))
            .unwrap_or_default();
        let _ = writeln!(
            html,
            "<rect class=\"step\" x=\"{x0:.2}\" y=\"{y0:.1}\" width=\"{w:.2}\" height=\"{:.1}\" fill=\"{}\">\
             <title>step {i}{layer}: {} ({:.1} µs)</title></rect>",
            lane - 6.0,
            phase_colour(step),
            escape(&step.node.op.to_string()),
            (finish - start) * 1e6
        );
    }
    let _ = writeln!(
        html,
        "<text x=\"{MARGIN_LEFT}\" y=\"{:.1}\">0</text><text x=\"{:.1}\" y=\"{:.1}\">{:.2} ms</text></svg>",
        height - 8.0,
        MARGIN_LEFT + WIDTH - 50.0,
        height - 8.0,
        total * 1e3
    );
    html.push_str(
        "<p><span class=\"swatch\" style=\"background:#4e79a7\"></span>forward &nbsp; \
         <span class=\"swatch\" style=\"background:#f28e2b\"></span>backward &nbsp; \
         <span class=\"swatch\" style=\"background:#59a14f\"></span>optimizer &nbsp; \
         (hover a step for its op and estimated time)</p>\n",
    );
}

fn stream_name(kind: StreamKind) -> &'static str {
    match kind {
        StreamKind::Compute => "compute",
        StreamKind::HostToDevice => "host → device",
        StreamKind::DeviceToHost => "device → host",
        StreamKind::Collective => "collective",
    }
}

fn phase_colour(step: &Step) -> &'static str {
    match step.node.phase {
        Phase::Forward => "#4e79a7",
        Phase::Eval => "#76b7b2",
        Phase::Backward => "#f28e2b",
        Phase::Optimizer => "#59a14f",
        Phase::WeightQuant => "#b07aa1",
    }
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
