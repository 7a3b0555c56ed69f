//! placeholder
pub mod backend;
