//! The readable text form of a graph, used by snapshot tests and `llmqc plan --dump-after`.
//!
//! ```text
//! t0 input tokens: i32[2,8]
//! t40 saved host.layers.0.h: bf16[2,8,64] @host
//! t76 weight layers.0.w_gate+w_up: bf16[256,64] part=layers.0.w_gate[0..128] part=layers.0.w_up[128..256]
//! op3 fwd L0 rms_norm{eps=1e-6}(t2, t5) -> t6, t7
//! ```

use super::Graph;
use std::fmt::Write;

/// Writes every tensor, then every node in topological order, one per line.
pub fn write_graph(graph: &Graph) -> String {
    let mut out = String::new();
    for (id, t) in graph.tensors() {
        let _ = write!(out, "{id} {} {}: {}", t.role.name(), t.name, t.ty);
        if graph.is_on_host(id) {
            out.push_str(" @host");
        }
        if let Some(hf) = &t.hf_name {
            let _ = write!(out, " hf={hf}");
        }
        for p in &t.parts {
            let _ = write!(out, " part={}[{}..{}]", p.name, p.start, p.end);
        }
        out.push('\n');
    }
    for id in graph.topological_order() {
        let node = graph.node(id);
        let _ = write!(out, "{id} {}", node.phase.name());
        if let Some(l) = node.layer {
            let _ = write!(out, " L{l}");
        }
        let ins: Vec<String> = node.inputs.iter().map(|t| t.to_string()).collect();
        let outs: Vec<String> = node
            .outputs
            .iter()
            .zip(&node.accumulate)
            .map(|(t, &acc)| if acc { format!("+={t}") } else { t.to_string() })
            .collect();
        let _ = writeln!(
            out,
            " {}({}) -> {}",
            node.op,
            ins.join(", "),
            outs.join(", ")
        );
    }
    out
}
