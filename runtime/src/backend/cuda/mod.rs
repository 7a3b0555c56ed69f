//! The CUDA backend.
pub mod nvrtc;
