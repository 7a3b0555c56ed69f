//! The memory planner: decides which training state lives on the host and streams through the
//! device, and per block whether saved activations are kept, recomputed or offloaded, so
//! that the plan fits the budget (less `RESERVE_BYTES`) with the shortest estimated step time.
//!
//! The search is small because the choices are ordered:
//! - state, cheapest first: everything on the device; and master weights on the host; and the
//!   Adam moments; and the gradients; and the weights (streamed per block). Each level moves a
//!   class whose traffic the step hides worse than the one before;
//! - activations, one ladder per mechanism: offload the first `k` blocks (their transfers have
//!   the longest to hide), recompute the first `k`, or recompute all and offload the first `k`
//!   blocks' checkpoints. Peak memory falls as `k` grows, so a binary search finds the
//!   smallest `k` that fits.
//!
//! The LM head is always fused with the loss and chunked (`chunk-lm-head`): the fused op makes
//! the logits once per chunk (three matmuls, as the unfused head's four would not) and holds
//! one chunk's logits, so it is never slower and always smaller; the planner only sets the
//! chunk size.
//!
//! Each candidate is the memory passes' (`chunk-lm-head`, `recompute`,
//! `offload-activations`, `stream-state`) edits of the schedule, estimated as lowering would
//! (`lower::estimate_program`): the peak and the step time are its plan's own. The fastest
//! candidate that fits wins; the search stops at the first state level that fits with no
//! activation measure, since moving more state only adds transfers. The search runs once per
//! release of device → host copies' sources (`Release::CHOICES`, on threads: the longer a
//! source may be held, the fewer stalls of the compute stream behind the copies' queue, and
//! the more memory), and the fastest of their choices that fits wins. What memory it leaves
//! goes to the first blocks of one streamed class, kept on the device (with more activations
//! relieved where that makes room: a block of optimizer state streamed costs more than a block
//! recomputed). The decisions are then priced one by one (the plan without each) for
//! `llmqc show`.

use crate::chunk_lm_head::ChunkLmHead;
use crate::memory_edit::{edit_program, program};
use crate::offload_activations::OffloadActivations;
use crate::persist_weight_quants::{PersistWeightQuants, quantises_weights};
use crate::recompute::Recompute;
use crate::stream_state::{KeptBlocks, StreamState};
use indexmap::IndexMap;
use llmq_compiler::ir::{Graph, Node, Role};
use llmq_compiler::lower::{Release, estimate_program};
use llmq_compiler::pass::{Pass, PassContext, PassError, PassReport, run_passes};
use llmq_compiler::plan::{MemoryDecision, Plan, PlanOptions};
use llmq_compiler::target::{DeviceProfile, RESERVE_BYTES};
use std::sync::Mutex;
use std::thread;

/// The names of the memory passes, for `--dump-after`.
pub const MEMORY_PASSES: [&str; 5] = [
    "persist-weight-quants",
    "chunk-lm-head",
    "recompute",
    "offload-activations",
    "stream-state",
];

/// The search aims at the budget less 1/this of it, for the allocator's fragmentation.
pub const FRAGMENTATION_MARGIN: u64 = 50;

/// Estimates a candidate (memoised, callable from several threads).
type Evaluate<'a> = dyn Fn(&MemoryChoice) -> Result<Candidate, PassError> + Sync + 'a;

/// Lowers the chosen graph, or a program over its tensors, releasing copies' sources as the
/// choice says.
type Lower<'a> = dyn Fn(&Graph, Option<Vec<Node>>, Release) -> Plan + 'a;

/// What the search needs of a candidate's plan.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    /// The device arena (estimated by the live-bytes peak).
    arena_bytes: u64,
    /// Estimated seconds per optimizer step.
    step_seconds: f64,
}

/// The search runs the fused LM head and loss in this many chunks, of at most
/// `MAX_LM_HEAD_CHUNK_ROWS` tokens each (smaller chunks save memory; each chunk's three matmuls
/// cost a fixed `MATMUL_CALL_SECONDS` each, so the head is widened afterwards where it fits).
const LM_HEAD_CHUNKS: u64 = 4;
const MAX_LM_HEAD_CHUNK_ROWS: u64 = 1024;
/// The chunk the head is widened to after the search, where the plan still fits: each chunk's
/// data-gradient matmul has only `chunk × hidden` outputs (summed over the whole vocabulary),
/// too few tiles to fill the GPU at 1024 rows. Measured, not in the cost model: Qwen2.5-0.5B,
/// 64 × 1024 FP8, H200, 2026-12-03: the head took 106.1 ms at 1024 rows, 98.9 ms at 4096.
const WIDE_LM_HEAD_CHUNK_ROWS: u64 = 4096;

/// What the choices are made over: the model's blocks and the LM head's chunk size.
struct Shape {
    blocks: u32,
    /// Tokens per micro-batch.
    tokens: u64,
    chunk_rows: u64,
    /// FP8 weight copies made in each of several micro-batches: making them once per step
    /// may pay.
    repeated_weight_quants: bool,
    /// The classes of [`STATE`] the graph has (no master weights where AdamW updates the
    /// weights in place), in [`STATE`]'s order.
    state: Vec<Role>,
}

/// One level of the search: the state classes moved to the host.
struct Level {
    streamed: Vec<Role>,
}

/// The state classes the planner may move to the host.
const STATE: [Role; 5] = [
    Role::MasterWeight,
    Role::AdamM,
    Role::AdamV,
    Role::Gradient,
    Role::Weight,
];

/// The levels, cheapest first: everything on the device; then the state classes added one at
/// a time, in the order of the time each adds per byte it saves when moved alone (what hides
/// behind compute depends on the model and the device: weights stream for free on a fast card
/// with a slow step, the optimizer's state never hides).
fn levels(evaluate: &Evaluate<'_>, shape: &Shape) -> Result<Vec<Level>, PassError> {
    let alone = |streamed: Vec<Role>| MemoryChoice {
        streamed,
        kept: None,
        recompute: Vec::new(),
        offload: Vec::new(),
        lm_head_chunk: Some(shape.chunk_rows),
        persist_weight_quants: false,
        release: Release::default(),
    };
    let alone_or_none = std::iter::once(Vec::new()).chain(shape.state.iter().map(|&r| vec![r]));
    let results = on_threads(alone_or_none, |streamed| evaluate(&alone(streamed)));
    let mut results = results.into_iter();
    let base = results.next().expect("the base was evaluated")?;
    let mut price: Vec<(f64, Role)> = Vec::with_capacity(shape.state.len());
    for (&role, moved) in shape.state.iter().zip(results) {
        let moved = moved?;
        let saved = base.arena_bytes.saturating_sub(moved.arena_bytes).max(1) as f64;
        price.push(((moved.step_seconds - base.step_seconds) / saved, role));
    }
    price.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok((0..=price.len())
        .map(|i| Level {
            streamed: price[..i].iter().map(|&(_, r)| r).collect(),
        })
        .collect())
}

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
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemoryChoice {
    /// State roles living on the host.
    pub streamed: Vec<Role>,
    /// Of one streamed role, the first blocks' tensors left on the device: the memory that no
    /// whole class fits in, used.
    pub kept: Option<KeptBlocks>,
    /// Blocks recomputed in backward.
    pub recompute: Vec<u32>,
    /// Blocks whose saved tensors are offloaded.
    pub offload: Vec<u32>,
    /// Fuse the LM head with the loss and run it this many tokens at a time (the planner
    /// always does; `None`, the unfused head, is for tests that compare the two).
    pub lm_head_chunk: Option<u64>,
    /// Make the weights' FP8 copies once per optimizer step and keep them across the step's
    /// micro-batches (`persist-weight-quants`), instead of once per micro-batch.
    pub persist_weight_quants: bool,
    /// When device → host copies' sources are released (held longer, less waiting).
    pub release: Release,
}

impl MemoryChoice {
    fn new(level: &Level, ladder: Ladder, k: u32, shape: &Shape) -> Self {
        MemoryChoice {
            streamed: level.streamed.clone(),
            lm_head_chunk: Some(shape.chunk_rows),
            ..MemoryChoice::default()
        }
        .on_rung(ladder, k, shape.blocks)
    }

    /// The choice with its activations relieved as rung `k` of `ladder` says.
    fn on_rung(&self, ladder: Ladder, k: u32, blocks: u32) -> Self {
        let first = |n: u32| (0..n.min(blocks)).collect::<Vec<u32>>();
        let (recompute, offload) = match ladder {
            Ladder::Offload => (Vec::new(), first(k)),
            Ladder::Recompute => (first(k), Vec::new()),
            Ladder::RecomputeAndOffload => (first(blocks), first(k)),
        };
        MemoryChoice {
            recompute,
            offload,
            ..self.clone()
        }
    }

    /// The ladder whose rung the choice is on, if it relieves activations at all.
    fn ladder(&self, blocks: u32) -> Option<Ladder> {
        match (self.recompute.len() as u32, self.offload.is_empty()) {
            (0, true) => None,
            (r, false) if r == blocks => Some(Ladder::RecomputeAndOffload),
            (_, false) => Some(Ladder::Offload),
            (_, true) => Some(Ladder::Recompute),
        }
    }

    /// The choice in one line: `on host: master, adam m; recompute L0-L9` (the LM head, which
    /// the planner always fuses and chunks, is not named).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.persist_weight_quants {
            parts.push("FP8 weights made once per step".to_string());
        }
        if !self.streamed.is_empty() {
            let classes: Vec<String> = self
                .streamed
                .iter()
                .map(|&role| match self.kept.filter(|k| k.role == role) {
                    Some(k) => format!("{} ({} kept)", role.category().name(), first_blocks(k)),
                    None => role.category().name().to_string(),
                })
                .collect();
            parts.push(format!("on host: {}", classes.join(", ")));
        }
        if !self.recompute.is_empty() {
            parts.push(format!("recompute {}", block_range(&self.recompute)));
        }
        if !self.offload.is_empty() {
            parts.push(format!("offload {}", block_range(&self.offload)));
        }
        if self.release != Release::default() {
            parts.push(format!("copies {}", self.release.describe()));
        }
        if parts.is_empty() {
            "everything on the device".into()
        } else {
            parts.join("; ")
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
        let (chunk, recompute, offload, stream) = self.passes(device);
        let mut passes: Vec<&dyn Pass> = Vec::new();
        if self.persist_weight_quants {
            passes.push(&PersistWeightQuants);
        }
        if let Some(chunk) = &chunk {
            passes.push(chunk);
        }
        passes.extend([&recompute as &dyn Pass, &offload, &stream]);
        run_passes(graph, &passes, ctx, dump_after)
    }

    /// The memory passes' edits of `program` chained, without a graph built between them or
    /// the pass manager's verification: for the search's candidates, of which only the chosen
    /// one is kept (and applied with [`Self::apply`]). New tensors go to `graph`.
    fn edit(
        &self,
        graph: &mut Graph,
        mut program: Vec<Node>,
        device: &DeviceProfile,
    ) -> Result<Vec<Node>, PassError> {
        let (chunk, recompute, offload, stream) = self.passes(device);
        if self.persist_weight_quants {
            program = edit_program(program, |edit| {
                PersistWeightQuants.edit(graph, edit);
                Ok(())
            })?;
        }
        if let Some(chunk) = chunk {
            program = edit_program(program, |edit| chunk.edit(graph, edit))?;
        }
        if !self.recompute.is_empty() {
            program = edit_program(program, |edit| {
                recompute.edit(graph, edit);
                Ok(())
            })?;
        }
        if !self.offload.is_empty() {
            program = edit_program(program, |edit| {
                offload.edit(graph, edit);
                Ok(())
            })?;
        }
        edit_program(program, |edit| stream.edit(graph, edit))
    }

    fn passes(
        &self,
        device: &DeviceProfile,
    ) -> (
        Option<ChunkLmHead>,
        Recompute,
        OffloadActivations,
        StreamState,
    ) {
        (
            self.lm_head_chunk
                .map(|chunk_rows| ChunkLmHead { chunk_rows }),
            Recompute {
                blocks: self.recompute.clone(),
            },
            OffloadActivations {
                blocks: self.offload.clone(),
                device: device.clone(),
            },
            StreamState {
                roles: self.streamed.clone(),
                kept: self.kept,
                device: device.clone(),
            },
        )
    }
}

/// What the planner settled on.
pub struct MemoryPlan {
    /// The choice.
    pub choice: MemoryChoice,
    /// Its plan, with the priced decisions in `memory`.
    pub plan: Plan,
    /// Timings (and the requested dump) of the memory passes.
    pub report: PassReport,
}

/// The memory planner's candidates for one graph, each estimated once (memoised, from several
/// threads): they recur within a search (the bottom of two ladders, the decisions' prices) and
/// across the budgets of a trade-off curve, since an estimate does not depend on the budget.
pub struct Candidates<'g> {
    graph: &'g Graph,
    /// The graph's program: every candidate edits a copy of it.
    program: Vec<Node>,
    shape: Shape,
    device: DeviceProfile,
    options: PlanOptions,
    seen: Mutex<IndexMap<MemoryChoice, Candidate>>,
}

impl<'g> Candidates<'g> {
    /// Candidates for `graph` (the training graph after the optimisation passes), estimated
    /// for `device` and `options` (whose budget plays no part).
    pub fn new(graph: &'g Graph, device: &DeviceProfile, options: &PlanOptions) -> Self {
        let blocks = graph
            .nodes()
            .filter_map(|(_, n)| n.layer)
            .max()
            .map_or(0, |l| l + 1);
        let tokens = graph
            .find("tokens")
            .map_or(1, |t| graph.tensor(t).ty.numel());
        let program = program(graph);
        Candidates {
            graph,
            shape: Shape {
                blocks,
                tokens,
                chunk_rows: (tokens / LM_HEAD_CHUNKS).clamp(1, MAX_LM_HEAD_CHUNK_ROWS),
                repeated_weight_quants: options.grad_accum > 1
                    && quantises_weights(graph, &program),
                state: STATE
                    .into_iter()
                    .filter(|&role| graph.tensors().any(|(_, t)| t.role == role))
                    .collect(),
            },
            program,
            device: device.clone(),
            options: options.clone(),
            seen: Mutex::default(),
        }
    }

    /// How many different candidates have been estimated: the planner's work, which grows
    /// with the search and not with the number of blocks.
    pub fn estimated(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IndexMap<MemoryChoice, Candidate>> {
        self.seen.lock().expect("no panic holds the lock")
    }

    /// The candidate's estimate: its passes' edits of the program, without a graph built of
    /// it or a layout (the arena taken to be the live-bytes peak).
    fn evaluate(&self, choice: &MemoryChoice) -> Result<Candidate, PassError> {
        if let Some(&c) = self.lock().get(choice) {
            return Ok(c);
        }
        let mut graph = self.graph.tensors_only();
        let edited = choice.edit(&mut graph, self.program.clone(), &self.device)?;
        let estimates =
            estimate_program(&graph, edited, &self.device, &self.options, choice.release);
        let c = Candidate {
            arena_bytes: estimates.peak_live_bytes,
            step_seconds: estimates.step_seconds,
        };
        self.lock().insert(choice.clone(), c);
        Ok(c)
    }
}

/// Plans memory for the graph of `candidates` within `ctx.vram_bytes`, lowering the chosen
/// choice with `lower` (the graph's own nodes, or a program over its tensors). Returns the
/// fastest plan that fits, or the one that needs the least memory when none does. With
/// `price`, the plan is the one compiled: its graph is built through the pass manager
/// (verified, dumpable) and its `memory` lists the decisions priced one by one. Without (the
/// trade-off curve and `--batch auto`, which compare plans and keep only the choice), the
/// chosen program is lowered as it is, and `memory` stays empty.
pub fn plan_memory(
    candidates: &Candidates<'_>,
    ctx: &PassContext,
    dump_after: Option<&str>,
    lower: &Lower<'_>,
    price: bool,
) -> Result<MemoryPlan, PassError> {
    let (graph, device, shape) = (candidates.graph, &candidates.device, &candidates.shape);
    let evaluate = |choice: &MemoryChoice| candidates.evaluate(choice);
    let limit = ctx.vram_bytes.saturating_sub(RESERVE_BYTES);
    // Candidates are judged by their live-bytes peak; the final layout needs a little more
    // (fragmentation, about 1.5% on the Qwen models), so the search leaves that margin. When
    // the layout still does not fit, search again with the excess taken off.
    let mut search_limit = limit - limit / FRAGMENTATION_MARGIN;
    let mut attempts = 0;
    loop {
        let choice = search_releases(graph, shape, search_limit, &evaluate)?;
        let release = choice.release;
        let (mut plan, report) = if price {
            let mut planned = graph.clone();
            let report = choice.apply(&mut planned, ctx, device, dump_after)?;
            (lower(&planned, None, release), report)
        } else {
            let mut planned = graph.tensors_only();
            let program = choice.edit(&mut planned, candidates.program.clone(), device)?;
            (
                lower(&planned, Some(program), release),
                PassReport::default(),
            )
        };
        attempts += 1;
        let fragmentation = plan.device_arena_bytes - plan.estimates.peak_live_bytes;
        let next_limit = limit
            .saturating_sub(fragmentation)
            .min(search_limit.saturating_sub(1));
        if plan.device_arena_bytes <= limit || attempts == 3 || next_limit == 0 {
            if price {
                plan.memory = price_decisions(&choice, shape, &plan, &evaluate)?;
            }
            return Ok(MemoryPlan {
                choice,
                plan,
                report,
            });
        }
        search_limit = next_limit;
    }
}

/// [`search`] once per release of copies' sources (`Release::CHOICES`), on threads: the
/// fastest of the choices that fit, with the memory it leaves used for blocks of state
/// (`keep_blocks_if_faster`) or for a state class brought back (`unstream_state`), or else
/// the one needing the least memory.
fn search_releases(
    graph: &Graph,
    shape: &Shape,
    limit: u64,
    evaluate: &Evaluate<'_>,
) -> Result<MemoryChoice, PassError> {
    let found = on_threads(Release::CHOICES, |release| {
        let with = |c: &MemoryChoice| MemoryChoice {
            release,
            ..c.clone()
        };
        let choice = with(&search(graph, shape, limit, &|c| evaluate(&with(c)))?);
        let candidate = evaluate(&choice)?;
        Ok((choice, candidate))
    });
    let found = found.into_iter().collect::<Result<Vec<_>, PassError>>()?;
    // In `CHOICES` order, so that a tie goes to the release with the fewest stalls.
    let fitting = found.iter().filter(|(_, c)| c.arena_bytes <= limit);
    let fastest = fitting.min_by(|a, b| a.1.step_seconds.total_cmp(&b.1.step_seconds));
    let least = || found.iter().min_by_key(|(_, c)| c.arena_bytes);
    let (choice, candidate) = fastest.or_else(least).expect("CHOICES is not empty");
    if candidate.arena_bytes > limit {
        return Ok(choice.clone());
    }
    // The choice with blocks of a streamed class kept, and the one with a class brought back
    // whole (more activations relieved), blocks of another kept: whichever is faster.
    let kept = keep_blocks_if_faster(choice.clone(), graph, shape, limit, evaluate)?;
    let back = unstream_state((choice.clone(), *candidate), shape, limit, evaluate)?;
    if back == *choice {
        return Ok(kept);
    }
    let back = keep_blocks_if_faster(back, graph, shape, limit, evaluate)?;
    let seconds = |c: &MemoryChoice| evaluate(c).map(|c| c.step_seconds);
    Ok(if seconds(&back)? < seconds(&kept)? {
        back
    } else {
        kept
    })
}

/// The fastest choice whose estimated arena is at most `limit`, or the one needing the least
/// memory when none is.
fn search(
    graph: &Graph,
    shape: &Shape,
    limit: u64,
    evaluate: &Evaluate<'_>,
) -> Result<MemoryChoice, PassError> {
    let blocks = shape.blocks;
    let mut best: Option<(MemoryChoice, Candidate)> = None;
    let mut smallest: Option<(MemoryChoice, Candidate)> = None;
    let levels = levels(evaluate, shape)?;
    'levels: for level in &levels {
        // State left on the device is there for the whole step: when it alone exceeds the
        // budget, the level cannot fit.
        let resident: u64 = graph
            .tensors()
            .filter(|(_, t)| t.role.is_persistent() && !level.streamed.contains(&t.role))
            .map(|(_, t)| t.ty.bytes())
            .sum();
        if resident > limit {
            continue;
        }
        // The most relieved point of this level next: when even it does not fit, skip. That
        // is every block offloaded: recomputing holds a block's recomputed tensors at once,
        // offloading brings each back just before its reader.
        let most = MemoryChoice::new(level, Ladder::Offload, blocks, shape);
        let plan = evaluate(&most)?;
        if plan.arena_bytes > limit {
            let smaller = smallest
                .as_ref()
                .is_none_or(|(_, p)| plan.arena_bytes < p.arena_bytes);
            if smaller {
                smallest = Some((most, plan));
            }
            continue;
        }
        // The three ladders are independent: search them on threads, then compare in order.
        let ladders = [
            Ladder::Offload,
            Ladder::Recompute,
            Ladder::RecomputeAndOffload,
        ];
        let at = |ladder, k| MemoryChoice::new(level, ladder, k, shape);
        let found = on_threads(ladders, |ladder| {
            smallest_fitting(blocks, limit, &|k| evaluate(&at(ladder, k)))
        });
        let mut recompute_alone_fits = false;
        for (&ladder, result) in ladders.iter().zip(found) {
            // Recomputing every block and offloading some costs more than recomputing some
            // blocks, so that ladder counts only when recomputing alone does not fit.
            if ladder == Ladder::RecomputeAndOffload && recompute_alone_fits {
                continue;
            }
            let Some((k, plan)) = result? else {
                continue;
            };
            recompute_alone_fits |= ladder == Ladder::Recompute;
            let faster = best
                .as_ref()
                .is_none_or(|(_, b)| plan.step_seconds < b.step_seconds);
            if faster {
                best = Some((at(ladder, k), plan));
            }
            if k == 0 && ladder != Ladder::RecomputeAndOffload {
                break 'levels;
            }
        }
    }
    if let Some(found) = best {
        let mut found = swap_state(found, &shape.state, limit, evaluate)?;
        if shape.repeated_weight_quants {
            found = persist_weight_quants_if_faster(found, limit, evaluate)?;
        }
        return widen_lm_head_chunk_if_it_fits(found, shape, limit, evaluate);
    }
    // Nothing fits: the choice that needs the least memory, so the plan says by how much.
    let least = || {
        let last = &levels[levels.len() - 1];
        MemoryChoice::new(last, Ladder::Offload, blocks, shape)
    };
    Ok(best.or(smallest).map_or_else(least, |(choice, _)| choice))
}

/// Brings one streamed state class back to the device where relieving more activations (on
/// the choice's ladder, recompute where it has none) makes room for it, when that is faster:
/// the levels relieve as few blocks as fit beside the classes a level leaves on the device, so
/// one class fewer on the host with more blocks relieved is tried only here. A class whose
/// return does not fit even at the ladder's top costs one evaluation.
fn unstream_state(
    found: (MemoryChoice, Candidate),
    shape: &Shape,
    limit: u64,
    evaluate: &Evaluate<'_>,
) -> Result<MemoryChoice, PassError> {
    let (mut choice, mut candidate) = found;
    let blocks = shape.blocks;
    let ladder = choice.ladder(blocks).unwrap_or(Ladder::Recompute);
    for role in choice.streamed.clone() {
        let mut back = choice.clone();
        back.streamed.retain(|&r| r != role);
        let at = |k| back.on_rung(ladder, k, blocks);
        let Some((k, c)) = smallest_fitting(blocks, limit, &|k| evaluate(&at(k)))? else {
            continue;
        };
        if c.step_seconds < candidate.step_seconds {
            (choice, candidate) = (at(k), c);
        }
    }
    Ok(choice)
}

/// Improves a choice by exchanging one state class on the host for one on the device, keeping
/// its activation decisions, while that fits and is faster: the levels add classes in one
/// order, and the best set for a budget is not always a prefix of it.
fn swap_state(
    found: (MemoryChoice, Candidate),
    state: &[Role],
    limit: u64,
    evaluate: &Evaluate<'_>,
) -> Result<MemoryChoice, PassError> {
    let (mut choice, mut candidate) = found;
    loop {
        let mut swaps = Vec::new();
        for &out in &choice.streamed {
            for &into in state.iter().filter(|r| !choice.streamed.contains(r)) {
                let mut swapped = choice.clone();
                swapped.streamed.retain(|&r| r != out);
                swapped.streamed.push(into);
                swaps.push(swapped);
            }
        }
        let results = on_threads(&swaps, evaluate);
        let mut improved = false;
        for (swapped, result) in swaps.into_iter().zip(results) {
            let c = result?;
            if c.arena_bytes <= limit && c.step_seconds < candidate.step_seconds {
                (choice, candidate, improved) = (swapped, c, true);
            }
        }
        if !improved {
            return Ok(choice);
        }
    }
}

/// Leaves the first blocks' tensors of one streamed class on the device, as many as fit, when
/// that is faster: the levels move whole classes, and the memory a whole class does not fit in
/// would stay unused. Keeping a block of optimizer state saves more time than relieving a
/// block's activations costs, so the blocks are kept with the activations at their ladder's
/// most relieved rung, which is then lowered as far as still fits. The class is the one whose
/// first block, kept, saves the most time per byte; the blocks' tensors are alike, so their
/// count is all that matters, and the arena grows with it.
fn keep_blocks_if_faster(
    choice: MemoryChoice,
    graph: &Graph,
    shape: &Shape,
    limit: u64,
    evaluate: &Evaluate<'_>,
) -> Result<MemoryChoice, PassError> {
    let blocks = shape.blocks;
    let ladder = choice.ladder(blocks);
    let relieved = ladder.map_or_else(|| choice.clone(), |l| choice.on_rung(l, blocks, blocks));
    let at_relieved = evaluate(&relieved)?;
    let free = limit.saturating_sub(at_relieved.arena_bytes);
    // Each streamed class with the bytes of its first block, where that block fits.
    let first_block = |role: Role| KeptBlocks { role, blocks: 1 };
    let classes: Vec<(Role, u64)> = (choice.streamed.iter().copied())
        .map(|role| {
            let tensors = graph.tensors().map(|(_, t)| t);
            let bytes = tensors
                .filter(|t| first_block(role).keeps(t))
                .map(|t| t.ty.bytes());
            (role, bytes.sum())
        })
        .filter(|&(_, bytes)| (1..=free).contains(&bytes))
        .collect();
    let keeping = |base: &MemoryChoice, role: Role, kept: u32| MemoryChoice {
        kept: (kept > 0).then_some(KeptBlocks { role, blocks: kept }),
        ..base.clone()
    };
    // The class whose first block saves the most time per byte kept, searched alone.
    let one_block = on_threads(&classes, |&(role, _)| {
        evaluate(&keeping(&relieved, role, 1))
    });
    let mut role = None;
    let mut best_gain = 0.0;
    for (&(r, bytes), one) in classes.iter().zip(one_block) {
        let gain = (at_relieved.step_seconds - one?.step_seconds) / bytes as f64;
        if gain > best_gain {
            (role, best_gain) = (Some(r), gain);
        }
    }
    let Some(role) = role else {
        return Ok(choice);
    };
    // Streaming the last `k` blocks: the smallest `k` that fits keeps the most.
    let most = |k| evaluate(&keeping(&relieved, role, blocks - k));
    let Some((k, at_most)) = smallest_fitting(blocks, limit, &most)? else {
        return Ok(choice);
    };
    let kept = keeping(&relieved, role, blocks - k);
    let found = match ladder {
        None => Some((kept, at_most)),
        Some(ladder) => {
            let rung = |j| evaluate(&kept.on_rung(ladder, j, blocks));
            let lowest = smallest_fitting(blocks, limit, &rung)?;
            lowest.map(|(j, c)| (kept.on_rung(ladder, j, blocks), c))
        }
    };
    Ok(match found {
        Some((kept, c)) if c.step_seconds < evaluate(&choice)?.step_seconds => kept,
        _ => choice,
    })
}

/// Takes the weights' FP8 copies out of the micro-batch loop when the copies fit and the
/// estimate is faster; the rest of the choice stays.
fn persist_weight_quants_if_faster(
    choice: MemoryChoice,
    limit: u64,
    evaluate: &Evaluate<'_>,
) -> Result<MemoryChoice, PassError> {
    let persisted = MemoryChoice {
        persist_weight_quants: true,
        ..choice.clone()
    };
    let (before, after) = (evaluate(&choice)?, evaluate(&persisted)?);
    Ok(
        if after.arena_bytes <= limit && after.step_seconds < before.step_seconds {
            persisted
        } else {
            choice
        },
    )
}

/// Runs the LM head in wider chunks (`WIDE_LM_HEAD_CHUNK_ROWS`, or the whole micro-batch when
/// it is shorter) when the plan with them fits; the rest of the choice stays.
fn widen_lm_head_chunk_if_it_fits(
    choice: MemoryChoice,
    shape: &Shape,
    limit: u64,
    evaluate: &Evaluate<'_>,
) -> Result<MemoryChoice, PassError> {
    let wide = shape.tokens.min(WIDE_LM_HEAD_CHUNK_ROWS);
    if choice.lm_head_chunk.is_none_or(|rows| rows >= wide) {
        return Ok(choice);
    }
    let widened = MemoryChoice {
        lm_head_chunk: Some(wide),
        ..choice.clone()
    };
    Ok(if evaluate(&widened)?.arena_bytes <= limit {
        widened
    } else {
        choice
    })
}

/// The smallest `k` in `0..=blocks` whose plan's arena is at most `limit`, with that plan;
/// `None` when even `blocks` does not fit. The arena falls about linearly with `k` (each block
/// relieves the same bytes), so each probe interpolates between the bounds, and every other
/// probe bisects, which keeps the worst case logarithmic.
fn smallest_fitting(
    blocks: u32,
    limit: u64,
    evaluate: &(dyn Fn(u32) -> Result<Candidate, PassError> + Sync),
) -> Result<Option<(u32, Candidate)>, PassError> {
    let top = evaluate(blocks)?;
    if top.arena_bytes > limit {
        return Ok(None);
    }
    let bottom = evaluate(0)?;
    if bottom.arena_bytes <= limit {
        return Ok(Some((0, bottom)));
    }
    // Invariant: `lo` does not fit, `hi` fits.
    let (mut lo, mut lo_bytes) = (0u32, bottom.arena_bytes);
    let (mut hi, mut found) = (blocks, top);
    let mut bisect = false;
    while hi - lo > 1 {
        let k = if bisect {
            (lo + hi) / 2
        } else {
            let (over, span) = (lo_bytes - limit, lo_bytes - found.arena_bytes);
            let step = (over as f64 / span.max(1) as f64 * (hi - lo) as f64).ceil() as u32;
            (lo + step).clamp(lo + 1, hi - 1)
        };
        bisect = !bisect;
        let plan = evaluate(k)?;
        if plan.arena_bytes <= limit {
            (hi, found) = (k, plan);
        } else {
            (lo, lo_bytes) = (k, plan.arena_bytes);
        }
    }
    Ok(Some((hi, found)))
}

/// Each decision of `choice` with what it saves and costs: the plan without it, against
/// `plan` (for the LM head's chunks, the fused head in one chunk).
fn price_decisions(
    choice: &MemoryChoice,
    shape: &Shape,
    plan: &Plan,
    evaluate: &Evaluate<'_>,
) -> Result<Vec<MemoryDecision>, PassError> {
    // (class, blocks, action, the choice without it), priced on threads afterwards.
    let mut asked: Vec<(&str, String, String, MemoryChoice)> = Vec::new();
    if choice.persist_weight_quants {
        let without = MemoryChoice {
            persist_weight_quants: false,
            ..choice.clone()
        };
        let action = "FP8 copies made once per step, kept across micro-batches";
        asked.push(("weights", "all".into(), action.into(), without));
    }
    if let Some(rows) = choice.lm_head_chunk.filter(|&rows| rows < shape.tokens) {
        let without = MemoryChoice {
            lm_head_chunk: Some(shape.tokens),
            ..choice.clone()
        };
        let action = format!("fused with loss, {rows}-token chunks");
        asked.push(("lm head", "-".into(), action, without));
    }
    for &role in &choice.streamed {
        let mut without = choice.clone();
        without.streamed.retain(|&r| r != role);
        let kept = choice.kept.filter(|k| k.role == role);
        if kept.is_some() {
            without.kept = None;
        }
        let (whole, part) = if role == Role::Weight {
            ("stream from host, per block", "streamed per block")
        } else {
            ("on host, streamed through", "on host, streamed")
        };
        // A class kept in part: the blocks it streams (and its tensors outside the blocks).
        let (blocks, action) = match kept {
            Some(k) => {
                let streamed: Vec<u32> = (k.blocks..shape.blocks).collect();
                let streamed = if streamed.is_empty() {
                    "outside".into()
                } else {
                    block_range(&streamed)
                };
                (streamed, format!("{part}; {} kept", first_blocks(k)))
            }
            None => ("all".into(), whole.into()),
        };
        asked.push((role.category().name(), blocks, action, without));
    }
    if choice.release != Release::default() {
        let without = MemoryChoice {
            release: Release::default(),
            ..choice.clone()
        };
        let action = choice.release.describe();
        asked.push(("copies", "-".into(), action, without));
    }
    if !choice.recompute.is_empty() {
        let without = MemoryChoice {
            recompute: Vec::new(),
            ..choice.clone()
        };
        let blocks = block_range(&choice.recompute);
        asked.push((
            "activations",
            blocks,
            "recompute in backward".into(),
            without,
        ));
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
        asked.push((
            "activations",
            block_range(&choice.offload),
            action.into(),
            without,
        ));
    }
    let others = on_threads(&asked, |(_, _, _, without)| evaluate(without));
    let mut decisions = Vec::with_capacity(asked.len());
    for ((class, blocks, action, _), other) in asked.into_iter().zip(others) {
        let other = other?;
        decisions.push(MemoryDecision {
            class: class.into(),
            blocks,
            action,
            bytes_saved: other.arena_bytes as i64 - plan.device_arena_bytes as i64,
            seconds_added: plan.estimates.step_seconds - other.step_seconds,
        });
    }
    Ok(decisions)
}

/// `work` on each of `items`, each on a thread of its own; the results in the items' order.
fn on_threads<T: Send, R: Send>(
    items: impl IntoIterator<Item = T>,
    work: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    thread::scope(|scope| {
        let work = &work;
        let runs: Vec<_> = items
            .into_iter()
            .map(|item| scope.spawn(move || work(item)))
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("a planner thread does not panic"))
            .collect()
    })
}

/// The blocks `kept` keeps, as [`block_range`] names them.
fn first_blocks(kept: KeptBlocks) -> String {
    block_range(&(0..kept.blocks).collect::<Vec<_>>())
}

/// `L0-L13` for the blocks `0..=13` (the ladders always choose a prefix).
fn block_range(blocks: &[u32]) -> String {
    match (blocks.first(), blocks.last()) {
        (Some(a), Some(b)) if a == b => format!("L{a}"),
        (Some(a), Some(b)) => format!("L{a}-L{b}"),
        _ => String::new(),
    }
}
