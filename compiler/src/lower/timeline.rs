//! The time of a section with its streams overlapping: each step starts when its stream is
//! free and the events it waits for are recorded, and takes its estimated time.

use crate::plan::{Section, Step};

/// Seconds from the section's start until every stream has finished (the segment's join).
pub fn section_seconds(steps: &[Step], section: &Section) -> f64 {
    let mut stream_free: Vec<f64> = Vec::new();
    let mut event_done: std::collections::BTreeMap<u32, f64> = Default::default();
    let mut end: f64 = 0.0;
    for step in &steps[section.start as usize..section.end as usize] {
        let stream = step.stream as usize;
        if stream_free.len() <= stream {
            stream_free.resize(stream + 1, 0.0);
        }
        let ready = step
            .waits
            .iter()
            .filter_map(|e| event_done.get(e))
            .fold(stream_free[stream], |a, &b| a.max(b));
        let finish = ready + step.estimate.seconds;
        stream_free[stream] = finish;
        if let Some(e) = step.records {
            event_done.insert(e, finish);
        }
        end = end.max(finish);
    }
    end
}
