//! The memory planner: decides which training state lives on the host and streams through the
//! device, and per block whether saved activations are kept, recomputed or offloaded, so
//! that the plan fits the budget (less `RESERVE_BYTES`) with the shortest estimated step time.
//!
//! The search is small because the choices are ordered:
//! - state, cheapest first: everything on the device; master weights on the host; and the
//!   Adam moments; and the gradients; and the weights (streamed per block). Each level moves
//!   a class whose traffic the step hides worse than the one before;
//! - activations, one ladder per mechanism: offload the first `k` blocks (their transfers have
//!   the longest to hide), recompute the first `k`, or recompute all and offload the first `k`
//!   blocks' checkpoints. Peak memory falls as `k` grows, so a binary search finds the
//!   smallest `k` that fits.
//!
//! Each candidate is applied by the memory passes (`recompute`, `offload-activations`,
//! `stream-state`) and lowered: the peak and the step time are the plan's own. The fastest
//! candidate that fits wins; the search stops at the first state level that fits with no
//! activation measure, since moving more state only adds transfers. The decisions are then
//! priced one by one (the plan without each) for `llmqc show`.

use crate::offload_activations::OffloadActivations;
use crate::recompute::Recompute;
use crate::stream_state::StreamState;
use llmq_compiler::ir::{Graph, Role};
use llmq_compiler::pass::{Pass, PassContext, PassError, PassReport, run_passes};
use llmq_compiler::plan::{MemoryDecision, Plan};
use llmq_compiler::target::{DeviceProfile, RESERVE_BYTES};

/// The names of the memory passes, for `--dump-after`.
pub const MEMORY_PASSES: [&str; 3] = ["recompute", "offload-activations", "stream-state"];

/// State classes moved to the host, level by level.
const STATE_LEVELS: [&[Role]; 5] = [
    &[],
    &[Role::MasterWeight],
    &[Role::MasterWeight, Role::AdamM, Role::AdamV],
    &[Role::MasterWeight, Role::AdamM, Role::AdamV, Role::Gradient],
    &[
        Role::MasterWeight,
        Role::AdamM,
        Role::AdamV,
        Role::Gradient,
        Role::Weight,
    ],
];

/// The ways of relieving activations, each a ladder over the number of blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ladder {
    /// Offload the saved tensors of the first `k` blocks.
    Offload,
    /// Recompute the first `k` blocks.
    Recompute,
    /// Recompute every block and offload the checkpoints of the first `k`.
    RecomputeAndOffload,
}

/// One point of the search space: the memory passes' settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryChoice {
    /// State roles living on the host.
    pub streamed: Vec<Role>,
    /// Blocks recomputed in backward.
    pub recompute: Vec<u32>,
    /// Blocks whose saved tensors are offloaded.
    pub offload: Vec<u32>,
}

impl MemoryChoice {
    fn new(state: &[Role], ladder: Ladder, k: u32, blocks: u32) -> Self {
        let first = |n: u32| (0..n.min(blocks)).collect::<Vec<u32>>();
        let (recompute, offload) = match ladder {
            Ladder::Offload => (Vec::new(), first(k)),
            Ladder::Recompute => (first(k), Vec::new()),
            Ladder::RecomputeAndOffload => (first(blocks), first(k)),
        };
        MemoryChoice {
            streamed: state.to_vec(),
            recompute,
            offload,
        }
    }

    /// Applies the choice to `graph` through the pass manager (verified after each pass).
    pub fn apply(
        &self,
        graph: &mut Graph,
        ctx: &PassContext,
        device: &DeviceProfile,
        dump_after: Option<&str>,
    ) -> Result<PassReport, PassError> {
        let recompute = Recompute {
            blocks: self.recompute.clone(),
        };
        let offload = OffloadActivations {
            blocks: self.offload.clone(),
            device: device.clone(),
        };
        let stream = StreamState {
            roles: self.streamed.clone(),
            device: device.clone(),
        };
        let passes: [&dyn Pass; 3] = [&recompute, &offload, &stream];
        run_passes(graph, &passes, ctx, dump_after)
    }
}

/// What the planner settled on.
pub struct MemoryPlan {
    /// The choice.
    pub choice: MemoryChoice,
    /// The graph after the memory passes.
    pub graph: Graph,
    /// Its plan, with the priced decisions in `memory`.
    pub plan: Plan,
    /// Timings (and the requested dump) of the memory passes.
    pub report: PassReport,
}

/// Plans memory for `graph` within `ctx.vram_bytes`, lowering candidates with `lower`.
/// Returns the fastest plan that fits, or the one that needs the least memory when none does.
pub fn plan_memory(
    graph: &Graph,
    ctx: &PassContext,
    device: &DeviceProfile,
    dump_after: Option<&str>,
    lower: &dyn Fn(&Graph) -> Plan,
) -> Result<MemoryPlan, PassError> {
    let blocks = graph
        .nodes()
        .filter_map(|(_, n)| n.layer)
        .max()
        .map_or(0, |l| l + 1);
    let evaluate = |choice: &MemoryChoice| -> Result<Plan, PassError> {
        let mut g = graph.clone();
        choice.apply(&mut g, ctx, device, None)?;
        Ok(lower(&g))
    };
    let fits = |plan: &Plan| plan.device_arena_bytes + RESERVE_BYTES <= ctx.vram_bytes;

    let mut best: Option<(MemoryChoice, Plan)> = None;
    let mut smallest: Option<(MemoryChoice, Plan)> = None;
    'levels: for state in STATE_LEVELS {
        // The most relieved point of this level first: when even it does not fit, skip.
        let most = MemoryChoice::new(state, Ladder::RecomputeAndOffload, blocks, blocks);
        let plan = evaluate(&most)?;
        if !fits(&plan) {
            let smaller = smallest
                .as_ref()
                .is_none_or(|(_, p)| plan.device_arena_bytes < p.device_arena_bytes);
            if smaller {
                smallest = Some((most, plan));
            }
            continue;
        }
        for ladder in [Ladder::Offload, Ladder::Recompute, Ladder::RecomputeAndOffload] {
            let at = |k| MemoryChoice::new(state, ladder, k, blocks);
            let Some((k, plan)) = smallest_fitting(blocks, &|k| evaluate(&at(k)), &fits)? else {
                continue;
            };
            let faster = best.as_ref().is_none_or(|(_, b)| {
                plan.estimates.step_seconds < b.estimates.step_seconds
            });
            if faster {
                best = Some((at(k), plan));
            }
            if k == 0 && ladder != Ladder::RecomputeAndOffload {
                break 'levels;
            }
        }
    }
    let (choice, _) = best
        .or(smallest)
        .expect("the search evaluates at least one candidate");
    let mut planned = graph.clone();
    let report = choice.apply(&mut planned, ctx, device, dump_after)?;
    let mut plan = lower(&planned);
    plan.memory = price_decisions(&choice, &plan, &evaluate)?;
    Ok(MemoryPlan {
        choice,
        graph: planned,
        plan,
        report,
    })
}

/// The smallest `k` in `0..=blocks` whose plan fits, with that plan, by binary search (peak
/// memory falls as `k` grows); `None` when even `blocks` does not fit.
fn smallest_fitting(
    blocks: u32,
    evaluate: &dyn Fn(u32) -> Result<Plan, PassError>,
    fits: &dyn Fn(&Plan) -> bool,
) -> Result<Option<(u32, Plan)>, PassError> {
    let top = evaluate(blocks)?;
    if !fits(&top) {
        return Ok(None);
    }
    let (mut lo, mut hi, mut found) = (0, blocks, top);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let plan = evaluate(mid)?;
        if fits(&plan) {
            (hi, found) = (mid, plan);
        } else {
            lo = mid + 1;
        }
    }
    Ok(Some((hi, found)))
}

/// Each decision of `choice` with what it saves and costs: the plan without it, against
/// `plan`.
fn price_decisions(
    choice: &MemoryChoice,
    plan: &Plan,
    evaluate: &dyn Fn(&MemoryChoice) -> Result<Plan, PassError>,
) -> Result<Vec<MemoryDecision>, PassError> {
    let mut decisions = Vec::new();
    let mut price = |class: &str, blocks: String, action: &str, without: MemoryChoice| {
        evaluate(&without).map(|other| {
            decisions.push(MemoryDecision {
                class: class.into(),
                blocks,
                action: action.into(),
                bytes_saved: other.device_arena_bytes as i64 - plan.device_arena_bytes as i64,
                seconds_added: plan.estimates.step_seconds - other.estimates.step_seconds,
            })
        })
    };
    for &role in &choice.streamed {
        let mut without = choice.clone();
        without.streamed.retain(|&r| r != role);
        let action = if role == Role::Weight {
            "stream from host, per block"
        } else {
            "on host, streamed through"
        };
        price(role.category().name(), "all".into(), action, without)?;
    }
    if !choice.recompute.is_empty() {
        let without = MemoryChoice {
            recompute: Vec::new(),
            ..choice.clone()
        };
        let action = "recompute in backward";
        price("activations", block_range(&choice.recompute), action, without)?;
    }
    if !choice.offload.is_empty() {
        let without = MemoryChoice {
            offload: Vec::new(),
            ..choice.clone()
        };
        let action = if choice.recompute.is_empty() {
            "offload saved to host"
        } else {
            "offload checkpoints to host"
        };
        price("activations", block_range(&choice.offload), action, without)?;
    }
    Ok(decisions)
}

/// `L0-L13` for the blocks `0..=13` (the ladders always choose a prefix).
fn block_range(blocks: &[u32]) -> String {
    match (blocks.first(), blocks.last()) {
        (Some(a), Some(b)) if a == b => format!("L{a}"),
        (Some(a), Some(b)) => format!("L{a}-L{b}"),
        _ => String::new(),
    }
}
