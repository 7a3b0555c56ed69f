//! Backends that execute plan steps.
pub mod cuda;
