//! The time of a section with its streams overlapping: each step starts when its stream is
//! free and the events it waits for are recorded, and takes its estimated time.

use crate::plan::{Section, Step, step_times};

/// Seconds from the section's start until every stream has finished (the segment's join).
pub fn section_seconds(steps: &[Step], section: &Section) -> f64 {
    step_times(&steps[section.start as usize..section.end as usize])
        .iter()
        .fold(0.0, |end, &(_, finish)| end.max(finish))
}
