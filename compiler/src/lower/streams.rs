//! Streams and events: copies to and from the host arena run on their own streams, beside the
//! compute stream, and events order them wherever the linear order matters.
//!
//! The plan keeps one linear order (the CPU backend runs it as is); these rules make every
//! execution the GPU may choose within the events agree with it, for every buffer:
//! - a copy waits for the compute step just before it in its section, so it never starts
//!   before the compute stream reaches its place (its destination may reuse freed bytes);
//! - a step waits for the last writer of each tensor it reads or writes when that writer runs
//!   on another stream;
//! - the source of a device → host copy stays allocated until a *release* step: the first
//!   compute step after the copy by which, by the estimates, the copy has finished (or a few
//!   steps later at most); that step waits for the copy, so the bytes are reused only after.
//!   With [`Release::AfterQueue`] the copy is taken to finish after the copies queued before
//!   it on its stream: where a small copy follows a large one (a norm weight's moments after
//!   a matrix's), releasing it at the next compute step would stall the compute stream, and
//!   with it every later host → device copy, until the large one is done. Holding sources
//!   longer costs memory, so the release is the memory planner's choice among
//!   [`Release::CHOICES`]: the fastest that fits.
//!
//! Sections are CUDA-graph segments, and a captured segment joins all its streams at its
//! end, so nothing crosses a section boundary.

use crate::ir::{Graph, TensorId};
use crate::plan::{Section, Step, StreamId, StreamKind};

/// The stream of the compute steps.
pub const COMPUTE: StreamId = 0;
/// The stream of host → device copies (prefetches).
pub const HOST_TO_DEVICE: StreamId = 1;
/// The stream of device → host copies (offloads, write-backs).
pub const DEVICE_TO_HOST: StreamId = 2;

/// How many compute steps may run before the source of a device → host copy is released
/// (then waited for) by [`Release::Eager`]. Where compute is short against the link (the
/// optimizer), holding every source until its copy is hidden would keep many streamed buffers
/// at once; the compute stream waits instead, which the timeline counts.
const EAGER_MAX_DELAY: u32 = 8;

/// When the source of a device → host copy may be reused (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Release {
    /// Once the copies queued before it on its stream have finished too, by the estimates,
    /// but at most `max_delay` compute steps after it: no stall of the compute stream behind
    /// a long queue.
    AfterQueue {
        /// The most compute steps between the copy and its release.
        max_delay: u32,
    },
    /// Once the copy alone would have finished, at most `EAGER_MAX_DELAY` compute steps after
    /// it: sources are held for least, at the cost of such stalls.
    Eager,
}

impl Release {
    /// The memory planner's candidates, from the most held (the fewest stalls) to the least.
    /// Each alone on the 7B within 16 GiB (estimates, FP8 and BF16 with `--batch auto`): at
    /// most 24 compute steps held, 35.97 and 53.05 s per step; 32, 35.98 s, and the BF16 plan
    /// fits no batch; 16, 37.07 and 53.08 s; 8, 38.03 and 54.22 s; eager, 39.98 and 56.90 s.
    pub const CHOICES: [Release; 3] = [
        Release::AfterQueue { max_delay: 24 },
        Release::AfterQueue { max_delay: 8 },
        Release::Eager,
    ];

    /// The most compute steps between a copy and its release.
    fn max_delay(self) -> u32 {
        match self {
            Release::AfterQueue { max_delay } => max_delay,
            Release::Eager => EAGER_MAX_DELAY,
        }
    }

    /// In words, for the plan's summary ("copies released …").
    pub fn describe(self) -> String {
        match self {
            Release::AfterQueue { max_delay } => {
                format!("released after their queue (≤ {max_delay} steps)")
            }
            Release::Eager => format!("released by their own time (≤ {EAGER_MAX_DELAY} steps)"),
        }
    }
}

impl Default for Release {
    fn default() -> Self {
        Release::CHOICES[0]
    }
}

/// The streams of a plan with host copies, indexed by the constants above.
pub const STREAMS: [StreamKind; 3] = [
    StreamKind::Compute,
    StreamKind::HostToDevice,
    StreamKind::DeviceToHost,
];

/// The stream a step runs on: copies from the host arena on `HOST_TO_DEVICE`, to it on
/// `DEVICE_TO_HOST`, everything else on `COMPUTE`.
pub fn stream_of(graph: &Graph, inputs: &[TensorId], outputs: &[TensorId]) -> StreamId {
    if inputs.iter().any(|&t| graph.is_on_host(t)) {
        HOST_TO_DEVICE
    } else if outputs.iter().any(|&t| graph.is_on_host(t)) {
        DEVICE_TO_HOST
    } else {
        COMPUTE
    }
}

/// Fills `waits` and `records` of every step (over tensors `0..tensors`), releasing copies'
/// sources by `release`. Returns the number of events and, per device → host copy, the step
/// until which its source must stay allocated.
pub fn place_events(
    steps: &mut [Step],
    sections: &[Section],
    tensors: usize,
    release: Release,
) -> (u32, Vec<(u32, u32)>) {
    let mut waits: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    let mut releases = Vec::new();
    for section in sections {
        let (start, end) = (section.start as usize, section.end as usize);
        let mut last_writer: Vec<Option<usize>> = vec![None; tensors];
        let mut last_compute: Option<usize> = None;
        // Estimated seconds of device → host copies still queued when the compute stream
        // reaches the current step (it drains as compute runs).
        let mut d2h_backlog = 0.0f64;
        for s in start..end {
            let step = &steps[s];
            if step.stream != COMPUTE
                && let Some(c) = last_compute
            {
                waits[s].push(c);
            }
            for t in step.node.inputs.iter().chain(&step.node.outputs) {
                if let Some(w) = last_writer[t.index()]
                    && steps[w].stream != step.stream
                {
                    waits[s].push(w);
                }
            }
            for t in &step.node.outputs {
                last_writer[t.index()] = Some(s);
            }
            if step.stream == COMPUTE {
                last_compute = Some(s);
                d2h_backlog = (d2h_backlog - step.estimate.seconds).max(0.0);
            }
            if step.stream == DEVICE_TO_HOST {
                d2h_backlog += step.estimate.seconds;
                let needed = match release {
                    Release::AfterQueue { .. } => d2h_backlog,
                    Release::Eager => step.estimate.seconds,
                };
                let release = release_step(steps, s, end, needed, release.max_delay());
                if let Some(r) = release {
                    waits[r].push(s);
                }
                releases.push((s as u32, release.unwrap_or(end - 1) as u32));
            }
        }
    }
    // One event per step that something waits for, numbered in step order.
    let mut event_of: Vec<Option<u32>> = vec![None; steps.len()];
    for w in waits.iter_mut() {
        w.sort_unstable();
        w.dedup();
        for &s in w.iter() {
            event_of[s] = Some(0);
        }
    }
    let mut events = 0;
    for e in event_of.iter_mut().flatten() {
        *e = events;
        events += 1;
    }
    for (s, step) in steps.iter_mut().enumerate() {
        step.records = event_of[s];
        step.waits = waits[s].iter().filter_map(|&w| event_of[w]).collect();
    }
    (events, releases)
}

/// The first compute step after `copy` (before `end`) by whose start the copy has finished by
/// the estimates (`needed` seconds of compute after the compute stream reached it), but at
/// most `max_delay` compute steps after it, or else the section's last compute step after it.
fn release_step(
    steps: &[Step],
    copy: usize,
    end: usize,
    needed: f64,
    max_delay: u32,
) -> Option<usize> {
    let mut elapsed = 0.0;
    let mut last = None;
    let compute = (copy + 1..end).filter(|&s| steps[s].stream == COMPUTE);
    for (n, s) in compute.enumerate() {
        if elapsed >= needed || n == max_delay as usize {
            return Some(s);
        }
        elapsed += steps[s].estimate.seconds;
        last = Some(s);
    }
    last
}
